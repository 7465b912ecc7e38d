"""The NPU flow on the real default model, under the emulator: the shared export+patch fixture ->
onnx2om.py (emulated atc) -> AclSession / cli_chat.py --session_type acl. Nothing here ran on an NPU."""
from __future__ import annotations

import gc
import re
import subprocess
import sys

import pytest

from config import InferenceConfig
from emulator import harness
from inference import Inference, SamplingParams
from session import Session

QUESTION = "Write a python function that checks whether a number is prime, and explain how it works."


@pytest.fixture(scope="module")
def real_om(default_onnx, tmp_path_factory):
    """onnx2om.py run as a user runs it (its own process, emulated atc on PATH), prefill 8."""
    out = tmp_path_factory.mktemp("npu_real") / "qwen2.5_coder_0.5b"
    r = subprocess.run([sys.executable, "export/onnx2om.py", "--hf_model_dir", str(default_onnx["hf_model_dir"]),
                        "--onnx_model_path", str(default_onnx["patched"]), "--om_model_path", str(out),
                        "--max_prefill_length", "8", "--soc_version", "Ascend310B1", "--cpu_thread", "2"],
                       cwd=harness.ROOT, env=harness.subprocess_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}.om" in r.stdout
    return out.with_name(out.name + ".om")


def config(default_onnx, **kw) -> InferenceConfig:
    base = dict(hf_model_dir=str(default_onnx["hf_model_dir"]), onnx_model_path=str(default_onnx["patched"]),
                kv_cache_length=default_onnx["kv_cache_length"], max_input_length=200, max_prefill_length=8)
    return InferenceConfig(**{**base, **kw})


def test_dry_run_for_the_default_model(default_onnx):
    r = subprocess.run([sys.executable, "export/onnx2om.py", "--onnx_model_path", str(default_onnx["patched"]),
                        "--om_model_path", "output/model/qwen", "--soc_version", "Ascend310B1", "--dry_run"],
                       cwd=harness.ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    kv = default_onnx["kv_cache_length"]
    assert "past_key_values:1,-1,96,64" in r.stdout      # 24 layers * 2 (k, v) * 2 kv heads, head_dim 64
    assert f"=1,{kv // 2 + 1},1,{kv // 2};" in r.stdout and f";8,{kv + 8},8,{kv}'" in r.stdout
    assert sum(line.startswith("profile") for line in r.stdout.splitlines()) == 8


def test_greedy_chat_matches_onnx_across_half_cache(monkeypatch, default_onnx, real_om):
    """Two turns with KV reuse; the first already runs past kv_len/2, so both profiles are used."""
    harness.activate(monkeypatch)
    params = SamplingParams(max_new_tokens=40, method="greedy")
    kv = default_onnx["kv_cache_length"]

    def conversation(engine: Inference) -> list[int]:
        msgs = [{"role": "user", "content": " ".join([QUESTION] * 5)}]
        first = [d.token_id for d in engine.chat(msgs, params) if d.token_id is not None]
        msgs += [{"role": "assistant", "content": engine.tokenizer.decode(first)},
                 {"role": "user", "content": "Shorter, please."}]
        assert engine.session.length > kv // 2
        return first + [d.token_id for d in engine.chat(msgs, params) if d.token_id is not None]

    ref = conversation(Inference(config(default_onnx)))
    gc.collect()
    engine = Inference(config(default_onnx, session_type="acl", om_model_path=str(real_om)))
    mark = len(harness.trace())
    try:
        ours = conversation(engine)
    finally:
        engine.session.close()
    assert ours == ref
    kvs = {e[1][3] for e in harness.trace()[mark:] if e[0] == "execute"}
    assert kvs == {kv // 2, kv}


@pytest.mark.parametrize("mpl", [1, 4])
def test_other_prefill_lengths_match_onnx(monkeypatch, default_onnx, tmp_path, mpl):
    """--max_prefill_length 1 compiles static shapes (one token per call); 4 splits 11 tokens as 4+4+2+1."""
    harness.activate(monkeypatch)
    om = harness.compile_om(default_onnx["patched"], tmp_path / f"p{mpl}", mpl)
    ids = [151644, 872, 198, 7985, 264, 12914, 151645, 198, 151644, 77091, 198]
    ref = harness.greedy_turn(Session.fromConfig(config(default_onnx, max_prefill_length=mpl)), ids, 8)
    gc.collect()
    s = Session.fromConfig(config(default_onnx, session_type="acl", om_model_path=str(om), max_prefill_length=mpl))
    mark = len(harness.trace())
    try:
        assert harness.greedy_turn(s, ids, 8) == ref
    finally:
        s.close()
    seqs = [e[1][0] if e[1] else 1 for e in harness.trace()[mark:] if e[0] == "execute"]
    assert seqs[:4] == ([1, 1, 1, 1] if mpl == 1 else [4, 4, 2, 1])


def test_cli_chat_on_the_emulated_npu(default_onnx, real_om):
    """The end of the flow a user runs: cli_chat.py --session_type acl, two piped turns."""
    r = subprocess.run(
        [sys.executable, "cli_chat.py", "--session_type", "acl", "--hf_model_dir", str(default_onnx["hf_model_dir"]),
         "--om_model_path", str(real_om), "--kv_cache_length", str(default_onnx["kv_cache_length"]),
         "--max_input_length", "160", "--sampling_method", "greedy", "--max_output_length", "24"],
        input="What is the capital of France? Answer in one word.\nAnd of Germany? One word.\n",
        cwd=harness.ROOT, env=harness.subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    answers = re.findall(r"Assistant: (.*)", r.stdout)
    assert len(answers) == 2 and "Paris" in answers[0] and "Berlin" in answers[1], r.stdout
    assert [int(x) for x in re.findall(r"\((\d+) reused\)", r.stdout)][1] > 20
    assert "loading qwen2.5_coder_0.5b.om" in r.stderr   # the chunked upload shows its progress bar
