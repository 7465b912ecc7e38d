"""OnnxCpuGraphSession: the --target cpu graph. GroupQueryAttention reads and writes each layer's KV
buffer in place, so everything but the new token ids and the lengths is bound once per set of rows and
never again.

The cache holds --max_batch rows. A prefill chunk (or a lone decode step) runs on its row alone, that row's
slice of the cache bound as a batch of one; a decode step for several rows runs the block of rows from the
lowest to the highest in one call, each with its own length (`seqlens_k`)."""
from __future__ import annotations

import numpy as np

from backends.base import MultiRowSession, refuse
from backends.ort_cache import bind, cpu_session
from config import InferenceConfig
from core.errors import UserError
from backends.kv_cache import lazy_zeros


class _Bound:
    """One io_binding over rows [lo, hi] of the cache, with its own small input and output buffers."""

    def __init__(self, session: "OnnxCpuGraphSession", lo: int, hi: int):
        shape, b = session.config.shape, hi - lo + 1
        self.binding = session.ort.io_binding()
        for i in range(shape.num_hidden_layers):
            for j, kind in enumerate(("key", "value")):
                block = session.cache[i, j, lo:hi + 1]
                bind(self.binding, f"past_{kind}_{i}", block)
                bind(self.binding, f"present_{kind}_{i}", block, output=True)
        self.seqlens_k = np.zeros(b, np.int32)
        self.total = np.zeros((), np.int32)
        self.tokens = np.zeros((b, 1), np.int64)
        self.num_logits = np.ones(1, np.int64)
        self.logits = np.zeros((b, 1, shape.vocab_size), np.float32)
        for name, arr in (("seqlens_k", self.seqlens_k), ("total_sequence_length", self.total),
                          ("input_ids", self.tokens), ("num_logits", self.num_logits)):
            bind(self.binding, name, arr)
        bind(self.binding, "logits", self.logits, output=True)
        self.bound_ids, self.bound_logits = self.tokens, self.logits

    def bind_ids(self, ids: np.ndarray) -> None:
        if ids is not self.bound_ids:
            bind(self.binding, "input_ids", ids)
            self.bound_ids = ids

    def bind_logits(self, logits: np.ndarray) -> None:
        if logits is not self.bound_logits:
            bind(self.binding, "logits", logits, output=True)
            self.bound_logits = logits


class OnnxCpuGraphSession(MultiRowSession):
    # GroupQueryAttention takes any chunk length: a prompt is read in --max_prefill_length chunks and one
    # shorter rest, not in power-of-two pieces (each small piece costs nearly a whole pass over the weights).
    any_chunk_length = True

    def __init__(self, config: InferenceConfig, meta: dict[str, str]):
        super().__init__(config)
        s, shape = config.session, config.shape
        refuse(config, "the cpu graph", kv_cache_method="it always reads only the filled part of the cache")
        if s.dtype not in (None, "float32"):
            raise UserError(f"--dtype {s.dtype}: the cpu graph is float32 (quantize it with quantize_onnx.py)")
        self.ort = cpu_session(s.onnx_model_path, s.threads, shared_threads=s.threads_shared)
        if "num_logits" not in {i.name for i in self.ort.get_inputs()}:
            raise UserError(f"{s.onnx_model_path}: a cpu graph from an older export (no num_logits "
                            "input); export it again with export_onnx.py --target cpu")
        self.kv_len = s.kv_cache_length
        # [layer, key/value, row, kv_heads, slot, head_dim]: each layer's key and value blocks are
        # contiguous for any run of rows, as GroupQueryAttention's BNSH layout needs. A row costs memory
        # only for the slots it has filled (backends/kv_cache.py lazy_zeros).
        self.cache = lazy_zeros((shape.num_hidden_layers, 2, self.rows, shape.num_key_value_heads,
                                 s.kv_cache_length, shape.head_dim), np.float32)
        self._bound: dict[tuple[int, int], _Bound] = {}

    def _binding(self, lo: int, hi: int) -> _Bound:
        """Rows [lo, hi] bound once and kept: at most rows * (rows + 1) / 2 small bindings."""
        if (lo, hi) not in self._bound:
            self._bound[lo, hi] = _Bound(self, lo, hi)
        return self._bound[lo, hi]

    def copy_row(self, src: int, dst: int, n: int) -> bool:
        if src == dst or n > self.lengths[src]:
            return False
        self.cache[:, :, dst, :, :n] = self.cache[:, :, src, :, :n]
        self.lengths[dst] = n
        return True

    def _forward_row(self, input_ids: np.ndarray, n_logits: int, row: int) -> np.ndarray | None:
        b = self._binding(row, row)
        seq, length = input_ids.shape[1], self.lengths[row]
        if seq == 1:
            b.tokens[...] = input_ids
            ids = b.tokens
        else:
            ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        # A decode step only rewrites bound buffers; a longer chunk binds its own ids (and logits rows,
        # when it wants several), and the next decode step binds the one-row buffers back.
        b.bind_ids(ids)
        rows = max(1, n_logits)
        logits = b.logits if rows == 1 else np.empty((1, rows, self.config.shape.vocab_size), np.float32)
        b.bind_logits(logits)
        b.num_logits[0] = rows
        b.total[...] = length + seq
        b.seqlens_k[0] = length + seq - 1
        self.ort.run_with_iobinding(b.binding)
        self.lengths[row] = length + seq
        return logits[0].copy() if n_logits else None

    def _decode(self, rows: list[int], tokens: np.ndarray) -> np.ndarray:
        lo, hi = min(rows), max(rows)
        b = self._binding(lo, hi)
        b.bind_ids(b.tokens)
        b.bind_logits(b.logits)
        b.num_logits[0] = 1
        b.tokens[:, 0] = 0
        # Every row of the block writes one new entry at slot seqlens_k. An idle row writes it past what it
        # holds, so its conversation stays reusable; one whose row is full gives up its last slot for it.
        for r in range(lo, hi + 1):
            if r not in rows and self.lengths[r] >= self.kv_len:
                self.lengths[r] = self.kv_len - 1
            b.seqlens_k[r - lo] = self.lengths[r]
        at = [r - lo for r in rows]
        b.tokens[at, 0] = tokens
        b.total[...] = int(b.seqlens_k.max()) + 1
        self.ort.run_with_iobinding(b.binding)
        for r in rows:
            self.lengths[r] += 1
        return b.logits[at, 0].copy()
