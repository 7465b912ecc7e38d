"""Sessions whose KV cache is a numpy buffer in host memory (the npu graph on onnxruntime, and torch)."""
from __future__ import annotations

import numpy as np

from backends.base import Session
from config import InferenceConfig
from kvcache import KVCache

NP_DTYPES = {"float32": np.float32, "float16": np.float16}


class HostCacheSession(Session):
    def __init__(self, config: InferenceConfig, dtype: str):
        super().__init__(config)
        shape, s = config.shape, config.session
        self.cache = KVCache(shape.num_hidden_layers, shape.num_key_value_heads, shape.head_dim,
                             s.kv_cache_length, NP_DTYPES[dtype], s.kv_cache_method or "fixsize")

    @property
    def kv_len(self) -> int:
        return self.cache.kv_len

    @property
    def length(self) -> int:
        return self.cache.length

    def truncate(self, n: int) -> None:
        self.cache.truncate(n)
