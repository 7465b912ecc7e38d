"""AclSession under the emulated pyACL, on the tiny model: same greedy tokens as OnnxSession, device
cache bookkeeping (kv/2 profile, D2D appends, logits only for the last chunk) and ordered release."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from config import InferenceConfig
from core.errors import UserError
from batch_helpers import alone, record_tokens, schedule
from emulator import harness
from inference import Inference, SamplingParams
from session import Session, open_session

pytestmark = pytest.mark.emulator

KV = 64  # the half-cache profile covers the first 32 tokens


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir, tiny_onnx_of):
    return tiny_onnx_of(tiny_model_dir, KV)


@pytest.fixture(scope="module")
def tiny_oms(tiny_onnx):
    """One .om per --max_prefill_length, compiled by onnx2om.py with the emulated atc."""
    with pytest.MonkeyPatch.context() as mp:
        harness.activate(mp)
        return {m: harness.compile_om(tiny_onnx, tiny_onnx.with_name(f"tiny_p{m}"), m) for m in (1, 4, 8)}


@pytest.fixture
def emu(monkeypatch):
    harness.activate(monkeypatch)


def config(model_dir, session_type: str, path, mpl: int = 8, **kw) -> InferenceConfig:
    key = "om_model_path" if session_type == "acl" else "onnx_model_path"
    return InferenceConfig.create(hf_model_dir=str(model_dir), session_type=session_type, kv_cache_length=KV,
                           max_input_length=KV // 2, max_prefill_length=mpl, **{key: str(path)}, **kw)


def two_turns(session) -> list[int]:
    """20-token prompt plus 20 greedy tokens (crosses kv/2 = 32), then keep 30 tokens, add 9, generate 10."""
    first = harness.greedy_turn(session, list(range(5, 25)), 20)
    session.truncate(30)
    return first + harness.greedy_turn(session, list(range(40, 49)), 10)


@pytest.mark.parametrize("mpl", [1, 4, 8])
def test_greedy_tokens_match_onnx_session_across_half_cache(emu, tiny_model_dir, tiny_onnx, tiny_oms, mpl):
    ref = open_session(config(tiny_model_dir, "onnx", tiny_onnx, mpl))
    acl_session = open_session(config(tiny_model_dir, "acl", tiny_oms[mpl], mpl))
    mark = len(harness.trace())
    try:
        assert two_turns(acl_session) == two_turns(ref)
        executes = [e for e in harness.trace()[mark:] if e[0] == "execute"]
    finally:
        acl_session.close()
    if mpl == 1:
        assert {e[2] for e in executes} == {None}  # static shapes: no gear is ever selected
    else:
        kvs = [e[1]["past_key_values"][1] for e in executes]
        first_full = kvs.index(KV)
        assert set(kvs[:first_full]) == {KV // 2} and first_full > 0
        assert max(e[1]["input_ids"][1] for e in executes) == mpl
        assert set(kvs[first_full:]) == {KV}  # the second turn resumes at 30 + 9 > 32


def test_logits_leave_the_device_only_for_the_last_chunk(emu, tiny_model_dir, tiny_oms):
    s = open_session(config(tiny_model_dir, "acl", tiny_oms[8]))
    try:
        mark = len(harness.trace())
        s.run(np.arange(3, 16, dtype=np.int64)[None])           # 13 tokens -> chunks 8, 4, 1
        events = harness.trace()[mark:]
    finally:
        s.close()
    executes = [e for e in events if e[0] == "execute"]
    assert [e[1]["input_ids"][1] for e in executes] == [8, 4, 1]
    to_host = [e for e in events if e[0] == "memcpy" and e[1] == "host-pinned"]
    assert len(to_host) == 1 and to_host[0][3] == 2              # one D2H copy: the last row of logits
    appends = [e for e in events if e[0] == "memcpy" and e[1] == e[2] == "device" and e[3] == 3]
    row = 2 * 2 * 2 * 16 * 4                                      # layers * 2 * kv_heads * head_dim * float32
    assert [(e[4], e[5]) for e in appends] == [(8 * row, 0), (4 * row, 8 * row), (1 * row, 12 * row)]


def test_reset_clears_the_device_cache_with_memset(emu, tiny_model_dir, tiny_oms):
    s = open_session(config(tiny_model_dir, "acl", tiny_oms[8]))
    try:
        ids = np.arange(3, 12, dtype=np.int64)[None]
        first = s.run(ids)
        mark = len(harness.trace())
        s.reset()
        assert s.length == 0
        assert any(e[0] == "memset" and e[1] == "device" for e in harness.trace()[mark:])
        np.testing.assert_array_equal(s.run(ids), first)
    finally:
        s.close()


def test_streamed_turns_with_kv_reuse_match_onnx(emu, tiny_model_dir, tiny_onnx, tiny_oms):
    params = SamplingParams(max_new_tokens=12, method="greedy")

    def conversation(engine: Inference) -> tuple[list, int]:
        first = list(range(5, 20))
        out1 = [d.token_id for d in engine.stream(first, params) if d.token_id is not None]
        deltas = list(engine.stream(first + out1 + list(range(30, 36)), params))
        return out1 + [d.token_id for d in deltas if d.token_id is not None], deltas[-1].stats.reused_tokens

    ref_tokens, _ = conversation(Inference(config(tiny_model_dir, "onnx", tiny_onnx)))
    engine = Inference(config(tiny_model_dir, "acl", tiny_oms[8]))
    try:
        tokens, reused = conversation(engine)
    finally:
        engine.session.close()
    assert tokens == ref_tokens
    assert reused >= 15  # the second turn prefilled only what the device cache did not hold


def test_runs_from_another_thread_and_releases_everything_in_order(emu, tiny_model_dir, tiny_oms):
    s = open_session(config(tiny_model_dir, "acl", tiny_oms[4], mpl=4))
    out: list = []
    worker = threading.Thread(target=lambda: out.append(s.run(np.arange(3, 9, dtype=np.int64)[None])))
    worker.start()
    worker.join()
    assert len(out) == 1 and out[0].shape == (s.config.shape.vocab_size,)
    mark = len(harness.trace())
    s.close()
    names = [e[0] for e in harness.trace()[mark:]]
    assert names.index("unload") < names.index("free") < names.index("destroy_context") < names.index("reset_device")
    assert "destroy_context_refused" not in names and "reset_device_refused" not in names
    assert harness.live() == {}


def test_model_is_loaded_from_host_memory_when_the_app_runs_on_a_host(emu, monkeypatch, tiny_model_dir,
                                                                         tiny_onnx, tiny_oms):
    monkeypatch.setenv("EMU_ACL_RUN_MODE", "host")
    s = open_session(config(tiny_model_dir, "acl", tiny_oms[8]))
    ref = open_session(config(tiny_model_dir, "onnx", tiny_onnx))
    try:
        assert harness.greedy_turn(s, [7, 8, 9], 5) == harness.greedy_turn(ref, [7, 8, 9], 5)
    finally:
        s.close()
    assert harness.live() == {}


def test_mismatched_settings_are_config_errors(emu, tiny_model_dir, tiny_oms):
    with pytest.raises(UserError, match="--max_prefill_length 4"):
        open_session(config(tiny_model_dir, "acl", tiny_oms[4], mpl=8))
    with pytest.raises(UserError, match="static shapes"):
        open_session(config(tiny_model_dir, "acl", tiny_oms[1], mpl=8))
    with pytest.raises(UserError, match="kv_cache_length 64"):
        cfg = config(tiny_model_dir, "acl", tiny_oms[8])
        cfg.session.kv_cache_length = 128
        open_session(cfg)
    assert harness.live() == {}  # a refused model leaves nothing allocated


def test_model_for_another_chip_is_refused_by_the_runtime(emu, monkeypatch, tiny_model_dir, tiny_oms):
    from backends.acl_runtime import AclError

    monkeypatch.setenv("EMU_ACL_SOC", "Ascend910B1")
    with pytest.raises(AclError, match="acl.mdl.load_from_mem.*compiled for Ascend310B1"):
        open_session(config(tiny_model_dir, "acl", tiny_oms[8]))
    assert harness.live() == {}


def test_api_serves_the_acl_session_like_the_onnx_one(emu, tiny_model_dir, tmp_path):
    """api.py's app on AclSession: its worker thread is not the one that created the context."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from export.export_onnx import main as export_main

    onnx_path = tmp_path / "chat.onnx"
    assert export_main(["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(onnx_path),
                        "--kv_cache_length", "256"]) == 0
    om = harness.compile_om(onnx_path, tmp_path / "chat", 8)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0}
    answers = []
    for kind, flag, path in (("onnx", "onnx_model_path", onnx_path), ("acl", "om_model_path", om)):
        engine = Inference(InferenceConfig.create(tiny_model_dir, session_type=kind, kv_cache_length=256,
                                                  max_input_length=128, **{flag: str(path)}))
        try:
            with TestClient(create_app(engine, "tiny", allowed_hosts="testserver")) as client:
                r = client.post("/v1/chat/completions", json=body)
        finally:
            if kind == "acl":
                engine.session.close()
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0]["message"]["content"])
    assert answers[0] == answers[1] and answers[1]


def test_each_call_selects_its_gear_in_the_documented_full_form(emu, monkeypatch, tiny_model_dir, tiny_oms):
    """set_input_dynamic_dims gets every dimension of every input in input order (pyACL reference
    aclpythondevg_01_0159): for a chunk of n tokens against kv cache rows, input_ids [1, n],
    attention_mask [1, kv + n], position_ids [1, n], past_key_values [1, kv, 8, 16]."""
    import acl

    calls = []
    real = acl.mdl.set_input_dynamic_dims

    def spy(model_id, dataset, index, dims):
        calls.append((index, dict(dims)))
        return real(model_id, dataset, index, dims)

    monkeypatch.setattr(acl.mdl, "set_input_dynamic_dims", spy)
    s = open_session(config(tiny_model_dir, "acl", tiny_oms[8]))
    try:
        s.run(np.arange(3, 16, dtype=np.int64)[None])            # 13 tokens -> chunks 8, 4, 1 on the half cache
        s.run(np.arange(3, 24, dtype=np.int64)[None])            # 21 more: 8, 8 fit in 32 rows, 4 and 1 do not
    finally:
        s.close()
    half, width = KV // 2, 2 * 2 * 2
    chunks = [(8, half), (4, half), (1, half), (8, half), (8, half), (4, KV), (1, KV)]
    assert {index for index, _ in calls} == {4}                  # ascend_mbatch_shape_data
    assert [d["dims"] for _, d in calls] == [[1, n, 1, kv + n, 1, n, 1, kv, width, 16] for n, kv in chunks]
    assert all(d["dimCount"] == 10 and d["name"] == "" for _, d in calls)


def test_memcpy_kinds_name_the_real_direction(emu, monkeypatch, tiny_model_dir, tiny_oms):
    """The runtime ignores memcpy's kind (aclpythondevg_01_0120: reserved), but each of ours still says
    where the bytes go: 0 host-to-host, 1 host-to-device, 2 device-to-host, 3 device-to-device."""
    expect = {("host-pinned", "host-bytes"): 0, ("device", "host-bytes"): 1, ("host-pinned", "device"): 2,
              ("device", "device"): 3}
    for mode in ("device", "host"):
        monkeypatch.setenv("EMU_ACL_RUN_MODE", mode)
        mark = len(harness.trace())
        s = open_session(config(tiny_model_dir, "acl", tiny_oms[4], mpl=4))
        try:
            s.run(np.arange(3, 9, dtype=np.int64)[None])
        finally:
            s.close()
        copies = [e for e in harness.trace()[mark:] if e[0] == "memcpy"]
        assert {expect[(e[1], e[2])] for e in copies} == ({1, 2, 3} if mode == "device" else {0, 1, 2, 3})
        assert all(e[3] == expect[(e[1], e[2])] for e in copies)


def test_acl_is_initialised_once_and_finalised_once_at_exit(tiny_model_dir, tiny_oms):
    """acl.init once per process and acl.finalize paired with it (aclpythondevg_01_0004 / 01_0006),
    even with two sessions one after the other; finalize runs at exit, after both closed."""
    script = (
        "import atexit\n"
        "from acl._state import state\n"
        "atexit.register(lambda: print([e[0] for e in state().trace if e[0] in ('init', 'finalize', 'unload')]))\n"
        "import numpy as np\n"
        "from config import InferenceConfig\n"
        "from session import open_session\n"
        "for _ in range(2):\n"
        f"    s = open_session(InferenceConfig.create(hf_model_dir={str(tiny_model_dir)!r}, session_type='acl', "
        f"om_model_path={str(tiny_oms[1])!r}, kv_cache_length={KV}, max_input_length={KV // 2}, "
        "max_prefill_length=1))\n"
        "    s.run(np.array([[5]], dtype=np.int64))\n"
        "    s.close()\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=harness.ROOT, env=harness.subprocess_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "['init', 'unload', 'unload', 'finalize']"


def test_a_batch_range_model_is_refused_as_undocumented(emu, monkeypatch, tiny_model_dir, tiny_onnx, tmp_path):
    """A batch range (1~2) next to --dynamic_dims, as atc allows off the 310/310B chips (onnx2om.py emits
    only fixed batches): how pyACL selects a gear then is not documented, so the session refuses it."""
    from export import onnx2om

    a = onnx2om.parse_args(["--onnx_model_path", str(tiny_onnx), "--om_model_path", str(tmp_path / "range2"),
                            "--max_batch", "2"])
    cmd = [part.replace(":2,", ":1~2,") if part.startswith("--input_shape=") else part
           for part in onnx2om.atc_command(a, "Ascend910B1", onnx2om.model_settings(a))]
    assert subprocess.run(cmd, env=harness.subprocess_env(), capture_output=True).returncode == 0
    monkeypatch.setenv("EMU_ACL_SOC", "Ascend910B1")
    with pytest.raises(UserError, match="batch range together with --dynamic_dims is not documented") as e:
        open_session(config(tiny_model_dir, "acl", tmp_path / "range2.om", max_batch=2))
    assert "\n" not in str(e.value) and "--max_batch" in str(e.value)
    assert harness.live() == {}


def test_four_conversations_on_a_batch_of_four_get_what_onnx_gives_each_alone(emu, monkeypatch, tiny_model_dir,
                                                                              tiny_onnx, tmp_path):
    """onnx2om --max_batch 4 (a static batch): AclSession runs four conversations, arriving at different
    times with prompts of different lengths, one cancelled, each in its own row of the device cache."""
    record_tokens(monkeypatch)
    om = harness.compile_om(tiny_onnx, tmp_path / "batch4", 8, "--max_batch", "4")
    ref = Inference(config(tiny_model_dir, "onnx", tiny_onnx))
    engine = Inference(config(tiny_model_dir, "acl", om, max_batch=4))
    greedy = dict(method="greedy", temperature=0.0)
    rng = np.random.default_rng(0)
    requests = [(at, rng.integers(3, 400, n).tolist(), SamplingParams(new, **greedy), cancel)
                for at, n, new, cancel in ((0, 5, 20, None), (1, 13, 14, 6), (2, 27, 16, None), (4, 9, 18, None))]
    want = [alone(ref, ids, params) for _, ids, params, _ in requests]
    mark = len(harness.trace())
    try:
        got = schedule(engine, requests)
        assert [g.error for g in got] == [None] * 4
        assert got[1].seen == want[1][:len(got[1].seen)] and 6 <= len(got[1].seen) < len(want[1])
        assert [got[i].seen for i in (0, 2, 3)] == [want[i] for i in (0, 2, 3)]
        assert sorted(g.slot.index for g in got) == [0, 1, 2, 3]
        # The first conversation's next turn finds its row of the device cache.
        ids = requests[0][1] + got[0].seen + [7, 8, 9]
        again = schedule(engine, [(0, ids, SamplingParams(6, **greedy), None)])[0]
        assert again.reused == len(ids) - 4 and again.slot.index == got[0].slot.index  # all but the last token
        assert again.seen == alone(ref, ids, SamplingParams(6, **greedy))
        executes = [e for e in harness.trace()[mark:] if e[0] == "execute"]
    finally:
        engine.session.close()
    assert {e[1]["input_ids"][0] for e in executes} == {4}  # every call runs the compiled batch
    assert {e[1]["past_key_values"][1] for e in executes} == {KV}  # no half-cache gear with several rows


def test_a_batch_the_model_was_not_compiled_for_is_one_line(emu, tiny_model_dir, tiny_oms):
    with pytest.raises(UserError) as e:
        open_session(config(tiny_model_dir, "acl", tiny_oms[8], max_batch=4))
    assert "\n" not in str(e.value) and "compiled for batch 1" in str(e.value) and "--max_batch 1" in str(e.value)
    assert harness.live() == {}


def test_no_size_for_the_mbatch_input_fails_loudly(emu, monkeypatch, tiny_model_dir, tiny_oms):
    """The size and format of ascend_mbatch_shape_data are not documented: the session allocates what the
    runtime reports and refuses a model that reports nothing, rather than guessing a size."""
    import acl

    real = acl.mdl.get_input_size_by_index
    monkeypatch.setattr(acl.mdl, "get_input_size_by_index", lambda desc, i: 0 if i == 4 else real(desc, i))
    with pytest.raises(UserError, match="not documented, so this session does not guess"):
        open_session(config(tiny_model_dir, "acl", tiny_oms[8]))
    assert harness.live() == {}


def test_a_missing_profile_is_one_line_naming_it_and_the_flag(emu, tiny_model_dir, tiny_oms):
    """The gears are read back at load time; a run that needs one the model lacks stops there."""
    with pytest.raises(UserError) as e:
        open_session(config(tiny_model_dir, "acl", tiny_oms[4], mpl=8))
    message = str(e.value)
    assert "\n" not in message
    assert f"no profile for a 8-token chunk on a {KV // 2}-row cache" in message
    assert "built with --max_prefill_length 4" in message
    s = open_session(config(tiny_model_dir, "acl", tiny_oms[8], mpl=4))   # a subset of the gears is fine
    s.close()
