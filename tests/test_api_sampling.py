"""api.py for real on the tiny model, through the openai package: logprobs (plain and streamed, the
greedy token's equal to the log-softmax of the logits the engine computes for that prompt), n choices with
a seed (reproducible, equal to separate requests with the derived seeds), presence/frequency penalties and
logit_bias moving the answer the documented way, and the fields we refuse by name."""
from __future__ import annotations

import httpx
import numpy as np
import pytest

from api_helpers import serve, tiny_server_args, validate, user
from config import InferenceConfig
from engine.sampling import log_softmax
from inference import Inference
from server.logprobs import byte_level_alphabet
from transformers import AutoTokenizer

MODEL = "tiny"
KV = 512


@pytest.fixture(scope="module")
def onnx(tiny_model_dir, tiny_onnx_of):
    return tiny_onnx_of(tiny_model_dir, KV)


@pytest.fixture(scope="module")
def server(tiny_model_dir, onnx, tmp_path_factory):
    with serve(tiny_server_args(tiny_model_dir, onnx, "--max_batch", "2"), tmp_path_factory.mktemp("api-sampling")) as s:
        yield s


def chat(client, text: str, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=user(text), **kw)


def post(server, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, **body}, timeout=120)


def test_logprobs_of_greedy_tokens_are_the_models_log_softmax(client, tiny_model_dir, onnx):
    r = chat(client, "Tell me about the sea.", max_tokens=10, logprobs=True, top_logprobs=4)
    body = validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == r.usage.completion_tokens == 10
    assert b"".join(bytes(e["bytes"]) for e in content).decode() == r.choices[0].message.content
    for e in content:
        tops = [t["logprob"] for t in e["top_logprobs"]]
        assert len(tops) == 4 and tops == sorted(tops, reverse=True)
        assert e["top_logprobs"][0]["token"] == e["token"] and e["top_logprobs"][0]["logprob"] == e["logprob"]
    # The first token's logprob against the model run here on the same prompt.
    engine = Inference(InferenceConfig.create(str(tiny_model_dir), session_type="onnx", onnx_model_path=str(onnx),
                                              kv_cache_length=KV, kv_cache_method="basic", cpu_thread=1))
    ids = engine.apply_chat_template(user("Tell me about the sea."))
    lp = log_softmax(engine.session.run(np.array([ids], np.int64)))
    first = int(np.argmax(lp))
    assert bytes(content[0]["bytes"]) == engine.tokenizer.convert_tokens_to_string(
        [engine.tokenizer.convert_ids_to_tokens(first)]).encode()
    assert content[0]["logprob"] == pytest.approx(lp[first], abs=1e-4)
    assert [t["logprob"] for t in content[0]["top_logprobs"]] == pytest.approx(sorted(lp, reverse=True)[:4], abs=1e-4)


def test_streamed_logprobs_equal_plain_ones(client):
    plain = chat(client, "Write a poem.", max_tokens=12, logprobs=True, top_logprobs=2)
    chunks = list(chat(client, "Write a poem.", max_tokens=12, logprobs=True, top_logprobs=2, stream=True))
    for c in chunks:
        validate(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    want = plain.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in want]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in want], abs=1e-5)


def test_no_logprobs_unless_asked(client):
    r = chat(client, "Hello", max_tokens=3)
    assert r.choices[0].logprobs is None


def test_n_choices_with_a_seed_are_reproducible_and_equal_separate_requests(client, server):
    kw = dict(max_tokens=12, temperature=1.2, seed=1234)
    r = chat(client, "Name a colour.", n=3, **kw)
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    answers = [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]
    assert [c.index for c in r.choices] == [0, 1, 2] and len(set(answers)) > 1
    again = chat(client, "Name a colour.", n=3, **kw)
    assert [c.message.content for c in again.choices] == answers
    alone = [chat(client, "Name a colour.", **{**kw, "seed": 1234 + i}).choices[0].message.content for i in range(3)]
    assert alone == answers
    separate = [chat(client, "Name a colour.", **{**kw, "seed": 1234 + i}).usage for i in range(3)]
    assert r.usage.prompt_tokens == separate[0].prompt_tokens
    assert r.usage.completion_tokens == sum(u.completion_tokens for u in separate)


def test_n_choices_stream_and_more_choices_than_slots(client):
    kw = dict(max_tokens=8, temperature=1.0, seed=7)
    plain = chat(client, "Say something.", n=5, **kw)  # the server has 2 slots: three choices queue
    chunks = list(chat(client, "Say something.", n=5, stream=True, stream_options={"include_usage": True}, **kw))
    texts = [""] * 5
    for c in chunks:
        validate(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in plain.choices]
    reasons = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert len(reasons) == 5
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def tokens_of(response) -> list[str]:
    return [e.token for e in response.choices[0].logprobs.content]


def test_penalties_lower_repeats(client):
    def repeats(r):
        t = tokens_of(r)
        return len(t) - len(set(t))

    plain = chat(client, "Repeat after me: la la la", max_tokens=40, logprobs=True)
    assert repeats(plain) > 5  # the tiny random model loops: room for a penalty to show
    assert repeats(chat(client, "Repeat after me: la la la", max_tokens=40, logprobs=True, frequency_penalty=2)) \
        < repeats(plain)
    assert repeats(chat(client, "Repeat after me: la la la", max_tokens=40, logprobs=True, presence_penalty=2)) \
        < repeats(plain)


def test_logit_bias_bans_and_forces(client, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    plain = chat(client, "Hello there", max_tokens=6, logprobs=True)
    first = plain.choices[0].logprobs.content[0]
    char_of = {b: c for c, b in byte_level_alphabet().items()}
    first_id = tokenizer.convert_tokens_to_ids("".join(char_of[b] for b in first.bytes))
    banned = chat(client, "Hello there", max_tokens=6, logprobs=True, logit_bias={str(first_id): -100})
    assert banned.choices[0].logprobs.content[0].token != first.token
    word = tokenizer.encode(" the", add_special_tokens=False)
    assert len(word) == 1
    forced = chat(client, "Hello there", max_tokens=5, logit_bias={str(word[0]): 100})
    assert forced.choices[0].message.content == " the" * 5


@pytest.mark.parametrize("field,value", [
    ("mirostat", 2), ("n_predict", 8), ("typical_p", 0.9), ("a_field_nobody_defines", 1),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]), ("prediction", {"type": "content", "content": "x"}),
    ("reasoning_effort", "low"), ("web_search_options", {}), ("verbosity", "low"),
])
def test_fields_that_would_change_the_answer_are_refused_by_name(server, field, value):
    r = post(server, {"messages": user("hi"), field: value})
    assert r.status_code == 400, r.text
    assert validate(r.json(), "ErrorResponse")["error"]["param"] == field


@pytest.mark.parametrize("body,param", [
    ({"n": 0}, "n"), ({"n": 17}, "n"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"999999999": 1}}, "logit_bias"), ({"logit_bias": {"5": 101}}, "logit_bias"),
])
def test_bad_sampling_options_are_400(server, body, param):
    r = post(server, {"messages": user("hi"), **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_fields_that_change_nothing_are_accepted(server):
    r = post(server, {"messages": user("hi"), "max_tokens": 2, "user": "u1", "metadata": {"k": "v"}, "store": False,
                      "service_tier": "auto", "parallel_tool_calls": True, "modalities": ["text"],
                      "safety_identifier": "x", "prompt_cache_key": "y"})
    assert r.status_code == 200, r.text
