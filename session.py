"""Sessions run the exported graph: one call adds tokens to the KV cache and returns the last logits.

Every session shares `Session.run`, the recursive power-of-two prefill; a backend implements only
`_forward`, one graph call on one chunk.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from config import ConfigError, InferenceConfig
from kvcache import CacheFullError, KVCache

NP_DTYPES = {"float32": np.float32, "float16": np.float16}


def prefill_chunks(n: int, max_prefill_length: int) -> list[int]:
    """Split n tokens into power-of-two chunks no longer than max_prefill_length: 12, 8 -> [8, 4].
    The NPU model is compiled for exactly these lengths, so every backend uses the same split."""
    if n < 0 or max_prefill_length < 1:
        raise ValueError(f"bad prefill split: n={n}, max_prefill_length={max_prefill_length}")
    if n == 0:
        return []
    size = min(max_prefill_length, 1 << (n.bit_length() - 1))
    return [size] + prefill_chunks(n - size, max_prefill_length)


class Session:
    # session_type -> what builds it: a Session class, or a function choosing one from the model file.
    registry: dict[str, Callable[[InferenceConfig], "Session"]] = {}

    def __init__(self, config: InferenceConfig):
        self.config = config

    @classmethod
    def register(cls, name: str) -> Callable:
        def add(factory: Callable[[InferenceConfig], "Session"]) -> Callable[[InferenceConfig], "Session"]:
            cls.registry[name] = factory
            return factory
        return add

    @staticmethod
    def fromConfig(config: InferenceConfig) -> "Session":
        if config.session_type == "acl" and "acl" not in Session.registry:
            import session_acl  # noqa: F401  (pyACL is only importable on Ascend machines)
        if config.session_type not in Session.registry:
            raise ConfigError(f"--session_type {config.session_type}: not available here")
        return Session.registry[config.session_type](config)

    kv_len: int
    length: int

    def run(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed input_ids [1, n] (prefill in chunks, or one decode step) and return the float32 logits
        of the last token."""
        n = input_ids.shape[1]
        self._check_room(n)
        chunks = prefill_chunks(n, self.config.max_prefill_length)
        start, logits = 0, None
        for i, size in enumerate(chunks):
            logits = self._forward(input_ids[:, start:start + size], 1 if i == len(chunks) - 1 else 0)
            start += size
        return logits[-1]

    def run_all(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed input_ids [1, n] in one graph call and return the float32 logits of every one of them,
        [n, vocab]: what checking n draft tokens at once needs."""
        n = input_ids.shape[1]
        self._check_room(n)
        return self._forward(input_ids, n)

    def _check_room(self, n: int) -> None:
        if n == 0:
            raise ValueError("run() needs at least one token")
        if self.length + n > self.kv_len:
            raise CacheFullError(f"{n} new tokens do not fit: {self.length} of {self.kv_len} cache slots used")

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        """One graph call on one chunk; returns the float32 logits of its last n_logits tokens,
        [n_logits, vocab], or None for 0."""
        raise NotImplementedError

    def truncate(self, n: int) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.truncate(0)


class HostCacheSession(Session):
    """A session whose KV cache is a numpy buffer in host memory."""

    def __init__(self, config: InferenceConfig, dtype: str):
        super().__init__(config)
        self.cache = KVCache(config.num_hidden_layers, config.num_key_value_heads, config.head_dim,
                             config.kv_cache_length, NP_DTYPES[dtype], config.kv_cache_method)

    @property
    def kv_len(self) -> int:
        return self.cache.kv_len

    @property
    def length(self) -> int:
        return self.cache.length

    def truncate(self, n: int) -> None:
        self.cache.truncate(n)


def checked_onnx_meta(config: InferenceConfig) -> dict[str, str]:
    """The ONNX model's export metadata, refused when it was exported for another model or cache."""
    from export.onnx_meta import mismatches, read_meta

    meta = read_meta(config.onnx_model_path)
    problems = mismatches(meta, {
        "kv_cache_length": config.kv_cache_length, "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
        "vocab_size": config.vocab_size})
    if problems:
        raise ConfigError(f"{config.onnx_model_path} does not fit this run: {'; '.join(problems)} "
                          "(re-export, or pass the matching --hf_model_dir / --kv_cache_length)")
    return meta


def _bind(binding, name: str, arr: np.ndarray, output: bool = False) -> None:
    """Bind by address: onnxruntime reads and writes these numpy buffers in place, no copies."""
    bind = binding.bind_output if output else binding.bind_input
    bind(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)


class OnnxSession(HostCacheSession):
    """The npu-target graph (plain ONNX, the KV cache passed in and out) on onnxruntime."""

    def __init__(self, config: InferenceConfig):
        checked_onnx_meta(config)
        from ort_cache import cpu_session

        self.ort = cpu_session(config.onnx_model_path, config.cpu_thread, shared_threads=config.threads_shared)
        past_type = next(i.type for i in self.ort.get_inputs() if i.name == "past_key_values")
        super().__init__(config, "float16" if "float16" in past_type else "float32")
        self.binding = self.ort.io_binding()
        # Decode runs one token per call: its logits row is reused; prefill chunks get a fresh one,
        # so a long chunk's [seq, vocab] block does not stay resident.
        self.decode_logits = np.empty((1, 1, config.vocab_size), self.cache.buffer.dtype)

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        seq = input_ids.shape[1]
        mask, positions, past = self.cache.step_inputs(seq)
        # The new keys/values are written straight into their cache slots. With "fixsize" those slots are
        # also part of the input, but masked: softmax gives them exactly zero weight, whatever they hold.
        new_kv = self.cache.next_slots(seq)
        logits = self.decode_logits if seq == 1 else np.empty((1, seq, self.config.vocab_size), new_kv.dtype)
        input_ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        for name, arr in (("input_ids", input_ids), ("attention_mask", mask), ("position_ids", positions),
                          ("past_key_values", past)):
            _bind(self.binding, name, arr)
        _bind(self.binding, "logits", logits, output=True)
        _bind(self.binding, "out_key_values", new_kv, output=True)
        self.ort.run_with_iobinding(self.binding)
        self.cache.commit(seq)
        return logits[0, seq - n_logits:].astype(np.float32) if n_logits else None


class OnnxCpuGraphSession(Session):
    """The --target cpu graph: GroupQueryAttention reads and writes each layer's KV buffer in place, so
    everything but the new token ids and two lengths is bound once, here, and never again."""

    def __init__(self, config: InferenceConfig):
        super().__init__(config)
        checked_onnx_meta(config)
        from ort_cache import cpu_session

        self.ort = cpu_session(config.onnx_model_path, config.cpu_thread, shared_threads=config.threads_shared)
        if "num_logits" not in {i.name for i in self.ort.get_inputs()}:
            raise ConfigError(f"{config.onnx_model_path}: a cpu graph from an older export (no num_logits "
                              "input); export it again with export_onnx.py --target cpu")
        c = config
        self.kv_len, self.length = c.kv_cache_length, 0
        # [layer, key/value, batch, kv_heads, slot, head_dim]: each layer's key and value blocks are
        # contiguous, as GroupQueryAttention's BNSH layout needs.
        self.cache = np.zeros((c.num_hidden_layers, 2, 1, c.num_key_value_heads, c.kv_cache_length, c.head_dim),
                              np.float32)
        self.seqlens_k = np.zeros(1, np.int32)
        self.total = np.zeros((), np.int32)
        self.one_token = np.zeros((1, 1), np.int64)
        self.num_logits = np.ones(1, np.int64)
        self.logits = np.zeros((1, 1, c.vocab_size), np.float32)
        self.binding = self.ort.io_binding()
        for i in range(c.num_hidden_layers):
            for j, kind in enumerate(("key", "value")):
                _bind(self.binding, f"past_{kind}_{i}", self.cache[i, j])
                _bind(self.binding, f"present_{kind}_{i}", self.cache[i, j], output=True)
        for name, arr in (("seqlens_k", self.seqlens_k), ("total_sequence_length", self.total),
                          ("input_ids", self.one_token), ("num_logits", self.num_logits)):
            _bind(self.binding, name, arr)
        self.bound_ids = self.one_token
        self.bound_logits = self.logits
        _bind(self.binding, "logits", self.logits, output=True)

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        seq = input_ids.shape[1]
        if seq == 1:
            self.one_token[...] = input_ids
            ids = self.one_token
        else:
            ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        # A decode step only rewrites bound buffers; a longer chunk binds its own ids (and logits rows,
        # when it wants several), and the next decode step binds the one-row buffers back.
        if ids is not self.bound_ids:
            _bind(self.binding, "input_ids", ids)
            self.bound_ids = ids
        rows = max(1, n_logits)
        logits = self.logits if rows == 1 else np.empty((1, rows, self.config.vocab_size), np.float32)
        if logits is not self.bound_logits:
            _bind(self.binding, "logits", logits, output=True)
            self.bound_logits = logits
        self.num_logits[0] = rows
        self.total[...] = self.length + seq
        self.seqlens_k[0] = self.length + seq - 1
        self.ort.run_with_iobinding(self.binding)
        self.length += seq
        return logits[0].copy() if n_logits else None

    def truncate(self, n: int) -> None:
        # Slots past seqlens_k are never read: forgetting tokens is only a shorter length.
        self.length = max(0, min(n, self.length))


@Session.register("onnx")
def onnx_session(config: InferenceConfig) -> Session:
    """One --session_type onnx for both exports: the model's recorded target picks the session."""
    from export.onnx_meta import read_meta

    cpu_graph = read_meta(config.onnx_model_path).get("target") == "cpu"
    return (OnnxCpuGraphSession if cpu_graph else OnnxSession)(config)


@Session.register("pytorch")
class PyTorchSession(HostCacheSession):
    """Our export model run eagerly in torch: the reference the ONNX graph is checked against."""

    def __init__(self, config: InferenceConfig):
        import torch
        from export.qwen_model import load_model

        torch.set_num_threads(config.cpu_thread)
        self.torch = torch
        self.model = load_model(config.hf_model_dir, getattr(torch, config.dtype))
        super().__init__(config, config.dtype)

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        t = self.torch
        mask, positions, past = self.cache.step_inputs(input_ids.shape[1])
        with t.inference_mode():
            logits, new_kv = self.model(t.from_numpy(input_ids), t.from_numpy(mask), t.from_numpy(positions),
                                        t.from_numpy(past))
        self.cache.append(new_kv.numpy())
        return logits[0, input_ids.shape[1] - n_logits:].float().numpy() if n_logits else None
