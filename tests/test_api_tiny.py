"""api.py for real (uvicorn subprocess, ONNX session) on the tiny random model, through the openai
package: plain vs streamed answers, usage counts, stop, length, prefix reuse, concurrency, disconnects."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from api_helpers import ROOT, prompt_tokens, serve, tiny_server_args, validate, user

MODEL = "tiny"
MAX_INPUT = 1000


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_onnx_of, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny-api")
    args = tiny_server_args(tiny_model_dir, tiny_onnx_of(tiny_model_dir, 2048), "--max_input_length", str(MAX_INPUT))
    with serve(args, tmp) as s:
        yield s


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def greedy(client, messages, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kw)


def test_ready_line_and_model_id(server, client) -> None:
    assert f"Uvicorn running on http://127.0.0.1:{server.port}" in server.log.read_text()
    assert client.models.list().data[0].id == MODEL


def test_bad_flags_exit_2_with_one_line(tiny_model_dir) -> None:
    out = subprocess.run([sys.executable, "api.py", "--hf_model_dir", str(tiny_model_dir), "--onnx_model_path",
                          "/nonexistent.onnx"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "/nonexistent.onnx" in out.stderr


@pytest.mark.parametrize("prompt", ["Write a python function that adds two numbers.", "你好，今天天气怎么样？"])
def test_streamed_text_equals_plain_text_under_greedy(client, server, prompt) -> None:
    plain = greedy(client, user(prompt), max_tokens=40)
    validate(plain.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    chunks = list(greedy(client, user(prompt), max_tokens=40, stream=True, stream_options={"include_usage": True}))
    for c in chunks:
        validate(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_usage_counts_equal_the_tokenizer(client, tokenizer) -> None:
    messages = [{"role": "system", "content": "Be short."}, *user("Count the words in this sentence.")]
    r = greedy(client, messages, max_tokens=7)
    assert r.usage.prompt_tokens == prompt_tokens(tokenizer, messages)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_tools_are_rendered_through_the_template(client, tokenizer) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    r = greedy(client, user("weather in Paris?"), tools=tools, max_tokens=5)
    assert r.usage.prompt_tokens == prompt_tokens(tokenizer, user("weather in Paris?"), tools)
    assert r.usage.prompt_tokens > prompt_tokens(tokenizer, user("weather in Paris?"))


def test_stop_string_cuts_the_answer(client) -> None:
    full = greedy(client, user("Tell me about the sea."), max_tokens=30).choices[0].message.content
    stop = full[6:9]
    assert len(stop) == 3
    cut = greedy(client, user("Tell me about the sea."), max_tokens=30, stop=[stop])
    assert cut.choices[0].message.content == full[:full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_second_turn_reuses_the_prefix_and_answers_the_same(client, tokenizer) -> None:
    first_msgs = user("Please write a python function.")
    first = greedy(client, first_msgs, max_tokens=12)
    turn2 = first_msgs + [{"role": "assistant", "content": first.choices[0].message.content},
                          *user("Now add a docstring.")]
    reused = greedy(client, turn2, max_tokens=12)
    assert reused.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1
    greedy(client, user("Something unrelated, to clear the cache."), max_tokens=3)
    fresh = greedy(client, turn2, max_tokens=12)
    assert fresh.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
    assert fresh.choices[0].message.content == reused.choices[0].message.content


def test_twenty_concurrent_clients_each_get_what_they_get_alone(client) -> None:
    def ask(i: int) -> str:
        r = client.chat.completions.create(model=MODEL, messages=user(f"Question number {i}: say something."),
                                           max_tokens=10, temperature=1.0, seed=i)
        return r.choices[0].message.content

    alone = [ask(i) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        together = list(pool.map(ask, range(20)))
    assert together == alone
    assert len(set(alone)) > 1  # seeds and prompts differ, so a mix-up would show


def test_prompt_longer_than_the_limit_is_400_with_numbers(client, server) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        greedy(client, user("word " * 3000), max_tokens=5)
    assert str(MAX_INPUT) in e.value.message and e.value.code == "context_length_exceeded"
    assert server.health()["status"] == "ok"


def test_disconnect_mid_stream_frees_the_model(server, client) -> None:
    before = server.wait_idle()
    body = {"model": MODEL, "messages": user("Write a very long story."), "max_tokens": 1000, "stream": True,
            "temperature": 1.0, "seed": 3}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=60) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data:"))
        first = [json.loads(next(lines)[5:]) for _ in range(4)]
    assert first[0]["choices"][0]["delta"]["role"] == "assistant"
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"]
    # the model is free and the cache was not left half-written
    assert greedy(client, user("hello"), max_tokens=3).choices[0].finish_reason in ("stop", "length")
