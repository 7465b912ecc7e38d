"""engine/penalties.py, logprobs and n choices at the engine level, on the tiny model: the greedy token's
logprob is the log-softmax of the logits it was chosen from; penalties and logit_bias move the answer the
way OpenAI documents; n choices of one prompt prefill it once, copy its cache (every CPU backend), and
each gets exactly the tokens a lone request with its derived seed gets."""
from __future__ import annotations

import numpy as np
import pytest

from backends.base import Row
from batch_helpers import alone, record_tokens
from engine.penalties import LogitBias, Penalties
from engine.sampling import LogitsProcessor, log_softmax
from inference import SamplingParams
from test_batching import KINDS, engine_for, models, prompt  # noqa: F401 (fixture)

GREEDY = dict(method="greedy", temperature=0.0)


@pytest.fixture(autouse=True)
def seen_tokens(monkeypatch):
    record_tokens(monkeypatch)


class Spy(LogitsProcessor):
    """Records the logits a token is chosen from, changing nothing."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def process(self, logits, generated):
        self.seen.append(logits.copy())
        return logits


def run(engine, ids, params):
    generation = engine.start(ids, params)
    deltas = []
    while not generation.finished:
        engine.step()
        deltas += generation.take()
    assert generation.error is None
    return generation, deltas


def test_penalties_follow_openais_formula():
    p = Penalties(presence=0.5, frequency=0.25)
    for t in (3, 3, 3, 7):
        p.accept(t)
    logits = np.zeros(10, np.float32)
    out = p.process(logits, [])
    expected = np.zeros(10, np.float32)
    expected[3] = -(3 * 0.25 + 0.5)
    expected[7] = -(1 * 0.25 + 0.5)
    np.testing.assert_allclose(out, expected)
    assert not logits.any()  # the caller's logits are left alone
    np.testing.assert_allclose(LogitBias({2: -100.0, 5: 3.0}).process(logits, []), [0, 0, -100, 0, 0, 3, 0, 0, 0, 0])


def test_greedy_logprob_is_the_log_softmax_of_its_logits(models):
    engine = engine_for(models, "cpu graph", max_batch=1)
    spy = Spy()
    generation, deltas = run(engine, prompt(1, 9), SamplingParams(12, **GREEDY, processors=[spy], logprobs=5))
    entries = [e for d in deltas for e in d.logprobs]
    assert [e.token for e in entries] == generation.seen[:len(entries)] and len(entries) == generation.n
    for e, logits in zip(entries, spy.seen):
        lp = log_softmax(logits)
        assert e.token == int(np.argmax(logits))
        assert e.logprob == pytest.approx(lp[e.token], abs=1e-9)
        assert len(e.top) == 5 and e.top[0][0] == e.token
        assert [v for _, v in e.top] == sorted((v for _, v in e.top), reverse=True)
        assert [v for _, v in e.top] == pytest.approx(sorted(lp, reverse=True)[:5], abs=1e-9)


def test_no_logprobs_unless_asked(models):
    engine = engine_for(models, "cpu graph", max_batch=1)
    _, deltas = run(engine, prompt(1, 9), SamplingParams(6, **GREEDY))
    assert all(d.logprobs == [] for d in deltas)


def test_frequency_penalty_lowers_repeats_and_logit_bias_bans_or_forces(models):
    engine = engine_for(models, "cpu graph", max_batch=1)
    ids = prompt(3, 7)
    plain = alone(engine, ids, SamplingParams(40, **GREEDY))

    def repeats(tokens):
        return len(tokens) - len(set(tokens))

    assert repeats(plain) > 5  # the tiny random model loops under greedy: room for the penalty to show
    penalized = alone(engine, ids, SamplingParams(40, **GREEDY, processors=[Penalties(0.0, 2.0)]))
    assert repeats(penalized) < repeats(plain)
    presence = alone(engine, ids, SamplingParams(40, **GREEDY, processors=[Penalties(2.0, 0.0)]))
    assert repeats(presence) < repeats(plain)
    banned = alone(engine, ids, SamplingParams(40, **GREEDY, processors=[LogitBias({plain[0]: -100.0})]))
    assert plain[0] not in banned
    forced = alone(engine, ids, SamplingParams(10, **GREEDY, processors=[LogitBias({42: 100.0})]))
    assert forced == [42] * 10


@pytest.mark.parametrize("kind", KINDS)
def test_n_choices_share_one_prefill_and_equal_lone_requests(models, kind, monkeypatch):
    engine = engine_for(models, kind, max_batch=4)
    ids = prompt(5, 21)
    params = SamplingParams(12, method="top_p", value=0.95, temperature=1.5, seed=11)
    lone = [alone(engine, ids, params.for_choice(i)) for i in range(6)]
    assert len({tuple(t) for t in lone}) > 1  # the seeds differ enough to give different answers
    fed, copies = [], []
    real_feed, real_copy = Row.feed, type(engine.session).copy_row
    monkeypatch.setattr(Row, "feed", lambda self, x, want_logits: fed.append(x.shape[1]) or real_feed(self, x, want_logits))
    monkeypatch.setattr(type(engine.session), "copy_row",
                        lambda self, *a: copies.append(a) or real_copy(self, *a))
    for n in (3, 6):  # 6 > 4 slots: the last two wait for a free slot
        engine.reset()
        fed.clear(), copies.clear()
        group = engine.start_choices(ids, params, n)
        while not all(g.finished for g in group):
            engine.step()
        assert [g.error for g in group] == [None] * n
        assert [g.seen for g in group] == lone[:n]
        if n == 3:  # all three started together: one prefill, two copies
            assert sum(fed) == len(ids) and len(copies) == 2
        else:  # the queued two find the prompt in a freed slot: at most its last token is fed again
            assert sum(fed) <= len(ids) + 2 and len(copies) >= 3


def test_n_choices_on_the_emulated_npu_copy_the_device_row(tiny_model_dir, tiny_onnx_of, tmp_path, monkeypatch):
    """acl keeps the cache on the device: a choice's copy is one device-to-device memcpy of the row."""
    from backends.acl import AclSession
    from config import InferenceConfig
    from emulator import harness
    from inference import Inference

    harness.activate(monkeypatch)
    onnx = tiny_onnx_of(tiny_model_dir, 64)
    om = harness.compile_om(onnx, tmp_path / "batch4", 8, "--max_batch", "4")
    engine = Inference(InferenceConfig.create(hf_model_dir=str(tiny_model_dir), session_type="acl", om_model_path=str(om),
                                              kv_cache_length=64, max_input_length=32, max_prefill_length=8,
                                              max_batch=4))
    try:
        ids = prompt(9, 13)
        params = SamplingParams(10, method="top_p", value=0.95, temperature=1.5, seed=3)
        lone = [alone(engine, ids, params.for_choice(i)) for i in range(3)]
        copies = []
        real = AclSession.copy_row
        monkeypatch.setattr(AclSession, "copy_row", lambda self, *a: copies.append(real(self, *a)) or copies[-1])
        engine.reset()
        group = engine.start_choices(ids, params, 3)
        while not all(g.finished for g in group):
            engine.step()
        assert copies == [True, True]
        assert [g.seen for g in group] == lone and len({tuple(t) for t in lone}) > 1
    finally:
        engine.session.close()


def test_on_the_default_model_logprobs_and_n_choices(default_model_dir, default_cpu_onnx):
    """The real model's cpu graph: the greedy tokens' logprobs are the log-softmax of their logits, and
    three seeded choices sharing one prefill are the three lone answers."""
    from config import InferenceConfig
    from inference import Inference

    engine = Inference(InferenceConfig.create(hf_model_dir=str(default_model_dir), session_type="onnx",
                                              onnx_model_path=str(default_cpu_onnx), kv_cache_length=256,
                                              max_batch=3, cpu_thread=2))
    ids = engine.apply_chat_template([{"role": "user", "content": "Name three fruits."}])
    spy = Spy()
    _, deltas = run(engine, ids, SamplingParams(8, **GREEDY, processors=[spy], logprobs=3))
    entries = [e for d in deltas for e in d.logprobs]
    assert len(entries) == len(spy.seen) == 8
    for e, logits in zip(entries, spy.seen):
        assert e.token == int(np.argmax(logits)) and e.logprob == pytest.approx(log_softmax(logits)[e.token], abs=1e-9)
    params = SamplingParams(8, method="top_p", value=0.9, temperature=1.0, seed=21)
    lone = [alone(engine, ids, params.for_choice(i)) for i in range(3)]
    engine.reset()
    group = engine.start_choices(ids, params, 3)
    while not all(g.finished for g in group):
        engine.step()
    assert [g.seen for g in group] == lone


def test_a_request_with_logprobs_or_penalties_does_not_speculate(models):
    """Drafts are judged against raw logits and give no logprobs: such requests decode plainly, with the
    same greedy answer."""
    engine = engine_for(models, "cpu graph", max_batch=1, draft_onnx_model_path=str(models["cpu graph"]))
    ids = prompt(2, 9)
    plain = alone(engine, ids, SamplingParams(16, **GREEDY))
    assert engine.scheduler.drafter.judged > 0  # the control: a plain request speculates
    for params in (SamplingParams(16, **GREEDY, logprobs=0), SamplingParams(16, **GREEDY, processors=[Penalties(0, 0)])):
        judged = engine.scheduler.drafter.judged
        engine.reset()
        generation, deltas = run(engine, ids, params)
        assert engine.scheduler.drafter.judged == judged and generation.seen == plain
        entries = [e for d in deltas for e in d.logprobs]
        assert len(entries) == (generation.n if params.logprobs is not None else 0)
