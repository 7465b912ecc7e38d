"""The static KV cache on the host: one preallocated buffer, written by index."""
from __future__ import annotations

import numpy as np


class CacheFullError(RuntimeError):
    """More tokens than the cache has slots for."""


class KVCache:
    """Buffer [1, kv_len, layers*2*kv_heads, head_dim]; token i of the conversation lives in slot i,
    so a token's slot is also its position id.

    method "fixsize" hands the whole buffer to every call (static shapes, as the NPU needs);
    "basic" hands only the filled slots (less attention work on a CPU)."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, kv_len: int,
                 dtype: np.dtype = np.float32, method: str = "fixsize"):
        if method not in ("fixsize", "basic"):
            raise ValueError(f"unknown kv cache method {method!r}")
        self.kv_len, self.method, self.length = kv_len, method, 0
        self.buffer = np.zeros((1, kv_len, num_layers * 2 * num_kv_heads, head_dim), dtype=dtype)

    @property
    def free(self) -> int:
        return self.kv_len - self.length

    def step_inputs(self, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """attention_mask, position_ids and past_key_values for a call adding seq_len tokens."""
        if seq_len > self.free:
            raise CacheFullError(f"{seq_len} new tokens do not fit: {self.length} of {self.kv_len} cache slots used")
        slots = self.kv_len if self.method == "fixsize" else self.length
        mask = np.zeros((1, slots + seq_len), dtype=np.int64)
        mask[0, :self.length] = 1
        mask[0, slots:] = 1
        positions = np.arange(self.length, self.length + seq_len, dtype=np.int64)[None]
        return mask, positions, self.buffer[:, :slots]

    def append(self, new_kv: np.ndarray) -> None:
        self.next_slots(new_kv.shape[1])[...] = new_kv
        self.commit(new_kv.shape[1])

    def next_slots(self, n: int) -> np.ndarray:
        """The contiguous view of the n slots after the stored tokens, for a runtime to write the new keys
        and values into directly (no copy); `commit(n)` then counts them as stored."""
        if n > self.free:
            raise CacheFullError(f"{n} new tokens do not fit: {self.length} of {self.kv_len} cache slots used")
        return self.buffer[:, self.length:self.length + n]

    def commit(self, n: int) -> None:
        if n > self.free:
            raise CacheFullError(f"{n} new tokens do not fit: {self.length} of {self.kv_len} cache slots used")
        self.length += n

    def truncate(self, n: int) -> None:
        """Forget every token after the first n; stale slots need no clearing, the mask hides them."""
        self.length = max(0, min(n, self.length))

    def reset(self) -> None:
        self.truncate(0)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
