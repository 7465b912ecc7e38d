"""Sampling, streaming, stop rules, the context policy and KV reuse across turns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from config import InferenceConfig
from engine.sampling import sample
from inference import Inference, PromptTooLongError, SamplingParams
from session import Session

GREEDY = dict(method="greedy", temperature=0.0)


class ScriptedSession(Session):
    """Answers with a fixed token script, whatever the prompt: a test double for the model."""

    def __init__(self, config, script):
        super().__init__(config)
        self.kv_len, self.length, self.script, self.fed = config.session.kv_cache_length, 0, list(script), []

    def _forward(self, input_ids, n_logits):
        self.length += input_ids.shape[1]
        self.fed += input_ids[0].tolist()
        if not n_logits:
            return None
        logits = np.zeros((n_logits, self.config.shape.vocab_size), np.float32)
        for row in logits:
            row[self.script.pop(0)] = 10.0
        return logits

    def truncate(self, n):
        self.length = min(n, self.length)
        self.fed = self.fed[:self.length]


def config_for(model_dir, **kw):
    base = dict(hf_model_dir=str(model_dir), session_type="pytorch", kv_cache_length=256, max_input_length=200)
    return InferenceConfig.create(**{**base, **kw})


def scripted(model_dir, text_or_ids, **kw):
    cfg = config_for(model_dir, **kw)
    probe = Inference(cfg, session=ScriptedSession(cfg, []))
    ids = probe.tokenizer.encode(text_or_ids, add_special_tokens=False) if isinstance(text_or_ids, str) else text_or_ids
    eos = probe.tokenizer.convert_tokens_to_ids("<|im_end|>")
    probe.session.script = list(ids) + [eos]
    return probe, ids


def collect(deltas):
    deltas = list(deltas)
    return "".join(d.text for d in deltas), deltas[-1]


def test_streamed_text_never_splits_a_character(tiny_model_dir):
    engine, ids = scripted(tiny_model_dir, "ok 龘龘 done")
    pieces = [d.text for d in engine.stream([5, 6, 7], SamplingParams(64, **GREEDY))]
    assert len(ids) > len("ok 龘龘 done".split()) + 2  # the rare character really is several byte tokens
    assert "".join(pieces) == "ok 龘龘 done"
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_is_not_returned_and_ends_with_stop(tiny_model_dir):
    engine, _ = scripted(tiny_model_dir, "alpha beta STOP gamma")
    text, last = collect(engine.stream([5, 6], SamplingParams(64, stop=["STOP"], **GREEDY)))
    assert text == "alpha beta " and last.finish_reason == "stop"


def test_partial_stop_prefix_is_released_when_it_does_not_complete(tiny_model_dir):
    engine, _ = scripted(tiny_model_dir, "a STaR b")
    text, last = collect(engine.stream([5, 6], SamplingParams(64, stop=["STOP"], **GREEDY)))
    assert text == "a STaR b" and last.finish_reason == "stop"


def test_max_new_tokens_gives_length(tiny_model_dir):
    engine, ids = scripted(tiny_model_dir, "one two three four five six")
    text, last = collect(engine.stream([5, 6], SamplingParams(3, **GREEDY)))
    assert last.finish_reason == "length" and last.stats.completion_tokens == 3
    assert text == engine.tokenizer.decode(ids[:3])


def test_full_cache_ends_with_length_not_a_crash(tiny_model_dir):
    engine, _ = scripted(tiny_model_dir, "word " * 40, kv_cache_length=16, max_input_length=8)
    text, last = collect(engine.stream(list(range(5, 13)), SamplingParams(100, **GREEDY)))
    assert last.finish_reason == "length" and engine.session.length == 16
    assert last.stats.completion_tokens == 16 - 8 + 1  # the last sampled token needs no slot


def test_prompt_longer_than_cache_is_refused_with_numbers(tiny_model_dir):
    engine, _ = scripted(tiny_model_dir, "x", kv_cache_length=16, max_input_length=8)
    with pytest.raises(PromptTooLongError, match="20 tokens.*16"):
        list(engine.stream(list(range(5, 25)), SamplingParams(4, **GREEDY)))


def test_fit_messages_drops_oldest_turns_but_keeps_system(tiny_model_dir):
    engine, _ = scripted(tiny_model_dir, "x", max_input_length=120)
    history = [{"role": "system", "content": "sys"}]
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": "answer " * 3}]
    history.append({"role": "user", "content": "last one"})
    kept, ids = engine.fit_messages(history)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last one"
    assert len(ids) <= 120 and len(kept) < len(history)
    with pytest.raises(PromptTooLongError):
        engine.fit_messages([{"role": "user", "content": "long words here " * 40}])


def test_sampling_rules():
    logits = np.array([0.0, 5.0, 4.9, -3.0, 1.0], np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, SamplingParams(1, method="greedy"), rng) == 1
    top_k = {sample(logits, SamplingParams(1, method="top_k", value=2, temperature=1.0), rng) for _ in range(200)}
    assert top_k == {1, 2}
    top_p = {sample(logits, SamplingParams(1, method="top_p", value=0.5, temperature=1.0), rng) for _ in range(200)}
    assert top_p == {1}
    wide = {sample(logits, SamplingParams(1, method="top_p", value=0.999, temperature=1.0), rng) for _ in range(500)}
    assert {0, 1, 2, 4} <= wide
    a = [sample(logits, SamplingParams(1, method="top_p", value=0.99, temperature=2.0), np.random.default_rng(7))
         for _ in range(20)]
    b = [sample(logits, SamplingParams(1, method="top_p", value=0.99, temperature=2.0), np.random.default_rng(7))
         for _ in range(20)]
    assert a == b


def test_greedy_generation_equals_transformers(tiny_model_dir):
    engine = Inference(config_for(tiny_model_dir))
    prompt = engine.apply_chat_template([{"role": "user", "content": "hello there, how are you?"}])
    text, last = collect(engine.stream(prompt, SamplingParams(12, **GREEDY)))
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                      eos_token_id=sorted(engine.eos_token_ids), pad_token_id=0)
    new = [t for t in out[0, len(prompt):].tolist() if t not in engine.eos_token_ids]
    assert last.stats.completion_tokens == len(new)
    assert text == engine.tokenizer.decode(new, skip_special_tokens=True)


def test_second_turn_reuses_the_cache_and_answers_the_same(tiny_model_dir):
    cfg = config_for(tiny_model_dir)
    engine = Inference(cfg)
    turn1 = [{"role": "user", "content": "hello there"}]
    answer, first = collect(engine.stream(engine.apply_chat_template(turn1), SamplingParams(6, **GREEDY)))
    assert first.stats.reused_tokens == 0
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "and again"}]
    reused_text, second = collect(engine.stream(engine.apply_chat_template(turn2), SamplingParams(6, **GREEDY)))
    assert second.stats.reused_tokens >= len(engine.apply_chat_template(turn1))
    fresh = Inference(cfg)
    fresh_text, _ = collect(fresh.stream(fresh.apply_chat_template(turn2), SamplingParams(6, **GREEDY)))
    assert reused_text == fresh_text


def test_abandoned_stream_keeps_a_consistent_cache_for_reuse(tiny_model_dir):
    engine = Inference(config_for(tiny_model_dir))
    prompt = engine.apply_chat_template([{"role": "user", "content": "hello there"}])
    stream = engine.stream(prompt, SamplingParams(8, **GREEDY))
    next(stream), next(stream)
    stream.close()
    assert engine.session.length == len(engine.scheduler.slots[0].ids) > len(prompt)
    again, last = collect(engine.stream(prompt, SamplingParams(8, **GREEDY)))
    fresh, _ = collect(Inference(config_for(tiny_model_dir)).stream(prompt, SamplingParams(8, **GREEDY)))
    assert again == fresh and last.stats.reused_tokens == len(prompt) - 1


def test_failing_graph_call_resets_the_cache(tiny_model_dir):
    engine, _ = scripted(tiny_model_dir, "one two three four")
    stream = engine.stream([5, 6, 7], SamplingParams(64, **GREEDY))
    next(stream)
    engine.session.script = []  # the next graph call fails (nothing left to answer with)
    with pytest.raises(IndexError):
        list(stream)
    assert engine.session.length == 0 and engine.scheduler.slots[0].ids == []


@pytest.mark.parametrize("answer, stop", [("a ST", ["STOP"]), ("ok\n", ["\n\n"]), ("a STaR", ["STOP"])])
def test_held_back_text_is_released_when_the_answer_ends(tiny_model_dir, answer, stop):
    """A possible start of a stop string that the end of the answer leaves incomplete is answer text."""
    engine, ids = scripted(tiny_model_dir, answer)
    text, last = collect(engine.stream([5, 6], SamplingParams(64, stop=stop, **GREEDY)))
    assert text == answer == engine.tokenizer.decode(ids) and last.finish_reason == "stop"


def test_half_character_before_the_end_is_released_as_decoded(tiny_model_dir):
    engine, ids = scripted(tiny_model_dir, "ok 龘")
    engine.session.script = ids[:-1] + engine.session.script[-1:]  # the answer ends inside 龘
    text, last = collect(engine.stream([5, 6], SamplingParams(64, **GREEDY)))
    assert text == engine.tokenizer.decode(ids[:-1]) and text.endswith("\ufffd") and last.finish_reason == "stop"
