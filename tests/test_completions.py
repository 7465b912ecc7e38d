"""POST /v1/completions (the legacy text endpoint) for real on the tiny model: raw prompts (no chat
template), a list of prompts with n choices each, streamed text equal to plain, echo, legacy logprobs,
the default max_tokens, and what it refuses by name (suffix, token-id prompts, echo with logprobs,
best_of). Every body is checked against OpenAI's CreateCompletionResponse."""
from __future__ import annotations

import httpx
import pytest
from transformers import AutoTokenizer

from api_helpers import serve, sse_chunks, tiny_server_args, validate, validate_completion_chunk

MODEL = "tiny"
PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_onnx_of, tmp_path_factory):
    args = tiny_server_args(tiny_model_dir, tiny_onnx_of(tiny_model_dir, 512), "--max_batch", "2")
    with serve(args, tmp_path_factory.mktemp("completions")) as s:
        yield s


def complete(client, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("prompt", PROMPT)
    return client.completions.create(model=MODEL, **kw)


def post(server, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + "/completions", json={"model": MODEL, **body}, timeout=120)


def test_plain_completion_of_a_raw_prompt(client, tiny_model_dir):
    r = complete(client, max_tokens=8)
    validate(r.model_dump(exclude_unset=True), "CreateCompletionResponse")
    assert r.object == "text_completion" and len(r.choices) == 1 and r.choices[0].finish_reason == "length"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    # no chat template: the prompt is exactly the text's tokens
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT, add_special_tokens=False))
    assert r.usage.completion_tokens == 8


def test_default_max_tokens_is_openais_16(client):
    r = complete(client)
    assert r.usage.completion_tokens == 16 or (r.usage.completion_tokens < 16 and r.choices[0].finish_reason == "stop")


def test_streamed_text_equals_plain(client):
    plain = complete(client, max_tokens=12)
    chunks = list(complete(client, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    for c in chunks:
        validate_completion_chunk(c.model_dump(exclude_unset=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_a_list_of_prompts_with_n_choices_each(client):
    prompts = [PROMPT, "The sea is"]
    r = complete(client, prompt=prompts, n=2, max_tokens=6)
    validate(r.model_dump(exclude_unset=True), "CreateCompletionResponse")
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    alone = [complete(client, prompt=p, max_tokens=6) for p in prompts]
    # greedy: both choices of a prompt are its lone answer
    assert [c.text for c in r.choices] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
    assert r.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert r.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)


def test_n_choices_with_a_seed_equal_separate_requests(client):
    kw = dict(max_tokens=8, temperature=1.3, seed=99)
    r = complete(client, n=3, **kw)
    alone = [complete(client, **{**kw, "seed": 99 + i}).choices[0].text for i in range(3)]
    assert [c.text for c in r.choices] == alone and len(set(alone)) > 1


def test_echo_puts_the_prompt_first(client, server):
    plain = complete(client, max_tokens=6)
    echoed = complete(client, max_tokens=6, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    r = httpx.post(server.base_url + "/completions", timeout=120,
                   json={"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "echo": True, "stream": True})
    chunks = [c for c in sse_chunks(r.text) if c != "[DONE]"]
    for c in chunks:
        validate_completion_chunk(c)
    assert chunks[0]["choices"][0]["text"] == PROMPT
    assert "".join(c["choices"][0]["text"] for c in chunks) == echoed.choices[0].text


def test_legacy_logprobs(client):
    r = complete(client, max_tokens=10, logprobs=3)
    body = validate(r.model_dump(exclude_unset=True), "CreateCompletionResponse")
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 10
    assert "".join(lp["tokens"]) == body["choices"][0]["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(10)]
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert 1 <= len(top) <= 3 and value <= 0
        assert max(top.values()) == value and top[token] == value  # greedy: the chosen token is the likeliest
    streamed = list(complete(client, max_tokens=10, logprobs=3, stream=True))
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in streamed if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert tokens == lp["tokens"] and offsets == lp["text_offset"]


@pytest.mark.parametrize("body,param", [
    ({"suffix": "return a + b"}, "suffix"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": [[1, 2], [3]]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"echo": True, "logprobs": 1}, "echo"),
    ({"logprobs": 6}, "logprobs"),
    ({"best_of": 3}, "best_of"),
    ({"n": 0}, "n"),
    ({"mirostat": 2}, "mirostat"),
    ({"made_up": True}, "made_up"),
    ({"logit_bias": {"-1": 5}}, "logit_bias"),
])
def test_refused_by_name(server, body, param):
    r = post(server, {"prompt": PROMPT, **body})
    assert r.status_code == 400, r.text
    assert validate(r.json(), "ErrorResponse")["error"]["param"] == param


def test_penalties_and_bias_apply_here_too(client, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    word = tokenizer.encode(" the", add_special_tokens=False)
    assert complete(client, max_tokens=4, logit_bias={str(word[0]): 100}).choices[0].text == " the" * 4

    def repeats(r):
        t = r.choices[0].logprobs.tokens
        return len(t) - len(set(t))

    plain = complete(client, prompt="la la la la", max_tokens=40, logprobs=0)
    assert repeats(plain) > 5
    assert repeats(complete(client, prompt="la la la la", max_tokens=40, logprobs=0, frequency_penalty=2)) < repeats(plain)
