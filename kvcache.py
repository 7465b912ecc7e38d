"""The static KV cache on the host, where the original project's layout keeps it: the implementation lives
with the backends that own it (backends/kv_cache.py); this module names it for the engine and scripts."""
from backends.kv_cache import CacheFullError, KVCache, common_prefix

__all__ = ["CacheFullError", "KVCache", "common_prefix"]
