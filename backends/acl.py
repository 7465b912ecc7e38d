"""AclSession: the .om from onnx2om.py on an Ascend NPU through pyACL, with the KV cache in device memory.

Imported lazily by session.open_session when --session_type acl, so pyACL stays an optional import.
One graph call per prefill chunk (the shared Session.run splits prompts); each call's new keys and
values are appended to the device cache with one device-to-device copy, and logits come back to
the host only for the last chunk.

An .om compiled with onnx2om.py --max_batch N has a static batch of N: the device cache holds N rows,
one conversation each. Every call runs all N rows. A prefill chunk fills one row (the others get a
dummy token that sees only itself, and their outputs are dropped); a decode step feeds every listed
row its token, the idle rows masked the same way. Only the listed rows' new keys and values are copied
into the cache.
"""
from __future__ import annotations

import atexit
import sys
import threading
from pathlib import Path

import numpy as np
from tqdm import tqdm

from backends.acl_runtime import (ACL_DTYPES, DEVICE_TO_DEVICE, DEVICE_TO_HOST, HOST_TO_DEVICE, HOST_TO_HOST,
                                  MALLOC_HUGE_FIRST, RUN_MODE_DEVICE, AclError, check, runtime)
from backends.base import MultiRowSession, refuse
from config import InferenceConfig
from core.contract import NPU_INPUTS as INPUTS
from core.errors import UserError

DYNAMIC_INPUT = "ascend_mbatch_shape_data"   # the input that carries the selected --dynamic_dims profile
RANKS = {"input_ids": 2, "attention_mask": 2, "position_ids": 2, "past_key_values": 4}
DEVICE_ID = 0
UPLOAD_CHUNK = 64 * 1024 * 1024


class AclSession(MultiRowSession):
    def __init__(self, config: InferenceConfig):
        super().__init__(config)
        self.om_path = config.session.om_model_path
        fixed = "the .om fixes it at compile time"
        refuse(config, "--session_type acl", onnx_model_path="acl runs --om_model_path", dtype=fixed,
               cpu_thread="the model runs on the NPU", draft_onnx_model_path="speculative decoding runs on the CPU")
        if config.session.kv_cache_method == "basic":
            raise UserError("--kv_cache_method basic does not apply to --session_type acl: the compiled model "
                            "always reads the whole cache")
        self.acl = runtime()
        self.model_id = self.desc = self.context = self.host_logits = None
        self.model_mem: tuple[int, bool] | None = None           # (pointer, is device memory)
        self.device_mem: dict[str, int] = {}
        self.data_buffers: list[int] = []
        self.datasets: list[int] = []
        self.threads: set[int] = set()
        self.closed = self.device_set = False
        self._call(self.acl.rt.set_device(DEVICE_ID), "acl.rt.set_device")
        self.device_set = True
        try:
            context, ret = self.acl.rt.create_context(DEVICE_ID)
            self._call(ret, "acl.rt.create_context")
            self.context = context
            self.threads.add(threading.get_ident())
            self._load(Path(config.session.om_model_path))
            self._describe()
            self._allocate()
        except BaseException:
            try:
                self.close()
            except AclError:
                pass  # the failure that stopped loading is the one worth reporting
            raise
        atexit.register(self.close)

    def _call(self, ret: int, call: str) -> None:
        check(self.acl, ret, call)

    def _handle(self, value: int, call: str) -> int:
        """The create_* calls return a pointer instead of a code: 0 (NULL) is their failure."""
        if not value:
            detail = (getattr(self.acl, "get_recent_err_msg", lambda: "")() or "").strip()
            raise AclError(f"{call} failed: it returned NULL" + (f": {detail}" if detail else ""))
        return value

    # ---- loading -----------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        """Copy the .om into memory in chunks (a progress bar, since boards read slowly) and load it
        from there. The docs ask for device memory when the app runs on the board, host memory
        when it runs on a host CPU."""
        acl, size = self.acl, path.stat().st_size
        mode, ret = acl.rt.get_run_mode()
        self._call(ret, "acl.rt.get_run_mode")
        on_device = mode == RUN_MODE_DEVICE
        if on_device:
            ptr, ret = acl.rt.malloc(size, MALLOC_HUGE_FIRST)
        else:
            ptr, ret = acl.rt.malloc_host(size)
        self._call(ret, "acl.rt.malloc" if on_device else "acl.rt.malloc_host")
        self.model_mem = (ptr, on_device)
        kind = HOST_TO_DEVICE if on_device else HOST_TO_HOST
        with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"loading {path.name}",
                                         file=sys.stderr, leave=False) as bar:
            offset = 0
            while chunk := f.read(UPLOAD_CHUNK):
                self._call(acl.rt.memcpy(ptr + offset, size - offset, acl.util.bytes_to_ptr(chunk), len(chunk), kind),
                           "acl.rt.memcpy (model upload)")
                offset += len(chunk)
                bar.update(len(chunk))
        model_id, ret = acl.mdl.load_from_mem(ptr, size)
        self._call(ret, "acl.mdl.load_from_mem")
        self.model_id = model_id

    def _describe(self) -> None:
        """Read the model's inputs and outputs, and check them against the configuration."""
        acl, c = self.acl, self.config
        self.desc = self._handle(acl.mdl.create_desc(), "acl.mdl.create_desc")
        self._call(acl.mdl.get_desc(self.desc, self.model_id), "acl.mdl.get_desc")
        self.index = {}
        for name in INPUTS:
            self.index[name], ret = acl.mdl.get_input_index_by_name(self.desc, name)
            if ret != 0:
                raise UserError(f"{self.om_path}: the model has no input {name!r} (not built by onnx2om.py?)")
        self.order = sorted(INPUTS, key=self.index.__getitem__)   # a gear lists the inputs in model order
        self.dynamic_index, ret = acl.mdl.get_input_index_by_name(self.desc, DYNAMIC_INPUT)
        self.dynamic = ret == 0
        self.in_sizes = [acl.mdl.get_input_size_by_index(self.desc, i)
                         for i in range(acl.mdl.get_num_inputs(self.desc))]
        self.out_sizes = [acl.mdl.get_output_size_by_index(self.desc, i)
                          for i in range(acl.mdl.get_num_outputs(self.desc))]
        if len(self.out_sizes) != 2:
            raise UserError(f"{self.om_path}: expected 2 outputs (logits, out_key_values), "
                            f"found {len(self.out_sizes)}")
        self.logits_dtype, self.cache_dtype = (ACL_DTYPES.get(acl.mdl.get_output_data_type(self.desc, i))
                                               for i in (0, 1))
        if self.logits_dtype is None or self.cache_dtype is None:
            raise UserError(f"{self.om_path}: outputs are neither float32 nor float16")
        self._read_layout()
        self.row_bytes = self.width * self.head_dim * np.dtype(self.cache_dtype).itemsize
        self.gears = self._read_gears()
        self.kv_len = max(g["past_key_values"][1] for g in self.gears) if self.dynamic else self.static_kv
        if self.kv_len != c.session.kv_cache_length:
            raise UserError(f"{self.om_path} was compiled for kv_cache_length {self.kv_len}, this run asks for "
                            f"{c.session.kv_cache_length}: pass --kv_cache_length {self.kv_len}")
        self._check_profiles()
        self._check_sizes()

    def _read_layout(self) -> None:
        """Batch and the fixed dimensions, from the model's own input dims (acl.mdl.get_input_dims).
        Dimensions a profile chooses are not read here: their reported value is documented as -1
        only for dynamic batch/resolution, so nothing below depends on it."""
        c, shapes = self.config, {}
        for name, rank in RANKS.items():
            dims, ret = self.acl.mdl.get_input_dims(self.desc, self.index[name])
            self._call(ret, f"acl.mdl.get_input_dims ({name})")
            shapes[name] = [int(d) for d in dims["dims"][:dims["dimCount"]]]
            if len(shapes[name]) != rank:
                raise UserError(f"{self.om_path}: input {name} has dims {shapes[name]}, expected rank {rank} "
                                "(not built by onnx2om.py?)")
        batches = {shape[0] for shape in shapes.values()}
        if any(b < 1 for b in batches):
            raise UserError(f"{self.om_path}: its batch dimension is not a fixed number (a shape range); a batch "
                            "range together with --dynamic_dims is not documented for pyACL, so this session "
                            "refuses it: rebuild with onnx2om.py, whose --max_batch compiles a fixed batch")
        if len(batches) != 1:
            raise UserError(f"{self.om_path}: its inputs have different batch sizes {sorted(batches)} "
                            "(not built by onnx2om.py?)")
        if batches != {self.rows}:
            raise UserError(f"{self.om_path} was compiled for batch {min(batches)} (onnx2om.py --max_batch), this "
                            f"run asks for --max_batch {self.rows}: pass --max_batch {min(batches)}")
        self.width, self.head_dim = shapes["past_key_values"][2:]
        want = (c.shape.cache_width, c.shape.head_dim)
        if (self.width, self.head_dim) != want:
            raise UserError(f"{self.om_path}: its cache rows are {self.width} x {self.head_dim}, the model in "
                            f"--hf_model_dir needs {want[0]} x {want[1]}: --hf_model_dir does not belong to it")
        self.static_kv = shapes["past_key_values"][1]

    def _read_gears(self) -> list[dict[str, list[int]]]:
        """The compiled --dynamic_dims gears, read back from the model (acl.mdl.get_input_dynamic_gear_count
        and get_input_dynamic_dims), each split into one shape per input; none for a static model."""
        acl, c = self.acl, self.config
        count, ret = acl.mdl.get_input_dynamic_gear_count(self.desc, -1)
        self._call(ret, "acl.mdl.get_input_dynamic_gear_count")
        if not self.dynamic:
            if count:
                raise UserError(f"{self.om_path}: reports {count} dynamic-dims gears but no {DYNAMIC_INPUT} "
                                "input (not built by onnx2om.py?)")
            return []
        if not count:
            raise UserError(f"{self.om_path}: has an {DYNAMIC_INPUT} input but no dynamic-dims gears "
                            "(built with another kind of dynamic shape?)")
        dims_out, ret = acl.mdl.get_input_dynamic_dims(self.desc, -1, count)
        self._call(ret, "acl.mdl.get_input_dynamic_dims")
        gears = []
        for gear in dims_out:
            values = [int(d) for d in gear["dims"][:gear["dimCount"]]]
            if len(values) != sum(RANKS.values()):
                raise UserError(f"{self.om_path}: a dynamic-dims gear has {len(values)} dims, expected "
                                f"{sum(RANKS.values())} (every dimension of the four inputs)")
            shapes, at = {}, 0
            for name in self.order:
                shapes[name] = values[at:at + RANKS[name]]
                at += RANKS[name]
            gears.append(shapes)
        self.gear_dims = {tuple(self._dims_of(g)) for g in gears}
        return gears

    def _dims_of(self, shapes: dict[str, list[int]]) -> list[int]:
        return [d for name in self.order for d in shapes[name]]

    def _shapes(self, n: int, kv: int) -> dict[str, list[int]]:
        """The four inputs' full shapes for an n-token chunk against the first kv cache slots."""
        b = self.rows
        return {"input_ids": [b, n], "attention_mask": [b, kv + n], "position_ids": [b, n],
                "past_key_values": [b, kv, self.width, self.head_dim]}

    def _caches(self) -> tuple[int, ...]:
        """The cache sizes calls use. The half cache only with one row: with several, [rows, kv/2] is not
        a prefix of the [rows, kv] buffer."""
        return (self.kv_len // 2, self.kv_len) if self.rows == 1 else (self.kv_len,)

    def _check_profiles(self) -> None:
        """Every (chunk length, cache size) this run can ask for must be a compiled gear: checked once
        here, so a mismatch is one clear error at load time instead of a failed call mid-answer."""
        c = self.config
        if not self.dynamic:
            if c.session.max_prefill_length != 1:
                raise UserError(f"{self.om_path} has static shapes (built with --max_prefill_length 1): "
                                "pass --max_prefill_length 1")
            return
        built = max(g["input_ids"][1] for g in self.gears)
        # the chunk lengths Session.run uses
        for n in (1 << i for i in range(c.session.max_prefill_length.bit_length())):
            for kv in self._caches():
                if kv < self.kv_len and n > kv:
                    continue  # a chunk longer than the half cache always runs on the full one
                dims = self._dims_of(self._shapes(n, kv))
                if tuple(dims) not in self.gear_dims:
                    raise UserError(f"{self.om_path} has no profile for a {n}-token chunk on a {kv}-row cache "
                                    f"(dims {dims}); it was built with --max_prefill_length {built}: pass that "
                                    f"value, or rebuild with --max_prefill_length {c.session.max_prefill_length}")

    def _check_sizes(self) -> None:
        """Buffers are sized from get_input_size_by_index, documented as the largest gear's size for
        dynamic batch/resolution; fail loudly if that reading does not hold for this model."""
        c = self.config
        longest = c.session.max_prefill_length if self.dynamic else 1
        largest = self._shapes(longest, self.kv_len)
        for name, shape in largest.items():
            item = np.dtype(self.cache_dtype if name == "past_key_values" else np.int64).itemsize
            need, have = int(np.prod(shape)) * item, self.in_sizes[self.index[name]]
            if have < need:
                raise UserError(f"{self.om_path}: the runtime reports {have} bytes for input {name}, its largest "
                                f"shape {shape} needs {need}")
        if self.dynamic and self.in_sizes[self.dynamic_index] <= 0:
            raise UserError(f"{self.om_path}: the runtime reports no size for {DYNAMIC_INPUT}; its size and "
                            "format are not documented, so this session does not guess one")
        if self.out_sizes[0] < self.rows * longest * c.shape.vocab_size * np.dtype(self.logits_dtype).itemsize:
            raise UserError(f"{self.om_path}: its logits are smaller than vocab {c.shape.vocab_size}: "
                            "--hf_model_dir does not belong to this model")

    def _allocate(self) -> None:
        """Device buffers for every input and output (sized for the largest profile), the logits row on
        the host, and one input and one output dataset that stay bound to them."""
        acl = self.acl
        names = {i: n for n, i in self.index.items()}
        if self.dynamic:
            names[self.dynamic_index] = DYNAMIC_INPUT
        for slot, sizes in (("in", self.in_sizes), ("out", self.out_sizes)):
            dataset = self._handle(acl.mdl.create_dataset(), "acl.mdl.create_dataset")
            self.datasets.append(dataset)
            for i, size in enumerate(sizes):
                key = f"{slot}:{names.get(i, i) if slot == 'in' else i}"
                ptr, ret = acl.rt.malloc(size, MALLOC_HUGE_FIRST)
                self._call(ret, "acl.rt.malloc")
                self.device_mem[key] = ptr
                buf = self._handle(acl.create_data_buffer(ptr, size), "acl.create_data_buffer")
                self.data_buffers.append(buf)
                _, ret = acl.mdl.add_dataset_buffer(dataset, buf)
                self._call(ret, "acl.mdl.add_dataset_buffer")
        self.in_ds, self.out_ds = self.datasets
        self.logits_bytes = self.config.shape.vocab_size * np.dtype(self.logits_dtype).itemsize
        self.host_logits, ret = acl.rt.malloc_host(self.rows * self.logits_bytes)
        self._call(ret, "acl.rt.malloc_host")
        self.cache_ptr = self.device_mem["in:past_key_values"]
        self.cache_bytes = self.in_sizes[self.index["past_key_values"]]
        self.row_stride = self.kv_len * self.row_bytes  # one conversation's rows in the [batch, kv, ...] cache
        self.reset()

    # ---- running -----------------------------------------------------------------------------
    def _bind_thread(self) -> None:
        """pyACL's current context is per thread: a thread that did not create it must set it."""
        me = threading.get_ident()
        if me not in self.threads:
            self._call(self.acl.rt.set_context(self.context), "acl.rt.set_context")
            self.threads.add(me)

    def _upload(self, name: str, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype=np.int64).tobytes()
        size = self.in_sizes[self.index[name]]
        self._call(self.acl.rt.memcpy(self.device_mem[f"in:{name}"], size, self.acl.util.bytes_to_ptr(data),
                                      len(data), HOST_TO_DEVICE), f"acl.rt.memcpy ({name})")

    def _execute(self, input_ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, kv: int) -> None:
        acl, n = self.acl, input_ids.shape[1]
        self._bind_thread()
        self._upload("input_ids", input_ids)
        self._upload("attention_mask", mask)
        self._upload("position_ids", positions)
        if self.dynamic:
            # pyACL's documented form: every dimension of every input, in the model's input order.
            dims = self._dims_of(self._shapes(n, kv))
            self._call(acl.mdl.set_input_dynamic_dims(self.model_id, self.in_ds, self.dynamic_index,
                                                      {"dimCount": len(dims), "name": "", "dims": dims}),
                       f"acl.mdl.set_input_dynamic_dims (seq {n}, kv {kv})")
        self._call(acl.mdl.execute(self.model_id, self.in_ds, self.out_ds), "acl.mdl.execute")

    def _append(self, row: int, source: int, n: int) -> None:
        """Copy n new entries of out_key_values, starting at entry `source`, after what `row` holds."""
        offset = row * self.row_stride + self.lengths[row] * self.row_bytes
        self._call(self.acl.rt.memcpy(self.cache_ptr + offset, self.cache_bytes - offset,
                                      self.device_mem["out:1"] + source * self.row_bytes, n * self.row_bytes,
                                      DEVICE_TO_DEVICE), "acl.rt.memcpy (cache append)")
        self.lengths[row] += n

    def copy_row(self, src: int, dst: int, n: int) -> bool:
        """One device-to-device copy: a row's entries are contiguous in the cache buffer."""
        if src == dst or n > self.lengths[src]:
            return False
        self._bind_thread()
        offset = dst * self.row_stride
        self._call(self.acl.rt.memcpy(self.cache_ptr + offset, self.cache_bytes - offset,
                                      self.cache_ptr + src * self.row_stride, n * self.row_bytes,
                                      DEVICE_TO_DEVICE), "acl.rt.memcpy (cache row copy)")
        self.lengths[dst] = n
        return True

    def _logits(self, first: int, count: int) -> np.ndarray:
        """`count` consecutive logits rows of the output, from row `first`, as float32 [count, vocab]."""
        size = count * self.logits_bytes
        self._call(self.acl.rt.memcpy(self.host_logits, self.rows * self.logits_bytes,
                                      self.device_mem["out:0"] + first * self.logits_bytes, size, DEVICE_TO_HOST),
                   "acl.rt.memcpy (logits)")
        raw = self.acl.util.ptr_to_bytes(self.host_logits, size)
        return np.frombuffer(raw, dtype=self.logits_dtype).astype(np.float32).reshape(count, -1)

    def _forward_row(self, input_ids: np.ndarray, n_logits: int, row: int) -> np.ndarray | None:
        n, start = input_ids.shape[1], self.lengths[row]
        # The half-size profile reads only the first kv_len/2 cache slots: less attention work while
        # the conversation fits in them.
        kv = self.kv_len // 2 if self.dynamic and self.rows == 1 and start + n <= self.kv_len // 2 else self.kv_len
        ids = np.zeros((self.rows, n), dtype=np.int64)
        ids[row] = input_ids[0]
        mask = np.zeros((self.rows, kv + n), dtype=np.int64)
        mask[:, kv:] = 1  # the other rows' dummy tokens see only themselves
        mask[row, :start] = 1
        positions = np.tile(np.arange(n, dtype=np.int64), (self.rows, 1))
        positions[row] += start
        self._execute(ids, mask, positions, kv)
        self._append(row, row * n, n)
        if not n_logits:
            return None
        if n_logits > 1:  # config.validate keeps speculative decoding, the only multi-row caller, off acl
            raise ValueError("the acl session returns the logits of the last token only")
        return self._logits(row * n + n - 1, 1)

    def _decode(self, rows: list[int], tokens: np.ndarray) -> np.ndarray:
        ids = np.zeros((self.rows, 1), dtype=np.int64)
        mask = np.zeros((self.rows, self.kv_len + 1), dtype=np.int64)
        mask[:, self.kv_len] = 1  # an idle row's dummy token sees only itself
        positions = np.zeros((self.rows, 1), dtype=np.int64)
        for r, token in zip(rows, tokens):
            ids[r, 0], positions[r, 0] = token, self.lengths[r]
            mask[r, :self.lengths[r]] = 1
        self._execute(ids, mask, positions, self.kv_len)
        for r in rows:
            self._append(r, r, 1)
        every_row = self._logits(0, self.rows)
        return every_row[rows]

    def reset(self) -> None:
        """Forget every row: the whole device cache is cleared."""
        self._bind_thread()
        self._call(self.acl.rt.memset(self.cache_ptr, self.cache_bytes, 0, self.cache_bytes), "acl.rt.memset (cache)")
        for r in range(self.rows):
            self.lengths[r] = 0

    # ---- release -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release everything in dependency order: the model before the memory it uses, memory before
        its context, the context before the device. Every step runs; the first failure is raised."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        acl, errors = self.acl, []

        def step(ret: int, call: str) -> None:
            if ret != 0:
                errors.append(f"{call} failed with aclError {ret}")

        if self.context is not None and threading.get_ident() not in self.threads:
            step(acl.rt.set_context(self.context), "acl.rt.set_context")
        if self.model_id is not None:
            step(acl.mdl.unload(self.model_id), "acl.mdl.unload")
        if self.desc is not None:
            step(acl.mdl.destroy_desc(self.desc), "acl.mdl.destroy_desc")
        for buf in self.data_buffers:
            step(acl.destroy_data_buffer(buf), "acl.destroy_data_buffer")
        for dataset in self.datasets:
            step(acl.mdl.destroy_dataset(dataset), "acl.mdl.destroy_dataset")
        for ptr in self.device_mem.values():
            step(acl.rt.free(ptr), "acl.rt.free")
        if self.model_mem is not None:
            ptr, on_device = self.model_mem
            step(acl.rt.free(ptr) if on_device else acl.rt.free_host(ptr), "acl.rt.free (model)")
        if self.host_logits is not None:
            step(acl.rt.free_host(self.host_logits), "acl.rt.free_host")
        if self.context is not None:
            step(acl.rt.destroy_context(self.context), "acl.rt.destroy_context")
        if self.device_set:
            step(acl.rt.reset_device(DEVICE_ID), "acl.rt.reset_device")
        if errors:
            raise AclError("; ".join(errors))

