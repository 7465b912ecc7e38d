"""The saved optimized graph: written once, reused while fresh, redone when stale, foreign files kept."""
from __future__ import annotations

import os

import numpy as np
import pytest

from config import InferenceConfig
from export.export_onnx import main as export_main
from kvcache import CacheFullError, KVCache
from backends.ort_cache import cpu_session, optimized_path
from session import open_session


@pytest.fixture()
def exported(make_tiny, tmp_path):
    model_dir = make_tiny()
    path = tmp_path / "m.onnx"
    assert export_main(["--hf_model_dir", str(model_dir), "--onnx_model_path", str(path),
                        "--kv_cache_length", "32"]) == 0
    return model_dir, path


def test_optimized_graph_saved_once_and_refreshed_when_stale(exported):
    _, path = exported
    opt = optimized_path(path)
    assert opt.name == "m.opt.onnx" and not opt.exists()
    cpu_session(path, 1)
    first = opt.stat().st_mtime_ns
    cpu_session(path, 1)
    assert opt.stat().st_mtime_ns == first  # reused, not rewritten
    later = first / 1e9 + 10
    os.utime(path, (later, later))  # the model changed after the optimized copy was made
    cpu_session(path, 1)
    assert opt.stat().st_mtime_ns > first
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".opt-")]  # no temp dirs left


def test_foreign_file_with_the_optimized_name_is_left_alone(exported):
    _, path = exported
    opt = optimized_path(path)
    opt.write_bytes(b"not a model of ours")
    session = cpu_session(path, 1)
    assert opt.read_bytes() == b"not a model of ours"
    assert [i.name for i in session.get_inputs()][0] == "input_ids"


def test_session_on_saved_graph_matches_the_fresh_one(exported):
    model_dir, path = exported
    ids = np.random.default_rng(5).integers(3, 400, (1, 9))
    results = []
    for _ in range(2):  # the first run writes m.opt.onnx, the second loads it
        cfg = InferenceConfig.create(hf_model_dir=str(model_dir), onnx_model_path=str(path), kv_cache_length=32,
                              max_input_length=16, kv_cache_method="basic")
        s = open_session(cfg)
        results.append(np.stack([s.run(ids[:, :6])] + [s.run(ids[:, i:i + 1]) for i in range(6, 9)]))
    np.testing.assert_array_equal(results[0], results[1])


def test_next_slots_is_a_view_written_in_place():
    c = KVCache(1, 1, 2, kv_len=4)
    c.append(np.ones((1, 1, 2, 2), np.float32))
    view = c.next_slots(2)
    view[...] = 5.0
    assert c.length == 1 and c.buffer[0, 1:3].min() == 5 and c.buffer[0, 3].max() == 0
    c.commit(2)
    assert c.length == 3
    with pytest.raises(CacheFullError):
        c.next_slots(2)
    with pytest.raises(CacheFullError):
        c.commit(2)


def test_sessions_that_take_turns_stop_spinning_after_each_run(exported):
    _, path = exported

    def stops(session) -> bool:
        try:
            return session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
        except RuntimeError:  # never set
            return False

    assert stops(cpu_session(path, 1, shared_threads=True)) and not stops(cpu_session(path, 1))
