"""The Session interface every backend implements: one call adds tokens to the KV cache and returns logits.

Every backend shares `Session.run`, the recursive power-of-two prefill, and implements only
`_forward` (one graph call on one chunk), `truncate` and `reset`.
"""
from __future__ import annotations

import numpy as np

from config import InferenceConfig
from core.contract import mismatches, read_meta
from core.errors import UserError
from kvcache import CacheFullError


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
    kv_len: int
    length: int

    def __init__(self, config: InferenceConfig):
        self.config = config

    def run(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed input_ids [1, n] (prefill in chunks, or one decode step) and return the float32 logits
        of the last token."""
        n = input_ids.shape[1]
        self._check_room(n)
        chunks = prefill_chunks(n, self.config.session.max_prefill_length)
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


def refuse(config: InferenceConfig, backend: str, **unsupported: str) -> None:
    """A flag the backend cannot honour is refused in one line, never silently ignored.
    `unsupported`: flag name -> why, for each flag that is set."""
    for flag, why in unsupported.items():
        if getattr(config.session, flag) is not None:
            raise UserError(f"--{flag} does not apply to {backend}: {why}")


def checked_meta(config: InferenceConfig) -> dict[str, str]:
    """The ONNX model's export metadata, refused when it was exported for another model or cache."""
    s = config.session
    meta = read_meta(s.onnx_model_path)
    problems = mismatches(meta, {"kv_cache_length": s.kv_cache_length, **config.shape.as_meta()})
    if problems:
        raise UserError(f"{s.onnx_model_path} does not fit this run: {'; '.join(problems)} "
                        "(re-export, or pass the matching --hf_model_dir / --kv_cache_length)")
    return meta
