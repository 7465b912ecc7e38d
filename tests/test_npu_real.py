"""The NPU flow on the real default model, under the emulator: the shared export+patch fixture ->
onnx2om.py (emulated atc) -> AclSession / cli_chat.py --session_type acl. Nothing here ran on an NPU."""
from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path

import pytest

from config import InferenceConfig
from emulator import harness
from inference import Inference, SamplingParams

pytestmark = pytest.mark.emulator

QUESTION = "Write a python function that checks whether a number is prime, and explain how it works."


@pytest.fixture(scope="module")
def real_oms(default_onnx, tmp_path_factory):
    """`real_oms(mpl)` -> the .om for that --max_prefill_length, compiled on first use only, by
    onnx2om.py run as a user runs it (its own process, emulated atc on PATH)."""
    folder, built = tmp_path_factory.mktemp("npu_real"), {}

    def compiled(mpl: int) -> Path:
        if mpl not in built:
            out = folder / f"qwen2.5_coder_0.5b_p{mpl}"
            r = subprocess.run([sys.executable, "export/onnx2om.py",
                                "--hf_model_dir", str(default_onnx["hf_model_dir"]),
                                "--onnx_model_path", str(default_onnx["patched"]), "--om_model_path", str(out),
                                "--max_prefill_length", str(mpl), "--soc_version", "Ascend310B1", "--cpu_thread", "2"],
                               cwd=harness.ROOT, env=harness.subprocess_env(), capture_output=True, text=True,
                               timeout=900)
            assert r.returncode == 0, r.stderr
            assert f"wrote {out}.om" in r.stdout
            built[mpl] = out.with_name(out.name + ".om")
        return built[mpl]

    return compiled


def config(default_onnx, **kw) -> InferenceConfig:
    base = dict(hf_model_dir=str(default_onnx["hf_model_dir"]), kv_cache_length=default_onnx["kv_cache_length"],
                max_input_length=200, max_prefill_length=8)
    if kw.get("session_type") != "acl":  # the acl session runs the .om alone and refuses an onnx path
        base["onnx_model_path"] = str(default_onnx["patched"])
    return InferenceConfig.create(**{**base, **kw})


def test_dry_run_for_the_default_model(default_onnx):
    r = subprocess.run([sys.executable, "export/onnx2om.py", "--onnx_model_path", str(default_onnx["patched"]),
                        "--om_model_path", "output/model/qwen", "--soc_version", "Ascend310B1", "--dry_run"],
                       cwd=harness.ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    kv = default_onnx["kv_cache_length"]
    assert "past_key_values:1,-1,96,64" in r.stdout      # 24 layers * 2 (k, v) * 2 kv heads, head_dim 64
    assert f"=1,{kv // 2 + 1},1,{kv // 2};" in r.stdout and f";8,{kv + 8},8,{kv}'" in r.stdout
    assert sum(line.startswith("profile") for line in r.stdout.splitlines()) == 8


@pytest.mark.parametrize("mpl", [1, 4, 8])
def test_two_dependent_turns_match_onnx_across_half_cache(monkeypatch, default_onnx, real_oms, mpl):
    """Two chat turns, the second built on the first's answer with KV reuse, token for token equal to
    OnnxSession at the same --max_prefill_length. The first turn already runs past kv_len/2, so the
    dynamic models use both cache gears; 1 compiles static shapes (one token per call, full cache)."""
    harness.activate(monkeypatch)
    params = SamplingParams(max_new_tokens=40, method="greedy")
    kv = default_onnx["kv_cache_length"]

    def conversation(engine: Inference) -> tuple[list[int], list[int]]:
        msgs = [{"role": "user", "content": " ".join([QUESTION] * 5)}]
        first = [d.token_id for d in engine.stream(engine.apply_chat_template(msgs), params) if d.token_id is not None]
        msgs += [{"role": "assistant", "content": engine.tokenizer.decode(first)},
                 {"role": "user", "content": "Shorter, please."}]
        assert engine.session.length > kv // 2
        return first, [d.token_id for d in engine.stream(engine.apply_chat_template(msgs), params) if d.token_id is not None]

    ref = conversation(Inference(config(default_onnx, max_prefill_length=mpl)))
    gc.collect()
    engine = Inference(config(default_onnx, session_type="acl", om_model_path=str(real_oms(mpl)),
                              max_prefill_length=mpl))
    mark = len(harness.trace())
    try:
        ours = conversation(engine)
    finally:
        engine.session.close()
    gc.collect()
    assert ours == ref and all(ref)   # both turns answered, token for token
    executes = [e for e in harness.trace()[mark:] if e[0] == "execute"]
    seqs = {e[1]["input_ids"][1] for e in executes}
    kvs = {e[1]["past_key_values"][1] for e in executes}
    if mpl == 1:
        assert (seqs, kvs, {e[2] for e in executes}) == ({1}, {kv}, {None})
    else:
        assert max(seqs) == mpl and kvs == {kv // 2, kv}


def test_cli_chat_on_the_emulated_npu(default_onnx, real_oms):
    """The end of the flow a user runs: cli_chat.py --session_type acl, two piped turns."""
    r = subprocess.run(
        [sys.executable, "cli_chat.py", "--session_type", "acl", "--hf_model_dir", str(default_onnx["hf_model_dir"]),
         "--om_model_path", str(real_oms(8)), "--kv_cache_length", str(default_onnx["kv_cache_length"]),
         "--max_input_length", "160", "--sampling_method", "greedy", "--max_output_length", "24"],
        input="What is the capital of France? Answer in one word.\nAnd of Germany? One word.\n",
        cwd=harness.ROOT, env=harness.subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    answers = re.findall(r"Assistant: (.*)", r.stdout)
    assert len(answers) == 2 and "Paris" in answers[0] and "Berlin" in answers[1], r.stdout
    assert [int(x) for x in re.findall(r"\((\d+) reused\)", r.stdout)][1] > 20
    assert f"loading {real_oms(8).name}" in r.stderr   # the chunked upload shows its progress bar
