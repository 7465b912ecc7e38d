"""Anthropic's Messages API door, through Anthropic's own Python SDK against the real server (a scripted
session for deterministic answers, a thinking template for thinking blocks, the tiny model for sampling):
messages.create, messages.stream with the full event sequence, a forced tool_use and a tool_result round trip,
output_config.format, stop_sequences, count_tokens equal to usage.input_tokens, x-api-key auth, Anthropic's
error shape and status codes. Every body and event is validated against the SDK's published schema."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import anthropic
import httpx
import jsonschema
import pytest

from api_helpers import fake_server_args, serve, tiny_server_args

KEY = "sk-ant-test"
MODEL = "fake-model"
SCHEMA = Path(__file__).resolve().parent / "data" / "anthropic" / "messages.schema.json"
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft202012Validator({"$schema": schema["$schema"], "$defs": schema["$defs"],
                                            "$ref": f"#/$defs/{name}"})


def valid(body: dict, name: str) -> dict:
    _validator(name).validate(body)
    return body


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with serve(fake_server_args(tiny_model_dir, "--api_key", KEY), tmp_path_factory.mktemp("anthropic")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0)


def post(server, body: dict, path: str = "/v1/messages", key: str = KEY) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"x-api-key": key}, timeout=60)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_a_message_is_answered_with_text_end_turn_and_usage(client, server):
    m = client.messages.create(model=MODEL, max_tokens=64, messages=user("count"), system="Be brief.")
    assert m.content[0].type == "text" and m.content[0].text == "one two three four five six seven eight nine ten"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0
    valid(post(server, {"model": MODEL, "max_tokens": 64, "messages": user("count")}).json(), "Message")


def test_max_tokens_and_stop_sequences_give_their_stop_reasons(client):
    cut = client.messages.create(model=MODEL, max_tokens=3, messages=user("count"))
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    stopped = client.messages.create(model=MODEL, max_tokens=64, messages=user("count"), stop_sequences=[" four"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " four"
    assert stopped.content[0].text == "one two three"


def test_count_tokens_equals_the_answers_input_tokens(client, server):
    body = dict(model=MODEL, messages=user("count"), system="Be brief.", tools=[WEATHER])
    counted = client.messages.count_tokens(**body)
    answered = client.messages.create(max_tokens=16, **body)
    assert counted.input_tokens == answered.usage.input_tokens > 0
    valid(post(server, body, "/v1/messages/count_tokens").json(), "MessageTokensCount")


def test_the_stream_sends_anthropics_event_sequence(client, server):
    with client.messages.stream(model=MODEL, max_tokens=64, messages=user("count")) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert final.content[0].text.startswith("one two") and final.stop_reason == "end_turn"
    with httpx.stream("POST", server.url + "/v1/messages", headers={"x-api-key": KEY}, timeout=60,
                      json={"model": MODEL, "max_tokens": 64, "messages": user("count"), "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    events = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in datas] == events  # the event line names the data's type
    assert events[:3] == ["message_start", "ping", "content_block_start"]
    assert set(events[3:-3]) == {"content_block_delta"} and events[-3:] == ["content_block_stop", "message_delta",
                                                                                "message_stop"]
    assert datas[-2]["delta"]["stop_reason"] == "end_turn" and datas[-2]["usage"]["output_tokens"] > 0
    for d in datas:  # ping is outside the SDK's event union: the SDK skips it, and so does this check
        assert d == {"type": "ping"} or valid(d, "RawMessageStreamEvent")
    assert kinds[0] == "message_start" and "content_block_delta" in kinds


def test_a_forced_tool_use_then_a_tool_result_round_trip(client):
    m = client.messages.create(model=MODEL, max_tokens=64, messages=user("weather tags"), tools=[WEATHER],
                               tool_choice={"type": "tool", "name": "get_weather"})
    assert m.stop_reason == "tool_use"
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris"} and isinstance(call.input, dict)
    answer = client.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER], messages=[
        {"role": "user", "content": "weather tags"},
        {"role": "assistant", "content": [c.model_dump() for c in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]}])
    assert answer.content[0].text == "The tool says sunny, 21 C" and answer.stop_reason == "end_turn"


def test_a_streamed_tool_use_sends_its_input_as_json_deltas(client):
    with client.messages.stream(model=MODEL, max_tokens=64, messages=user("weather tags"), tools=[WEATHER],
                                tool_choice={"type": "any"}) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas and final.stop_reason == "tool_use"
    assert final.content[-1].input == {"city": "Paris"}


def test_output_config_format_gives_json_with_exactly_the_schemas_keys(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city", "days"], "additionalProperties": False}
    m = client.messages.create(model=MODEL, max_tokens=64, messages=user("json object"),
                               output_config={"format": {"type": "json_schema", "schema": schema}})
    assert set(json.loads(m.content[0].text)) == {"city", "days"}


@pytest.mark.parametrize("body,param", [
    ({"messages": user("hi")}, "max_tokens"),
    ({"max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}, "messages"),
    ({"max_tokens": 8, "messages": user("hi"), "mcp_servers": []}, "mcp_servers"),
    ({"max_tokens": 8, "messages": user("hi"), "definitely_not_a_field": 1}, "definitely_not_a_field"),
    ({"max_tokens": 8, "messages": user("hi"), "temperature": 1.5}, "temperature"),
])
def test_bad_requests_are_400_in_anthropics_shape(client, server, body, param):
    if "max_tokens" in body:  # the SDK itself refuses to send a request without max_tokens
        known = {k: body[k] for k in ("max_tokens", "messages")}
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.create(model=MODEL, **known, extra_body={k: v for k, v in body.items() if k not in known})
        assert e.value.status_code == 400
    r = post(server, {"model": MODEL, **body})
    error = valid(r.json(), "ErrorResponse")
    assert r.status_code == 400 and error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"]


def test_a_wrong_key_raises_authentication_error_and_bearer_works_too(server):
    wrong = anthropic.Anthropic(base_url=server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=MODEL, max_tokens=8, messages=user("hi"))
    r = post(server, {"model": MODEL, "max_tokens": 8, "messages": user("hi")}, key="sk-wrong")
    assert r.status_code == 401 and valid(r.json(), "ErrorResponse")["error"]["type"] == "authentication_error"
    bearer = httpx.post(server.url + "/v1/messages", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                        json={"model": MODEL, "max_tokens": 8, "messages": user("count")})
    assert bearer.status_code == 200


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-none", max_tokens=8, messages=user("hi"))


def test_metrics_count_messages_requests(client, server):
    client.messages.create(model=MODEL, max_tokens=8, messages=user("count"))
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'endpoint="/v1/messages",status="200"' in text


@pytest.fixture(scope="module")
def thinking_server(make_tiny, tmp_path_factory):
    model = make_tiny(model_type="qwen3", thinking=True)
    with serve(fake_server_args(model), tmp_path_factory.mktemp("anthropic-thinking")) as s:
        yield s


def test_thinking_comes_back_as_a_thinking_block_before_the_text(thinking_server, server):
    c = anthropic.Anthropic(base_url=thinking_server.url, api_key="none", max_retries=0)
    m = c.messages.create(model=MODEL, max_tokens=64, messages=user("think"),
                          thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "Let me see." and m.content[1].text == "The answer is 4."
    off = c.messages.create(model=MODEL, max_tokens=64, messages=user("think"), thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"]
    with c.messages.stream(model=MODEL, max_tokens=64, messages=user("think"),
                           thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas.index("thinking_delta") < deltas.index("text_delta")
    assert final.content[0].thinking == "Let me see."
    # A template without a thinking switch refuses to turn thinking on, naming the field.
    r = post(server, {"model": MODEL, "max_tokens": 8, "messages": user("hi"), "thinking": {"type": "enabled",
                                                                                              "budget_tokens": 64}})
    assert r.status_code == 400 and "thinking" in r.json()["error"]["message"]


def test_temperature_and_top_k_are_read_from_the_body(tiny_model_dir, cpu_onnx_of, tmp_path):
    args = [a for a in tiny_server_args(tiny_model_dir, cpu_onnx_of(tiny_model_dir, 512))
            if a not in ("--kv_cache_method", "basic")]
    with serve(args, tmp_path) as s:
        c = anthropic.Anthropic(base_url=s.url, api_key="none", max_retries=0)

        def text(**extra) -> str:
            m = c.messages.create(model="tiny", max_tokens=16, messages=user("Tell me about the sea."), **extra)
            return m.content[0].text

        greedy = text(extra_body={"temperature": 0})
        assert text(extra_body={"temperature": 1.0, "top_k": 1}) == greedy
        assert {text(extra_body={"temperature": 1.0}) for _ in range(3)} != {greedy}
