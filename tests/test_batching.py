"""Slots and continuous batching (engine/scheduler.py) at the engine level, on every CPU backend: requests
that arrive at different times, with prompts of different lengths, one cancelled, each get exactly the
tokens they get alone; conversations that take turns reuse their own slot's cache; a long prompt is
prefilled between decode steps; speculative decoding hands over to batched decoding and back."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DEFAULT_KV_CACHE_LENGTH, KV_LEN
from backends.base import Row
from batch_helpers import alone, record_tokens, schedule
from config import InferenceConfig
from core.errors import UserError
from inference import Inference, SamplingParams

GREEDY = dict(method="greedy", temperature=0.0)
KINDS = ["cpu graph", "npu graph", "npu graph basic", "pytorch"]


@pytest.fixture(autouse=True)
def seen_tokens(monkeypatch):
    record_tokens(monkeypatch)


@pytest.fixture(scope="module")
def models(tiny_model_dir, tiny_onnx_of, cpu_onnx_of) -> dict:
    return {"dir": tiny_model_dir, "cpu graph": cpu_onnx_of(tiny_model_dir),
            "npu graph": tiny_onnx_of(tiny_model_dir, KV_LEN)}


def engine_for(models: dict, kind: str, max_batch: int, **kw) -> Inference:
    onnx = models.get(kind.removesuffix(" basic"))
    base = dict(hf_model_dir=str(models["dir"]), kv_cache_length=KV_LEN, max_input_length=100,
                max_prefill_length=4, cpu_thread=1, max_batch=max_batch,
                session_type="pytorch" if onnx is None else "onnx", onnx_model_path=str(onnx) if onnx else None,
                kv_cache_method="basic" if kind.endswith("basic") else None)
    return Inference(InferenceConfig.create(**{**base, **kw}))


def prompt(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, 400, n).tolist()


def record_calls(monkeypatch, engine: Inference) -> list[tuple]:
    """The graph calls the engine makes from here on, in order: ("chunk", row, tokens) for a prefill chunk,
    ("decode", rows) for a decode step."""
    calls: list[tuple] = []
    real_feed, real_decode = Row.feed, engine.session.decode
    monkeypatch.setattr(Row, "feed", lambda self, ids, want_logits: calls.append(("chunk", self.index, ids.shape[1]))
                        or real_feed(self, ids, want_logits))
    monkeypatch.setattr(engine.session, "decode", lambda rows, tokens: calls.append(("decode", len(rows)))
                        or real_decode(rows, tokens))
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_requests_get_the_tokens_they_get_alone(models, kind, monkeypatch):
    engine = engine_for(models, kind, max_batch=4)
    batched: list[list[int]] = []  # the rows of every decode call that ran several
    real = type(engine.session)._decode
    monkeypatch.setattr(type(engine.session), "_decode",
                        lambda self, rows, tokens: batched.append(rows) or real(self, rows, tokens))
    # Request 2 arrives once request 1's prompt is read: prompts take turns in prefill, and request 1 must
    # join the batch first for the rows to be laid out around it.
    lengths, arrive, new = [5, 23, 9, 17], [0, 2, 8, 10], [30, 16, 24, 14]
    requests = [(arrive[i], prompt(i, lengths[i]), SamplingParams(new[i], **GREEDY), None) for i in range(4)]
    ref = [alone(engine, ids, params) for _, ids, params, _ in requests]
    assert all(len(r) == n for r, n in zip(ref, new))  # no early end token: every step is compared
    for n in range(2, 5):
        engine.reset()
        # Request 1 is cancelled after 10 tokens: the others go on in the rows around its idle one.
        got = schedule(engine, [(a, ids, p, 10 if i == 1 else None) for i, (a, ids, p, _) in enumerate(requests[:n])])
        assert [g.error for g in got] == [None] * n
        assert max(len(rows) for rows in batched) == n
        assert n < 3 or any(1 not in rows and max(rows) > 1 for rows in batched)  # around the idle row 1
        batched.clear()
        assert got[1].seen == ref[1][:len(got[1].seen)] and 10 <= len(got[1].seen) < len(ref[1])
        for i in [0] + list(range(2, n)):
            assert got[i].seen == ref[i], f"request {i} of {n}"
            assert got[i].take()[-1].finish_reason == "length"


@pytest.mark.parametrize("kind", ["cpu graph", "npu graph"])
def test_sampled_requests_keep_their_own_seeded_tokens(models, kind):
    engine = engine_for(models, kind, max_batch=3)
    requests = [(i, prompt(10 + i, 6 + 5 * i), SamplingParams(10, method="top_p", value=0.95, temperature=1.0,
                                                               seed=i), None) for i in range(3)]
    ref = [alone(engine, ids, params) for _, ids, params, _ in requests]
    engine.reset()
    assert [g.seen for g in schedule(engine, requests)] == ref
    assert len({tuple(r) for r in ref}) == 3


@pytest.mark.parametrize("kind", ["cpu graph", "npu graph"])
def test_conversations_taking_turns_reuse_their_own_slot(models, kind):
    """Three conversations on three slots: A ends early and waits idle between B's and C's rows while they
    decode; then A, B and C each send a second turn and find their first turn in their slot."""
    engine = engine_for(models, kind, max_batch=3)
    turn1 = {"B": prompt(20, 11), "A": prompt(21, 13), "C": prompt(22, 7)}
    first = schedule(engine, [(0, ids, SamplingParams(3 if name == "A" else 12, **GREEDY), None)
                              for name, ids in turn1.items()])
    assert [g.slot.index for g in first] == [0, 1, 2]
    turn2 = {name: ids + g.seen + prompt(30 + i, 5) for i, ((name, ids), g) in enumerate(zip(turn1.items(), first))}
    second = schedule(engine, [(i, ids, SamplingParams(6, **GREEDY), None)
                               for i, ids in enumerate(turn2[name] for name in ("A", "C", "B"))])
    for name, g in zip(("A", "C", "B"), second):
        assert g.reused >= len(turn1[name]) + len(first[list(turn1).index(name)].seen) - 1, name
        assert g.slot.index == list(turn1).index(name)
    fresh = engine_for(models, kind, max_batch=1)
    assert [g.seen for g in second] == [alone(fresh, turn2[name], SamplingParams(6, **GREEDY))
                                        for name in ("A", "C", "B")]


def test_a_full_idle_row_between_decoding_rows_gives_up_only_its_last_slot(models):
    """The cpu graph writes a token for every row of the block: an idle row whose cache is full lends its
    last slot (never writes past its row), the rows around it decode as alone, and its conversation stays
    reusable up to that slot."""
    engine = engine_for(models, "cpu graph", max_batch=3)
    greedy = SamplingParams(KV_LEN, **GREEDY)
    a_prompt = prompt(80, 100)
    slot_a = schedule(engine, [(0, prompt(81, 5), SamplingParams(1, **GREEDY), None), (0, a_prompt, greedy, None)])[1]
    assert slot_a.slot.index == 1 and engine.session.lengths[1] == KV_LEN  # filled to the last slot
    others = [(0, prompt(82 + i, 6), SamplingParams(8, **GREEDY), None) for i in range(2)]
    ref = [alone(engine_for(models, "cpu graph", max_batch=1), ids, p) for _, ids, p, _ in others]
    got = schedule(engine, others)
    assert sorted(g.slot.index for g in got) == [0, 2] and [g.seen for g in got] == ref
    assert engine.session.lengths[1] == KV_LEN - 1
    turn2 = (a_prompt + slot_a.seen)[:KV_LEN - 2] + [7]
    again = schedule(engine, [(0, turn2, SamplingParams(1, **GREEDY), None)])[0]
    assert again.slot.index == 1 and again.reused == KV_LEN - 2
    assert again.seen == alone(engine_for(models, "cpu graph", max_batch=1), turn2, SamplingParams(1, **GREEDY))


def test_a_request_without_a_free_slot_waits_then_takes_the_least_recently_used(models):
    engine = engine_for(models, "cpu graph", max_batch=2)
    a, b, c = (engine.start(prompt(40 + i, 6), SamplingParams(4 + 4 * i, **GREEDY)) for i in range(3))
    assert engine.scheduler.free_slots() == -1 and c.slot is None
    while not a.finished:
        engine.step()
    assert c.slot is None  # admitted at the next step
    engine.step()
    assert c.slot is not None and c.slot.index == a.slot.index and c.reused == 0
    while not (b.finished and c.finished):
        engine.step()
    assert engine.scheduler.free_slots() == 2


def test_a_long_prompt_is_prefilled_between_decode_steps(models, monkeypatch):
    """A 40-token prompt in chunks of 4 while another request decodes: the decoding request gets a token
    after every chunk instead of waiting for the whole prompt."""
    engine = engine_for(models, "cpu graph", max_batch=2)
    calls = record_calls(monkeypatch, engine)
    got = schedule(engine, [(0, prompt(51, 5), SamplingParams(20, **GREEDY), None),
                            (3, prompt(50, 40), SamplingParams(3, **GREEDY), None)])
    long_chunks = [i for i, c in enumerate(calls) if c[0] == "chunk"][2:]  # the short prompt's 4 + 1 come first
    assert len(long_chunks) == 10
    between = calls[long_chunks[0]:long_chunks[-1]]
    assert between.count(("decode", 1)) == 9 and ("decode", 2) not in between  # one step after each chunk
    assert calls[long_chunks[-1] + 1] == ("decode", 2)  # it joins the batch at once
    assert [g.error for g in got] == [None, None]


@pytest.mark.parametrize("kind", ["cpu graph", "npu graph"])
def test_short_prompts_arriving_together_are_read_in_one_step(models, kind, monkeypatch):
    """A step starts chunks, oldest request first, while fewer than --max_prefill_length (8 here) prompt
    tokens have run in it. The cpu graph reads a 3-token prompt in one call, a power-of-two graph in two
    (2 + 1); a 12-token prompt is 8 + 4 on the cpu graph, 8 + 4 as powers of two too."""
    engine = engine_for(models, kind, max_batch=4, max_prefill_length=8)
    calls = record_calls(monkeypatch, engine)
    ids = [prompt(70 + i, 3) for i in range(3)] + [prompt(73, 12)]
    params = SamplingParams(6, **GREEDY)
    ref = [alone(engine, p, params) for p in ids]
    engine.reset()
    calls.clear()
    got = [engine.start(p, params) for p in ids]
    engine.step()
    if kind == "cpu graph":  # 3 + 3 < 8, so the third prompt starts too: 9 tokens, three answers begin
        assert calls == [("chunk", 0, 3), ("chunk", 1, 3), ("chunk", 2, 3), ("decode", 3)]
    else:  # 2 + 1 + 2 + 1 + 2 = 8: the third prompt's last token waits for the next step
        assert [c[2] for c in calls[:-1]] == [2, 1, 2, 1, 2] and calls[-1] == ("decode", 2)
    while not all(g.finished for g in got):
        engine.step()
    assert [g.seen for g in got] == ref
    steps, run = [], 0  # prompt tokens between two decode steps
    for c in calls:
        if c[0] == "chunk":
            run += c[2]
        else:
            steps.append(run)
            run = 0
    assert max(steps) < 2 * 8 and sum(steps) + run == 3 * 3 + 12
    assert [c[2] for c in calls if c[0] == "chunk" and c[1] == 3] == [8, 4]


def test_the_server_sends_each_first_token_as_soon_as_its_prompt_is_read(models, monkeypatch):
    """Three short prompts read in one step: the worker hands each request's first token to its client
    right after that prompt's chunk, before the next prompt is read and before the step's decode."""
    import asyncio

    from server.worker import Job, Worker

    engine = engine_for(models, "cpu graph", max_batch=4, max_prefill_length=64)
    worker = Worker(engine, max_queue=4)
    calls = record_calls(monkeypatch, engine)
    send = worker._send
    monkeypatch.setattr(worker, "_send", lambda: calls.append(("send", sum(
        g.first_token_at is not None for run in worker._runs for g in run.live))) or send())
    loop = asyncio.new_event_loop()
    try:
        jobs = [Job([engine.tokenizer.encode(text)], SamplingParams(5, **GREEDY), loop)
                for text in ("one two", "three four", "five six")]
        for job in jobs:
            worker.submit(job)
        worker._admit()
        worker._step()
        assert [c[:2] for c in calls] == [("chunk", 0), ("send", 1), ("chunk", 1), ("send", 2), ("chunk", 2),
                                          ("send", 3), ("decode", 3)]
        worker._collect()
        loop.run_until_complete(asyncio.sleep(0))  # the events the worker queued with call_soon_threadsafe
        assert all(job.events.qsize() >= 1 for job in jobs)  # each has its first token (or its text so far)
    finally:
        for run in list(worker._runs):
            worker._cancel(run)
        loop.close()


def test_speculative_decoding_hands_over_to_batched_decoding_and_back(models, tmp_path):
    from export.quantize_onnx import main as quantize_main

    int4 = tmp_path / "int4.onnx"
    assert quantize_main(["--input_model_path", str(models["cpu graph"]), "--output_model_path", str(int4),
                          "--bits", "4"]) == 0
    plain = engine_for(models, "cpu graph", max_batch=1)
    engine = engine_for(models, "cpu graph", max_batch=3, draft_onnx_model_path=str(int4), draft_tokens=3)
    requests = [(0, prompt(60, 9), SamplingParams(24, **GREEDY), None),
                (6, prompt(61, 14), SamplingParams(6, **GREEDY), None),
                (8, prompt(62, 5), SamplingParams(5, **GREEDY), 2)]
    ref = [alone(plain, ids, params) for _, ids, params, _ in requests]
    got = schedule(engine, requests)
    assert got[0].seen == ref[0] and got[1].seen == ref[1] and got[2].seen == ref[2][:len(got[2].seen)]
    # Request 0 ran alone before 1 came and after 1 and 2 left: the draft judged guesses both times.
    assert got[0].judged > 0 and got[1].judged == got[2].judged == 0


def test_a_failing_decode_step_fails_the_requests_in_it_and_forgets_their_rows(models):
    engine = engine_for(models, "npu graph", max_batch=2)
    a, b = (engine.start(prompt(70 + i, 6), SamplingParams(10, **GREEDY)) for i in range(2))
    while not (a.pending is not None and b.pending is not None):
        engine.step()
    engine.session.decode = lambda rows, tokens: (_ for _ in ()).throw(RuntimeError("graph failed"))
    engine.step()
    assert isinstance(a.error, RuntimeError) and isinstance(b.error, RuntimeError) and a.finished and b.finished
    assert [s.ids for s in engine.scheduler.slots] == [[], []] and engine.session.lengths == [0, 0]


def test_max_batch_must_be_positive(models):
    with pytest.raises(UserError, match="--max_batch 0"):
        engine_for(models, "cpu graph", max_batch=0)


@pytest.mark.parametrize("kind", ["cpu graph", "npu graph"])
def test_a_cache_the_machine_cannot_map_is_one_line(models, kind, monkeypatch):
    from backends import kv_cache

    def refuse(*_):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(kv_cache.mmap, "mmap", refuse)
    with pytest.raises(UserError) as e:
        engine_for(models, kind, max_batch=64)
    assert "\n" not in str(e.value) and "lower --max_batch or --kv_cache_length" in str(e.value)


def test_default_model_concurrent_requests_match_alone_and_turns_reuse_their_cache(default_model_dir,
                                                                                   default_cpu_onnx):
    """The real model's cpu graph, kept short: 2, 3 and 4 requests of different prompt lengths arriving at
    different steps, the second cancelled after 3 tokens, each get the tokens they get alone; then two
    conversations take turns, and each second turn finds its first turn in its own slot."""
    base = dict(hf_model_dir=str(default_model_dir), onnx_model_path=str(default_cpu_onnx),
                kv_cache_length=DEFAULT_KV_CACHE_LENGTH, max_input_length=128, max_prefill_length=32)
    engine = Inference(InferenceConfig.create(**base, max_batch=4))
    questions = ["Write a python function that adds two numbers.", "What is a linked list? Explain it to a "
                 "beginner who knows arrays but has never seen pointers.", "Say hi.", "Name three sorting algorithms."]
    ids = [engine.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    assert len({len(i) for i in ids}) == 4
    requests = [(at, p, SamplingParams(8, **GREEDY), 3 if i == 1 else None)
                for i, (at, p) in enumerate(zip((0, 2, 5, 6), ids))]
    ref = [alone(engine, p, params) for _, p, params, _ in requests]
    for n in range(2, 5):
        engine.reset()
        got = schedule(engine, requests[:n])
        assert [g.error for g in got] == [None] * n
        assert got[1].seen == ref[1][:len(got[1].seen)] and 3 <= len(got[1].seen) < len(ref[1])
        assert [g.seen for i, g in enumerate(got) if i != 1] == [r for i, r in enumerate(ref[:n]) if i != 1]
    engine.reset()
    chats = [[{"role": "user", "content": q}] for q in ("What is a tuple?", "What is a set in Python?")]
    first = schedule(engine, [(0, engine.apply_chat_template(c), SamplingParams(6, **GREEDY), None) for c in chats])
    turns = [c + [{"role": "assistant", "content": engine.tokenizer.decode(g.seen, skip_special_tokens=True)},
                  {"role": "user", "content": "And a list?"}] for c, g in zip(chats, first)]
    second = schedule(engine, [(i, engine.apply_chat_template(t), SamplingParams(2, **GREEDY), None)
                               for i, t in enumerate(reversed(turns))])
    for g, f in zip(second, reversed(first)):
        assert g.slot.index == f.slot.index and g.reused >= len(f.prompt_ids), (g.reused, len(f.prompt_ids))


@pytest.mark.parametrize("kind", KINDS)
def test_a_prompt_borrows_the_prefix_another_slot_holds(models, kind):
    """B's prompt starts with the 15 tokens A's conversation starts with (a shared system prompt): arriving
    while A decodes, it copies them from A's row instead of prefilling them, and gets its tokens as alone.
    C, sharing nothing, prefills all of its prompt."""
    engine = engine_for(models, kind, max_batch=3)
    system = prompt(90, 15)
    a_ids, b_ids, c_ids = system + prompt(91, 6), system + prompt(92, 9), prompt(93, 12)
    greedy = SamplingParams(10, **GREEDY)
    ref = [alone(engine_for(models, kind, max_batch=1), ids, greedy) for ids in (a_ids, b_ids, c_ids)]
    a, b, c = schedule(engine, [(0, a_ids, greedy, None), (4, b_ids, greedy, None), (5, c_ids, greedy, None)])
    assert (a.reused, b.reused, c.reused) == (0, 15, 0)
    assert b.slot.index != a.slot.index
    assert [a.seen, b.seen, c.seen] == ref
