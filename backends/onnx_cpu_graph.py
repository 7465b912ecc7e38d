"""OnnxCpuGraphSession: the --target cpu graph. GroupQueryAttention reads and writes each layer's KV
buffer in place, so everything but the new token ids and two lengths is bound once, here, and never again."""
from __future__ import annotations

import numpy as np

from backends.base import Session, refuse
from backends.ort_cache import bind, cpu_session
from config import InferenceConfig
from core.errors import UserError


class OnnxCpuGraphSession(Session):
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
        self.kv_len, self.length = s.kv_cache_length, 0
        # [layer, key/value, batch, kv_heads, slot, head_dim]: each layer's key and value blocks are
        # contiguous, as GroupQueryAttention's BNSH layout needs.
        self.cache = np.zeros((shape.num_hidden_layers, 2, 1, shape.num_key_value_heads, s.kv_cache_length,
                               shape.head_dim), np.float32)
        self.seqlens_k = np.zeros(1, np.int32)
        self.total = np.zeros((), np.int32)
        self.one_token = np.zeros((1, 1), np.int64)
        self.num_logits = np.ones(1, np.int64)
        self.logits = np.zeros((1, 1, shape.vocab_size), np.float32)
        self.binding = self.ort.io_binding()
        for i in range(shape.num_hidden_layers):
            for j, kind in enumerate(("key", "value")):
                bind(self.binding, f"past_{kind}_{i}", self.cache[i, j])
                bind(self.binding, f"present_{kind}_{i}", self.cache[i, j], output=True)
        for name, arr in (("seqlens_k", self.seqlens_k), ("total_sequence_length", self.total),
                          ("input_ids", self.one_token), ("num_logits", self.num_logits)):
            bind(self.binding, name, arr)
        self.bound_ids = self.one_token
        self.bound_logits = self.logits
        bind(self.binding, "logits", self.logits, output=True)

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
            bind(self.binding, "input_ids", ids)
            self.bound_ids = ids
        rows = max(1, n_logits)
        logits = self.logits if rows == 1 else np.empty((1, rows, self.config.shape.vocab_size), np.float32)
        if logits is not self.bound_logits:
            bind(self.binding, "logits", logits, output=True)
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
