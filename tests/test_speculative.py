"""Speculative decoding (engine/speculative.py): the answer must be the target's own, whatever the draft.

Greedy text equals plain decoding's with a perfect, a quantized and an unrelated draft model. Sampling
follows the target's distribution, not the draft's. The cache stays right across turns, stop strings
and a full cache. The multi-row logits it relies on equal one-at-a-time logits on every CPU session.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from cli_chat import main as cli_main
from cli_chat import parse_args
from config import InferenceConfig
from core.errors import UserError
from conftest import DEFAULT_KV_CACHE_LENGTH, KV_LEN
from engine.speculative import Drafter
from export.quantize_onnx import main as quantize_main
from inference import Inference, SamplingParams, load_inference
from session import Session, open_session

GREEDY = dict(method="greedy", temperature=0.0)
QUESTION = "Write a python function that checks whether a number is prime."


@pytest.fixture(scope="module")
def tiny(make_tiny, cpu_onnx_of, tmp_path_factory) -> dict:
    """The tiny model's cpu graph, its int4 quantization, and another random model of the same shape."""
    model_dir = make_tiny()
    fp32 = cpu_onnx_of(model_dir)
    int4 = tmp_path_factory.mktemp("spec_int4") / "tiny_int4.onnx"
    assert quantize_main(["--input_model_path", str(fp32), "--output_model_path", str(int4), "--bits", "4"]) == 0
    return {"dir": model_dir, "fp32": fp32, "int4": int4, "other": cpu_onnx_of(make_tiny(seed=1))}


def engine_for(tiny: dict, draft: str | None, **kw) -> Inference:
    base = dict(hf_model_dir=str(tiny["dir"]), onnx_model_path=str(tiny["fp32"]), kv_cache_length=KV_LEN,
                max_input_length=100, max_prefill_length=8, cpu_thread=1,
                draft_onnx_model_path=str(tiny[draft]) if draft else None)
    return Inference(InferenceConfig.create(**{**base, **kw}))


def answer(engine: Inference, content: str, params: SamplingParams) -> tuple[str, list[int], object]:
    ids = engine.apply_chat_template([{"role": "user", "content": content}])
    deltas = list(engine.stream(ids, params))
    return "".join(d.text for d in deltas), [d.token_id for d in deltas if d.token_id is not None], deltas[-1]


@pytest.mark.parametrize("session_kind", ["cpu graph", "npu graph", "pytorch"])
def test_logits_of_several_tokens_equal_one_at_a_time(tiny, tiny_onnx_of, session_kind):
    onnx = {"cpu graph": tiny["fp32"], "npu graph": tiny_onnx_of(tiny["dir"], KV_LEN), "pytorch": None}[session_kind]
    # The cpu graph always reads only the filled slots; the others are asked to do the same.
    cfg = InferenceConfig.create(tiny["dir"], kv_cache_length=KV_LEN, max_input_length=100, max_prefill_length=4,
                                 kv_cache_method=None if session_kind == "cpu graph" else "basic", cpu_thread=1,
                                 session_type="pytorch" if onnx is None else "onnx",
                                 onnx_model_path=str(onnx) if onnx else None)
    s = open_session(cfg)
    ids = np.random.default_rng(3).integers(3, cfg.shape.vocab_size, (1, 17))
    s.run(ids[:, :11])
    rows = s.run_all(ids[:, 11:])
    assert rows.shape == (6, cfg.shape.vocab_size) and s.length == 17
    s.truncate(11)
    one_by_one = np.stack([s.run(ids[:, i:i + 1]) for i in range(11, 17)])
    # float32 either way; a row off by one position differs by ~1e-1.
    np.testing.assert_allclose(rows, one_by_one, atol=1e-4)


@pytest.mark.parametrize("draft,draft_tokens", [("fp32", 4), ("int4", 1), ("int4", 4), ("other", 3), ("other", 7)])
def test_greedy_answer_is_the_plain_answer(tiny, draft, draft_tokens):
    params = SamplingParams(40, **GREEDY)
    plain_text, plain_ids, plain_last = answer(engine_for(tiny, None), QUESTION, params)
    engine = engine_for(tiny, draft, draft_tokens=draft_tokens)
    text, ids, last = answer(engine, QUESTION, params)
    assert (text, ids, last.finish_reason) == (plain_text, plain_ids, plain_last.finish_reason)
    assert plain_last.stats.completion_tokens > 10  # the comparison covers many drafting rounds
    acceptance = last.stats.draft_acceptance
    if draft == "fp32":  # the draft is the target itself: every guess is right
        assert acceptance == 1.0
    elif draft == "other":  # unrelated random weights: most guesses are wrong, the answer is unchanged
        assert acceptance < 0.5
    assert engine.scheduler.drafter.judged > 0


def test_turns_stop_strings_and_a_full_cache_keep_the_cache_right(tiny):
    """A stop string inside a verified burst leaves the cache ahead of the answer; the next turn must
    reuse only what it shares, exactly as a fresh engine would answer it."""
    greedy = SamplingParams(30, **GREEDY)
    spec, plain = engine_for(tiny, "int4", draft_tokens=5), engine_for(tiny, None)
    first, _, _ = answer(plain, QUESTION, greedy)
    stop = first[len(first) // 2:len(first) // 2 + 2]
    history = [{"role": "user", "content": QUESTION}]
    for engine in (spec, plain):
        ids = engine.apply_chat_template(history)
        cut = "".join(d.text for d in engine.stream(ids, SamplingParams(30, stop=[stop], **GREEDY)))
        assert stop not in cut and len(cut) < len(first)
    history += [{"role": "assistant", "content": cut}, {"role": "user", "content": "And in C?"}]
    second = []
    for engine in (spec, plain, engine_for(tiny, "int4", draft_tokens=5)):
        deltas = list(engine.stream(engine.apply_chat_template(history), greedy))
        second.append(("".join(d.text for d in deltas), deltas[-1].stats.reused_tokens > 0))
    assert second[0] == second[1] and second[0][0] == second[2][0]
    assert second[0][1] and not second[2][1]  # the spec engine reused its cache, the fresh one could not

    # To the last cache slot: the room for guesses shrinks to nothing and the answer still matches.
    ids = spec.apply_chat_template(history)
    long = SamplingParams(10_000, **GREEDY)
    results = [list(e.stream(ids, long)) for e in (spec, plain)]
    assert [d.text for d in results[0]] == [d.text for d in results[1]]
    assert results[0][-1].finish_reason == "length" and len(spec.scheduler.slots[0].ids) == KV_LEN


class ConstantSession(Session):
    """The same logits at every position: each token is an independent draw from one distribution."""

    def __init__(self, config: InferenceConfig, logits: np.ndarray):
        super().__init__(config)
        self.kv_len, self.length, self.row = config.session.kv_cache_length, 0, logits.astype(np.float32)

    def _forward(self, input_ids, n_logits):
        self.length += input_ids.shape[1]
        return np.tile(self.row, (n_logits, 1)) if n_logits else None

    def truncate(self, n):
        self.length = min(n, self.length)


def test_sampling_follows_the_target_distribution_not_the_drafts(tiny_model_dir):
    cfg = InferenceConfig.create(hf_model_dir=str(tiny_model_dir), session_type="pytorch", kv_cache_length=8192,
                          max_input_length=100)
    tokens = np.arange(40, 46)  # the letters K..P: whole characters, no end of sequence among them
    target, draft = np.full(cfg.shape.vocab_size, -30.0), np.full(cfg.shape.vocab_size, -30.0)
    target[tokens] = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5]
    draft[tokens] = [1.0, 2.0, 0.5, 1.5, 0.0, 2.5]  # another order, and token 45 (outside the target's top 4) most
    engine = Inference(cfg, session=ConstantSession(cfg, target))
    engine.scheduler.drafter = Drafter(ConstantSession(cfg, draft), 4)
    n = 4000
    params = SamplingParams(n, method="top_k", value=4, temperature=1.0, seed=7)
    out = [d.token_id for d in engine.stream([5, 6, 7], params) if d.token_id is not None]
    assert len(out) == n
    counts = np.array([out.count(t) for t in tokens]) / n
    want = np.exp(target[tokens[:4]]) / np.exp(target[tokens[:4]]).sum()
    # Top-4 of the target: the draft's favourite 45 lies outside it and must never appear.
    np.testing.assert_allclose(counts[:4], want, atol=0.03)
    assert counts[4:].sum() == 0
    # The draft was often wrong (its distribution is far from the target's), so the rule was exercised.
    assert 0.1 < engine.scheduler.drafter.accepted / engine.scheduler.drafter.judged < 0.9


def args_for(tiny: dict, *extra: str) -> argparse.Namespace:
    return parse_args(["--hf_model_dir", str(tiny["dir"]), "--onnx_model_path", str(tiny["fp32"]),
                       "--draft_onnx_model_path", str(tiny["int4"]), "--cpu_thread", "1", *extra])


def test_bad_draft_settings_are_one_line_errors(tiny, make_tiny, cpu_onnx_of, tmp_path, capsys):
    wrong_shape = cpu_onnx_of(make_tiny(num_layers=3))
    cases = [(["--session_type", "acl", "--om_model_path", str(tiny["fp32"])], "not acl"),
             (["--draft_onnx_model_path", str(tmp_path / "nope.onnx")], "no such file"),
             (["--draft_tokens", "0"], "--draft_tokens 0"),
             (["--draft_onnx_model_path", str(wrong_shape)], str(wrong_shape))]
    for extra, message in cases:
        with pytest.raises(UserError, match=message) as err:
            load_inference(args_for(tiny, *extra))
        assert "\n" not in str(err.value)
    capsys.readouterr()
    code = cli_main(["--hf_model_dir", str(tiny["dir"]), "--onnx_model_path", str(tiny["fp32"]),
                     "--draft_onnx_model_path", str(wrong_shape)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "num_hidden_layers" in err


def test_cli_chat_reports_how_many_guesses_were_kept(tiny, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("hello\n"))
    code = cli_main(["--hf_model_dir", str(tiny["dir"]), "--onnx_model_path", str(tiny["fp32"]),
                     "--draft_onnx_model_path", str(tiny["fp32"]), "--sampling_method", "greedy",
                     "--max_output_length", "12", "--cpu_thread", "1"])
    assert code == 0 and "drafts kept 100%" in capsys.readouterr().out


def test_default_model_int4_draft_keeps_the_fp32_greedy_answer(default_model_dir, default_cpu_onnx,
                                                               default_cpu_int4):
    base = dict(hf_model_dir=str(default_model_dir), onnx_model_path=str(default_cpu_onnx),
                kv_cache_length=DEFAULT_KV_CACHE_LENGTH, max_input_length=128, max_prefill_length=16)
    params = SamplingParams(48, **GREEDY)
    plain = answer(Inference(InferenceConfig.create(**base)), QUESTION, params)
    engine = Inference(InferenceConfig.create(**base, draft_onnx_model_path=str(default_cpu_int4)))
    spec = answer(engine, QUESTION, params)
    assert spec[:2] == plain[:2] and plain[2].stats.completion_tokens == 48
    # A useful draft: the int4 model agrees with fp32 on most tokens (measured 0.6-0.75 of guesses kept).
    assert spec[2].stats.draft_acceptance > 0.4
