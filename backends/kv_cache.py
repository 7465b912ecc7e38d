"""The static KV cache on the host: one preallocated buffer, written by index."""
from __future__ import annotations

import mmap

import numpy as np

from core.contract import cache_width
from core.errors import UserError


def lazy_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros whose memory is committed page by page as it is written. A cache row is filled from its
    start, and its unused slots should cost nothing: numpy asks the kernel for 2 MB pages for large
    arrays, so that writing one token's 256 bytes in a layer's block would commit 2 MB of it."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        memory = mmap.mmap(-1, max(size, 1))
    except OSError as e:
        raise UserError(f"the KV cache needs {size / 2 ** 30:.1f} GiB of address space and this machine refuses "
                        f"it ({e.strerror}): lower --max_batch or --kv_cache_length") from None
    return np.frombuffer(memory, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class CacheFullError(RuntimeError):
    """More tokens than the cache has slots for."""


class KVCache:
    """Buffer [rows, kv_len, layers*2*kv_heads, head_dim]: one row per conversation, and token i of a
    conversation lives in slot i of its row, so a token's slot is also its position id.

    method "fixsize" hands a row's whole buffer to every call (static shapes, as the NPU needs);
    "basic" hands only the filled slots (less attention work on a CPU). A decode step for several rows
    always hands their whole rows (one contiguous block), masked row by row.

    The methods take a row (default 0); `length` and `free` are row 0's."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, kv_len: int,
                 dtype: np.dtype = np.float32, method: str = "fixsize", rows: int = 1):
        if method not in ("fixsize", "basic"):
            raise ValueError(f"unknown kv cache method {method!r}")
        self.kv_len, self.method = kv_len, method
        self.lengths = [0] * rows  # mutated in place, never rebound: sessions share this list
        self.buffer = lazy_zeros((rows, kv_len, cache_width(num_layers, num_kv_heads), head_dim), dtype)

    @property
    def length(self) -> int:
        return self.lengths[0]

    @property
    def free(self) -> int:
        return self.kv_len - self.lengths[0]

    def _check(self, n: int, row: int) -> None:
        if n > self.kv_len - self.lengths[row]:
            raise CacheFullError(f"{n} new tokens do not fit: {self.lengths[row]} of {self.kv_len} cache slots used")

    def step_inputs(self, seq_len: int, row: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """attention_mask, position_ids and past_key_values for a call adding seq_len tokens to one row."""
        self._check(seq_len, row)
        length = self.lengths[row]
        slots = self.kv_len if self.method == "fixsize" else length
        mask = np.zeros((1, slots + seq_len), dtype=np.int64)
        mask[0, :length] = 1
        mask[0, slots:] = 1
        positions = np.arange(length, length + seq_len, dtype=np.int64)[None]
        return mask, positions, self.buffer[row:row + 1, :slots]

    def decode_inputs(self, rows: list[int]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """For one token on each of `rows`: the first row of the block handed over, and the block's
        attention_mask [b, kv_len + 1], position_ids [b, 1] and past_key_values [b, kv_len, ...], b the rows
        from the lowest listed to the highest. A row in between that is not listed sees only its new token;
        its output is dropped."""
        for r in rows:
            self._check(1, r)
        lo, hi = min(rows), max(rows)
        mask = np.zeros((hi - lo + 1, self.kv_len + 1), dtype=np.int64)
        mask[:, self.kv_len] = 1
        positions = np.zeros((hi - lo + 1, 1), dtype=np.int64)
        for r in rows:
            mask[r - lo, :self.lengths[r]] = 1
            positions[r - lo, 0] = self.lengths[r]
        return lo, mask, positions, self.buffer[lo:hi + 1]

    def store(self, rows: list[int], lo: int, new_kv: np.ndarray) -> None:
        """Append row r's new keys/values, new_kv[r - lo] [1, width, head_dim], to each of `rows`."""
        for r in rows:
            self.buffer[r, self.lengths[r]] = new_kv[r - lo, 0]
            self.lengths[r] += 1

    def append(self, new_kv: np.ndarray, row: int = 0) -> None:
        self.next_slots(new_kv.shape[1], row)[...] = new_kv
        self.commit(new_kv.shape[1], row)

    def next_slots(self, n: int, row: int = 0) -> np.ndarray:
        """The contiguous view of the n slots after a row's stored tokens, for a runtime to write the new
        keys and values into directly (no copy); `commit(n, row)` then counts them as stored."""
        self._check(n, row)
        return self.buffer[row:row + 1, self.lengths[row]:self.lengths[row] + n]

    def commit(self, n: int, row: int = 0) -> None:
        self._check(n, row)
        self.lengths[row] += n

    def truncate(self, n: int, row: int = 0) -> None:
        """Forget every token of a row after the first n; stale slots need no clearing, the mask hides them."""
        self.lengths[row] = max(0, min(n, self.lengths[row]))

    def reset(self) -> None:
        for r in range(len(self.lengths)):
            self.truncate(0, r)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share: the part of a cached row another prompt can reuse."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
