"""The power-of-two prefill split, the static KV cache, and how sessions use them."""
from __future__ import annotations

import numpy as np
import pytest

from config import InferenceConfig
from kvcache import CacheFullError, KVCache
from session import Session, open_session, prefill_chunks


@pytest.mark.parametrize("n,mx,want", [(12, 8, [8, 4]), (13, 8, [8, 4, 1]), (1, 8, [1]), (8, 8, [8]),
                                       (20, 8, [8, 8, 4]), (7, 1, [1] * 7), (5, 4, [4, 1]), (0, 8, [])])
def test_prefill_chunks(n, mx, want):
    assert prefill_chunks(n, mx) == want


def test_prefill_chunks_properties():
    for mx in (1, 2, 4, 8, 16):
        for n in range(0, 70):
            chunks = prefill_chunks(n, mx)
            assert sum(chunks) == n
            assert all(c <= mx and c & (c - 1) == 0 for c in chunks)
            assert chunks == sorted(chunks, reverse=True)


def test_fixsize_cache_masks_unused_slots():
    c = KVCache(num_layers=2, num_kv_heads=1, head_dim=3, kv_len=6)
    mask, pos, past = c.step_inputs(2)
    assert mask.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1]] and pos.tolist() == [[0, 1]] and past.shape == (1, 6, 4, 3)
    c.append(np.ones((1, 2, 4, 3), np.float32))
    mask, pos, past = c.step_inputs(1)
    assert mask.tolist() == [[1, 1, 0, 0, 0, 0, 1]] and pos.tolist() == [[2]]
    assert past[0, :2].min() == 1 and past[0, 2:].max() == 0


def test_basic_cache_passes_only_filled_slots():
    c = KVCache(2, 1, 3, kv_len=6, method="basic")
    c.append(np.full((1, 3, 4, 3), 2.0, np.float32))
    mask, pos, past = c.step_inputs(2)
    assert mask.tolist() == [[1, 1, 1, 1, 1]] and pos.tolist() == [[3, 4]] and past.shape == (1, 3, 4, 3)


def test_truncate_and_full_cache():
    c = KVCache(1, 1, 2, kv_len=4)
    c.append(np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2))
    c.truncate(1)
    assert c.length == 1 and c.free == 3
    c.append(np.full((1, 3, 2, 2), 7.0, np.float32))
    assert c.buffer[0, 0].tolist() == [[0, 1], [2, 3]] and c.buffer[0, 1:].min() == 7
    with pytest.raises(CacheFullError):
        c.step_inputs(1)
    with pytest.raises(CacheFullError):
        c.append(np.zeros((1, 1, 2, 2), np.float32))
    c.reset()
    assert c.length == 0


class RecordingSession(Session):
    """Counts graph calls; returns logits whose argmax is the number of tokens seen so far."""

    def __init__(self, config):
        super().__init__(config)
        self.kv_len, self.length, self.calls = config.session.kv_cache_length, 0, []

    def _forward(self, input_ids, n_logits):
        self.calls.append((input_ids.shape[1], n_logits))
        self.length += input_ids.shape[1]
        rows = np.eye(self.kv_len + 1, dtype=np.float32)
        return rows[self.length - n_logits + 1:self.length + 1] if n_logits else None

    def truncate(self, n):
        self.length = min(n, self.length)


def test_run_splits_prompt_and_wants_logits_only_once(tiny_model_dir):
    s = RecordingSession(InferenceConfig.create(hf_model_dir=str(tiny_model_dir), session_type="pytorch",
                                         kv_cache_length=32, max_input_length=16, max_prefill_length=8))
    logits = s.run(np.zeros((1, 13), np.int64))
    assert s.calls == [(8, 0), (4, 0), (1, 1)] and int(np.argmax(logits)) == 13
    with pytest.raises(CacheFullError):
        s.run(np.zeros((1, 20), np.int64))
    assert s.length == 13  # a refused call changes nothing


def test_pytorch_session_chunked_equals_one_shot(tiny_model_dir):
    ids = np.random.default_rng(0).integers(3, 200, (1, 13))
    results = []
    for mx in (1, 4, 16):
        s = open_session(InferenceConfig.create(hf_model_dir=str(tiny_model_dir), session_type="pytorch",
                                               kv_cache_length=32, max_input_length=16, max_prefill_length=mx))
        results.append(s.run(ids))
    np.testing.assert_allclose(results[0], results[1], atol=1e-4)
    np.testing.assert_allclose(results[0], results[2], atol=1e-4)
