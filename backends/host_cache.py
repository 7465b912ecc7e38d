"""Sessions whose KV cache is a numpy buffer in host memory (the npu graph on onnxruntime, and torch)."""
from __future__ import annotations

import numpy as np

from backends.base import MultiRowSession
from config import InferenceConfig
from backends.kv_cache import KVCache

NP_DTYPES = {"float32": np.float32, "float16": np.float16}


class HostCacheSession(MultiRowSession):
    def __init__(self, config: InferenceConfig, dtype: str):
        shape, s = config.shape, config.session
        self.cache = KVCache(shape.num_hidden_layers, shape.num_key_value_heads, shape.head_dim,
                             s.kv_cache_length, NP_DTYPES[dtype], s.kv_cache_method or "fixsize", s.max_batch)
        super().__init__(config, self.cache.lengths)

    @property
    def kv_len(self) -> int:
        return self.cache.kv_len

    def copy_row(self, src: int, dst: int, n: int) -> bool:
        if src == dst or n > self.lengths[src]:
            return False
        self.cache.buffer[dst, :n] = self.cache.buffer[src, :n]
        self.lengths[dst] = n
        return True
