"""The real server process and Inference on a ScriptedSession (tests/scripted_session.py), driven through
the `openai` package: response shapes, streaming, stop/length, both tool-call styles, queueing, disconnects."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from api_helpers import ROOT, fake_server_args, prompt_tokens, serve, sse_chunks, validate, user
from scripted_session import reply_to

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "calculate", "parameters": {"type": "object"}}}]
MODEL = "fake-model"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with serve(fake_server_args(tiny_model_dir), tmp_path_factory.mktemp("fake")) as s:
        yield s


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def first_tokens(tokenizer, text: str, n: int) -> str:
    """The text of the first n tokens the scripted model writes for this reply."""
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n])


def ask(server, **body) -> dict:
    r = httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return validate(r.json(), "CreateChatCompletionResponse")


def ask_stream(server, **body) -> list:
    r = httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, "stream": True, **body}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    chunks = sse_chunks(r.text)
    assert chunks[-1] == "[DONE]"
    for c in chunks[:-1]:
        validate(c, "CreateChatCompletionStreamResponse")
    return chunks[:-1]


def test_models_lists_the_served_id(client, server) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    validate(httpx.get(server.base_url + "/models").json(), "ListModelsResponse")
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_plain_answer_and_usage(server, tokenizer) -> None:
    body = ask(server, messages=user("hello there"))
    msg = body["choices"][0]["message"]
    assert msg["content"] == "You said: hello there" and body["choices"][0]["finish_reason"] == "stop"
    prompt = prompt_tokens(tokenizer, user("hello there"))
    answer = len(tokenizer.encode(msg["content"], add_special_tokens=False))
    use = body["usage"]
    assert (use["prompt_tokens"], use["completion_tokens"]) == (prompt, answer)
    assert use["total_tokens"] == prompt + answer


def test_content_parts_and_developer_role_are_read(server) -> None:
    body = ask(server, messages=[{"role": "developer", "content": "be brief"},
                                 {"role": "user", "content": [{"type": "text", "text": "part one"},
                                                              {"type": "text", "text": "part two"}]}])
    assert body["choices"][0]["message"]["content"] == "You said: part one\npart two"


def test_stream_equals_plain_and_first_chunk_has_role(client) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=user("chinese"))
    chunks = list(client.chat.completions.create(model=MODEL, messages=user("chinese"), stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content == "你好，世界！这是一个测试。"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stream_without_usage_has_no_usage_key(server) -> None:
    chunks = ask_stream(server, messages=user("count"))
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_strings_are_cut_and_not_returned(client) -> None:
    r = client.chat.completions.create(model=MODEL, messages=user("count"), stop=["four", "nine"])
    assert r.choices[0].message.content == "one two three " and r.choices[0].finish_reason == "stop"
    s = client.chat.completions.create(model=MODEL, messages=user("count"), stop="four", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == "one two three "


def test_max_tokens_ends_with_length(client, tokenizer) -> None:
    count = reply_to("user", "count")
    for field in ("max_tokens", "max_completion_tokens"):
        r = client.chat.completions.create(model=MODEL, messages=user("count"), **{field: 5})
        assert r.choices[0].message.content == first_tokens(tokenizer, count, 5)
        assert count.startswith(r.choices[0].message.content) and r.choices[0].message.content != count
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


@pytest.mark.parametrize("prompt", ["weather tags", "weather bare", "weather fenced"])
def test_tools_answer_as_tool_calls(client, prompt) -> None:
    r = client.chat.completions.create(model=MODEL, messages=user(prompt), tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "北京")


def test_tool_calls_validate_against_openai_schema(server) -> None:
    body = ask(server, messages=user("weather two"), tools=TOOLS)
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "calculate"]
    chunks = ask_stream(server, messages=user("weather two"), tools=TOOLS)
    streamed = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(t["index"], t["function"]["name"]) for t in streamed] == [(0, "get_weather"), (1, "calculate")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_tool_call_via_openai_client(client) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=user("weather fenced"), tools=TOOLS,
                                                 stream=True))
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and json.loads(calls[0].function.arguments) == {"city": "北京"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "```" not in text and "get_weather" not in text


@pytest.mark.parametrize("prompt, never", [("weather broken", '"city": \n'), ("weather unknown", "launch_rocket")])
def test_a_malformed_or_unknown_call_cannot_get_out_under_auto(client, prompt, never) -> None:
    # Once the model opens <tool_call>, the grammar (engine/constraint.py) allows only a well-formed call to an
    # offered tool: the scripted model's broken call is not written as scripted.
    r = client.chat.completions.create(model=MODEL, messages=user(prompt), tools=TOOLS, max_tokens=40)
    message = r.choices[0].message
    written = (message.content or "") + "".join(c.function.name + c.function.arguments
                                                for c in message.tool_calls or [])
    assert written.startswith("<tool_call>") and never not in written


def test_tool_choice_none_and_no_tools_leave_text_alone(client) -> None:
    r = client.chat.completions.create(model=MODEL, messages=user("weather bare"), tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and "get_weather" in r.choices[0].message.content
    r = client.chat.completions.create(model=MODEL, messages=user("weather bare"))
    assert r.choices[0].message.tool_calls is None


def test_code_block_is_text_when_tools_are_offered(client) -> None:
    r = client.chat.completions.create(model=MODEL, messages=user("code please"), tools=TOOLS)
    assert r.choices[0].message.content == "Here:\n```python\nprint('hi')\n```\nDone."


def test_tool_result_round_trip(client) -> None:
    first = client.chat.completions.create(model=MODEL, messages=user("weather tags"), tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages = user("weather tags") + [first.choices[0].message.model_dump(exclude_none=True),
                                       {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert final.choices[0].message.content == "The tool says sunny"
    # the assistant's call was rendered back into the prompt with its arguments as an object
    assert final.usage.prompt_tokens_details.cached_tokens > 0


def test_legacy_functions_answer_as_function_call(client, server) -> None:
    fns = [t["function"] for t in TOOLS]
    r = client.chat.completions.create(model=MODEL, messages=user("weather react"), functions=fns)
    assert r.choices[0].finish_reason == "function_call"
    assert r.choices[0].message.function_call.name == "get_weather"
    assert json.loads(r.choices[0].message.function_call.arguments) == {"city": "Paris"}
    chunks = ask_stream(server, messages=user("weather react"), functions=fns)
    assert [c["choices"][0]["delta"]["function_call"]["name"] for c in chunks
            if "function_call" in c["choices"][0]["delta"]] == ["get_weather"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"
    follow = user("weather react") + [{"role": "assistant", "content": None, "function_call":
                                       {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                                      {"role": "function", "name": "get_weather", "content": "rainy"}]
    final = client.chat.completions.create(model=MODEL, messages=follow, functions=fns)
    assert final.choices[0].message.content == "The tool says rainy"


def test_twenty_concurrent_clients_get_their_own_answers(client) -> None:
    prompts = [f"client number {i}" for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda p: client.chat.completions.create(
            model=MODEL, messages=user(p)).choices[0].message.content, prompts))
    assert answers == [f"You said: {p}" for p in prompts]


def test_disconnect_mid_stream_stops_generation(server, tokenizer) -> None:
    before = server.wait_idle()
    with httpx.stream("POST", server.base_url + "/chat/completions", timeout=60,
                      json={"model": MODEL, "stream": True, "messages": user("slow")}) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data:"))
        got = "".join(json.loads(next(lines)[5:])["choices"][0]["delta"]["content"] for _ in range(10))
    assert got == first_tokens(tokenizer, reply_to("user", "slow"), 9)  # the role chunk, then one token per chunk
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"]


def test_health_answers_during_a_long_generation(server) -> None:
    done = threading.Event()

    def long_request() -> None:
        httpx.post(server.base_url + "/chat/completions", json={"messages": user("slow"), "max_tokens": 400},
                   timeout=60)
        done.set()

    t = threading.Thread(target=long_request)
    t.start()
    seen_busy = False
    while not done.is_set() and not seen_busy:
        seen_busy = server.health()["busy"]
    t.join(timeout=60)
    assert seen_busy


@pytest.mark.parametrize("script,extra", [("openai_normal_client.py", []), ("openai_stream_client.py", []),
                                          ("openai_function_call.py", ["--prompt", "weather tags"]),
                                          ("openai_function_call.py", ["--style", "functions",
                                                                       "--prompt", "weather react"])])
def test_example_clients_run(server, script, extra) -> None:
    out = subprocess.run([sys.executable, f"client/{script}", "--base_url", server.base_url, *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if script == "openai_function_call.py":
        assert "tool call: get_weather" in out.stdout and "assistant: The tool says" in out.stdout
    else:
        assert "You said:" in out.stdout and "[finish: stop" in out.stdout


def test_client_without_server_prints_one_line(tmp_path) -> None:
    out = subprocess.run([sys.executable, "client/openai_normal_client.py", "--base_url", "http://127.0.0.1:9/v1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: cannot reach the server")
    assert "Traceback" not in out.stderr


def test_client_giving_up_on_a_plain_request_stops_generation(server) -> None:
    before = server.wait_idle()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/chat/completions", json={"messages": user("slow")}, timeout=1.0)
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"]
