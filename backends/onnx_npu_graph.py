"""OnnxSession: the npu-target graph (plain ONNX, the KV cache passed in and out) on onnxruntime."""
from __future__ import annotations

import numpy as np

from backends.host_cache import HostCacheSession
from backends.ort_cache import bind, cpu_session
from config import InferenceConfig
from core.errors import UserError


class OnnxSession(HostCacheSession):
    def __init__(self, config: InferenceConfig, meta: dict[str, str]):
        s = config.session
        model_dtype = meta.get("dtype")
        if s.dtype is not None and model_dtype and s.dtype != model_dtype:
            raise UserError(f"--dtype {s.dtype}: {s.onnx_model_path} was exported as {model_dtype}; the onnx "
                            "session runs the model's own dtype (leave --dtype out)")
        self.ort = cpu_session(s.onnx_model_path, s.threads, shared_threads=s.threads_shared)
        past_type = next(i.type for i in self.ort.get_inputs() if i.name == "past_key_values")
        super().__init__(config, "float16" if "float16" in past_type else "float32")
        self.binding = self.ort.io_binding()
        # Decode runs one token per call: its logits row is reused; prefill chunks get a fresh one,
        # so a long chunk's [seq, vocab] block does not stay resident.
        self.decode_logits = np.empty((1, 1, config.shape.vocab_size), self.cache.buffer.dtype)

    def _run(self, input_ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: np.ndarray,
             logits: np.ndarray, new_kv: np.ndarray) -> None:
        for name, arr in (("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64)), ("attention_mask", mask),
                          ("position_ids", positions), ("past_key_values", past)):
            bind(self.binding, name, arr)
        bind(self.binding, "logits", logits, output=True)
        bind(self.binding, "out_key_values", new_kv, output=True)
        self.ort.run_with_iobinding(self.binding)

    def _forward_row(self, input_ids: np.ndarray, n_logits: int, row: int) -> np.ndarray | None:
        seq = input_ids.shape[1]
        mask, positions, past = self.cache.step_inputs(seq, row)
        # The new keys/values are written straight into their cache slots. With "fixsize" those slots are
        # also part of the input, but masked: softmax gives them exactly zero weight, whatever they hold.
        new_kv = self.cache.next_slots(seq, row)
        vocab = self.config.shape.vocab_size
        logits = self.decode_logits if seq == 1 else np.empty((1, seq, vocab), new_kv.dtype)
        self._run(input_ids, mask, positions, past, logits, new_kv)
        self.cache.commit(seq, row)
        return logits[0, seq - n_logits:].astype(np.float32) if n_logits else None

    def _decode(self, rows: list[int], tokens: np.ndarray) -> np.ndarray:
        lo, mask, positions, past = self.cache.decode_inputs(rows)
        ids = np.zeros((past.shape[0], 1), np.int64)
        ids[[r - lo for r in rows], 0] = tokens
        # Each row's new entry goes to another slot: they come out in one block and are copied over.
        new_kv = np.empty((past.shape[0], 1) + past.shape[2:], past.dtype)
        logits = np.empty((past.shape[0], 1, self.config.shape.vocab_size), past.dtype)
        self._run(ids, mask, positions, past, logits, new_kv)
        self.cache.store(rows, lo, new_kv)
        return logits[[r - lo for r in rows], 0].astype(np.float32)
