"""End to end on the real default model: export -> patch -> ONNX session, against transformers."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from config import InferenceConfig
from inference import Inference, SamplingParams
from session import open_session

pytestmark = pytest.mark.default_model

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Write a python function that checks whether a number is prime."


@pytest.fixture(scope="module")
def hf_model(default_model_dir):
    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()


def onnx_config(default_onnx, **kw) -> InferenceConfig:
    base = dict(hf_model_dir=str(default_onnx["hf_model_dir"]), onnx_model_path=str(default_onnx["patched"]),
                kv_cache_length=default_onnx["kv_cache_length"], max_input_length=128, max_prefill_length=8)
    return InferenceConfig.create(**{**base, **kw})


def prompt_ids(engine: Inference) -> list[int]:
    return engine.apply_chat_template([{"role": "user", "content": QUESTION}])


def test_greedy_tokens_equal_transformers_generate(default_onnx, hf_model):
    engine = Inference(onnx_config(default_onnx))
    ids = prompt_ids(engine)
    ours, logits = [], engine.session.run(np.array([ids]))
    for _ in range(32):
        ours.append(int(np.argmax(logits)))
        logits = engine.session.run(np.array([[ours[-1]]]))
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert ours == ref[0, len(ids):].tolist()
    assert "def " in engine.tokenizer.decode(ours)


def test_logits_match_pytorch_export_model_and_transformers(default_onnx, hf_model):
    cfg = onnx_config(default_onnx)
    onnx_session = open_session(cfg)
    torch_session = open_session(onnx_config(default_onnx, session_type="pytorch", kv_cache_method="basic"))
    engine = Inference(cfg, session=onnx_session)
    ids = prompt_ids(engine)
    steps = [onnx_session.run(np.array([ids]))]
    mine = [torch_session.run(np.array([ids]))]
    seq = list(ids)
    for _ in range(4):  # decode steps, fed with the greedy token
        seq.append(int(np.argmax(steps[-1])))
        steps.append(onnx_session.run(np.array([[seq[-1]]])))
        mine.append(torch_session.run(np.array([[seq[-1]]])))
    with torch.no_grad():
        ref = hf_model(torch.tensor([seq])).logits[0].numpy()
    want = ref[len(ids) - 1:]
    assert np.abs(np.stack(steps) - want).max() < 1e-3
    assert np.abs(np.stack(mine) - want).max() < 1e-3
    assert np.abs(np.stack(steps) - np.stack(mine)).max() < 1e-3


def test_patched_graph_is_the_exported_graph(default_onnx):
    """Our export has nothing atc rejects, so change_node copies it: both give the same logits."""
    a = open_session(onnx_config(default_onnx, onnx_model_path=str(default_onnx["onnx"])))
    b = open_session(onnx_config(default_onnx))
    ids = np.array([[151644, 872, 198, 14990, 151645]])
    np.testing.assert_array_equal(a.run(ids), b.run(ids))


def test_two_turn_chat_through_cli(default_onnx):
    cfg = onnx_config(default_onnx)
    r = subprocess.run(
        [sys.executable, str(ROOT / "cli_chat.py"), "--hf_model_dir", cfg.session.hf_model_dir,
         "--onnx_model_path", cfg.session.onnx_model_path, "--sampling_method", "greedy", "--max_output_length", "48",
         "--kv_cache_length", str(cfg.session.kv_cache_length), "--max_input_length", "160"],
        input="What is the capital of France? Answer in one word.\nAnd of Germany? One word.\n",
        text=True, capture_output=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    answers = re.findall(r"Assistant: (.*)", r.stdout)
    assert len(answers) == 2
    assert "Paris" in answers[0] and "Berlin" in answers[1], r.stdout
    reused = [int(x) for x in re.findall(r"\((\d+) reused\)", r.stdout)]
    assert reused[0] == 0 and reused[1] > 20
