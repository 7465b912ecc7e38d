"""POST /v1/responses through the real `openai` package against the real server (tests/fake_api_server.py's
scripted model; the tiny random model's cpu graph for a constrained answer): string and item input,
instructions, streaming in the documented event order, function calls and their outputs, text.format, the
stateless refusals. Every Response object and every stream event is checked against OpenAI's published
schema (tests/data/openai/responses.schema.json)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import httpx
import jsonschema
import openai
import pydantic
import pytest
from transformers import AutoTokenizer

from api_helpers import fake_server_args, prompt_tokens, serve, tiny_server_args, user
from inference import Delta, GenerationStats
from server.errors import APIError
from server.modes import Plain
from server.reading import ChoiceReader
from server.responses_answer import ResponsesAnswer
from structured_helpers import SCHEMAS

SCHEMA = Path(__file__).resolve().parent / "data" / "openai" / "responses.schema.json"
MODEL = "fake-model"
TOOLS = [{"type": "function", "name": "get_weather", "description": "weather in a city", "strict": None,
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
         {"type": "function", "name": "calculate", "parameters": {"type": "object"}}]
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
TEXT_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
            "response.completed"]


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft202012Validator({"$schema": schema["$schema"], "$defs": schema["$defs"],
                                            "$ref": f"#/$defs/{name}"})


@lru_cache(maxsize=None)
def _event_defs() -> dict[str, str]:
    """Each stream event's type -> the name of its schema, read from ResponseStreamEvent's alternatives."""
    defs = json.loads(SCHEMA.read_text())["$defs"]
    out = {}
    for alt in defs["ResponseStreamEvent"]["anyOf"]:
        name = alt["$ref"].rsplit("/", 1)[1]
        out[defs[name]["properties"]["type"]["enum"][0]] = name
    return out


def validate(body: dict, name: str) -> dict:
    _validator(name).validate(body)
    return body


def validate_event(body: dict) -> dict:
    return validate(body, _event_defs()[body["type"]])


def raw_events(server, **body) -> list[dict]:
    """A streamed answer's events, each checked: its `event:` line names its type, and its schema holds."""
    r = httpx.post(server.base_url + "/responses", json={"model": MODEL, "stream": True, **body}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events, name = [], None
    for line in r.text.splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            payload = json.loads(line[5:])
            assert payload["type"] == name
            events.append(validate_event(payload))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with serve(fake_server_args(tiny_model_dir), tmp_path_factory.mktemp("responses")) as s:
        yield s


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def create(client: openai.OpenAI, **body):
    """client.responses.create, its raw body checked against the Response schema; the parsed Response."""
    raw = client.responses.with_raw_response.create(model=MODEL, **body)
    validate(raw.http_response.json(), "Response")
    return raw.parse()


def test_a_string_input_is_the_user_message(client, tokenizer) -> None:
    r = create(client, input="hello there")
    assert r.status == "completed" and r.object == "response" and r.id.startswith("resp_")
    assert r.output_text == "You said: hello there"
    assert [o.type for o in r.output] == ["message"]
    assert r.usage.input_tokens == prompt_tokens(tokenizer, user("hello there"))
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens > r.usage.input_tokens


def test_instructions_are_the_system_message(client, tokenizer) -> None:
    r = create(client, input="hello", instructions="Answer briefly.")
    assert r.instructions == "Answer briefly."
    assert r.usage.input_tokens == prompt_tokens(tokenizer, [{"role": "system", "content": "Answer briefly."},
                                                             *user("hello")])


def test_item_input_with_text_parts_and_an_earlier_turn(client, tokenizer) -> None:
    items = [{"role": "user", "content": "first"},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "You said: first", "annotations": []}]},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "second"}, {"type": "input_text", "text": "part"}]}]
    r = create(client, input=items)
    assert r.output_text == "You said: second\npart"
    chat = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "You said: first"},
            {"role": "user", "content": "second\npart"}]
    assert r.usage.input_tokens == prompt_tokens(tokenizer, chat)


def test_a_stream_sends_the_documented_events_in_order(server) -> None:
    events = raw_events(server, input="count")
    kinds = [e["type"] for e in events]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert kinds == TEXT_EVENTS + ["response.output_text.delta"] * len(deltas) + TEXT_END
    text = "".join(d["delta"] for d in deltas)
    assert text == "one two three four five six seven eight nine ten"
    assert events[-4]["text"] == text and events[-3]["part"]["text"] == text
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output"] == [events[-2]["item"]]
    assert done["id"] == events[0]["response"]["id"] and events[0]["response"]["status"] == "in_progress"
    assert {d["item_id"] for d in deltas} == {events[2]["item"]["id"]}


def test_the_sdk_stream_ends_with_the_final_response(client) -> None:
    with client.responses.stream(model=MODEL, input="chinese") as stream:
        kinds, text = [], ""
        for e in stream:
            kinds.append(e.type)
            if e.type == "response.output_text.delta":
                text += e.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text == final.output_text == "你好，世界！这是一个测试。"
    assert final.usage.output_tokens > 0


def test_a_required_call_and_its_output_round_trip(client) -> None:
    first = create(client, input="weather tags", tools=TOOLS, tool_choice="required")
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    history = [{"role": "user", "content": "weather tags"}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
    second = create(client, input=history, tools=TOOLS)
    assert second.output_text == "The tool says sunny, 21 C"


def test_a_streamed_call_sends_its_arguments_events(server) -> None:
    events = raw_events(server, input="weather tags", tools=TOOLS)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                           "response.function_call_arguments.delta",
                                           "response.function_call_arguments.done", "response.output_item.done",
                                           "response.completed"]
    added, delta, done, item_done, completed = events[2:]
    assert added["item"]["status"] == "in_progress" and added["item"]["arguments"] == ""
    assert json.loads(delta["delta"]) == json.loads(done["arguments"]) == {"city": "Paris"}
    assert delta["item_id"] == done["item_id"] == added["item"]["id"] == item_done["item"]["id"]
    assert completed["response"]["output"] == [item_done["item"]]


def test_parallel_tool_calls_false_gives_one_call(client) -> None:
    both = create(client, input="weather two", tools=TOOLS)
    assert [o.name for o in both.output] == ["get_weather", "calculate"]
    one = create(client, input="weather two", tools=TOOLS, parallel_tool_calls=False)
    assert [o.name for o in one.output if o.type == "function_call"] == ["get_weather"]
    assert one.parallel_tool_calls is False


def test_tool_choice_none_leaves_a_call_as_text(client) -> None:
    r = create(client, input="weather tags", tools=TOOLS, tool_choice="none")
    assert [o.type for o in r.output] == ["message"] and "get_weather" in r.output_text


def test_a_named_tool_choice_calls_that_tool(client) -> None:
    r = create(client, input="weather tags", tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"})
    assert [(o.type, o.name) for o in r.output] == [("function_call", "get_weather")]
    assert r.tool_choice.name == "get_weather" and [t.name for t in r.tools] == ["get_weather", "calculate"]


def test_text_format_json_schema_gives_exactly_its_keys(client) -> None:
    fmt = {"type": "json_schema", "name": "person", "schema": SCHEMAS["flat"], "strict": True}
    r = create(client, input="a person please", text={"format": fmt})
    answer = json.loads(r.output_text)
    assert set(answer) == {"name", "age"}
    jsonschema.validate(answer, SCHEMAS["flat"])
    assert r.text.format.type == "json_schema" and r.text.format.name == "person"


class Trip(pydantic.BaseModel):
    city: str
    days: int


def test_the_sdk_parses_a_pydantic_text_format(client) -> None:
    r = client.responses.parse(model=MODEL, input="json object", text_format=Trip)
    assert r.output_parsed == Trip(city="Paris", days=3)
    assert r.text.format.type == "json_schema" and r.text.format.name == "Trip"


def test_text_format_json_object_gives_an_object(client) -> None:
    r = create(client, input="json object", text={"format": {"type": "json_object"}})
    assert json.loads(r.output_text) == {"city": "Paris", "days": 3} and r.text.format.type == "json_object"


def test_max_output_tokens_cuts_an_incomplete_response(client, server) -> None:
    r = create(client, input="count", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.max_output_tokens == 3
    events = raw_events(server, input="count", max_output_tokens=3)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-2]["item"]["status"] == "incomplete"


def test_documented_no_ops_are_accepted(client) -> None:
    r = create(client, input="hello", store=False, metadata={"team": "a"}, user="u-1", service_tier="auto",
               truncation="disabled", prompt_cache_key="k")
    assert r.store is False and r.metadata == {"team": "a"} and r.truncation == "disabled"
    assert r.output_text == "You said: hello"


@pytest.mark.parametrize("body, param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"truncation": "auto"}, "truncation"),
    ({"frequency_penalty": 1.0}, "frequency_penalty"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0.content.0.text"),
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"max_output_tokens": 10 ** 6}, "max_output_tokens"),
    ({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, "text.format.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),  # the tiny model's template has no thinking switch
])
def test_refusals_name_the_param(client, server, body, param) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hello", extra_body=body)
    assert e.value.status_code == 400 and e.value.param == param
    raw = httpx.post(server.base_url + "/responses", json={"model": MODEL, "input": "hello", **body}, timeout=60)
    validate(raw.json(), "ErrorResponse")


@pytest.mark.parametrize("body, param, fragment", [
    ({"text": {"format": {"type": "json_schema", "name": "bad", "schema": {"type": "frobnicate"}}}},
     "text.format", "text.format"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "frobnicate"}}], "tool_choice": "required"},
     "tools", "tools[0].parameters"),
])
def test_a_constraint_that_cannot_compile_is_named_in_responses_terms(server, body, param, fragment) -> None:
    r = httpx.post(server.base_url + "/responses", json={"model": MODEL, "input": "hi", **body}, timeout=60)
    assert r.status_code == 400, r.text
    error = validate(r.json(), "ErrorResponse")["error"]
    assert error["param"] == param and fragment in error["message"]
    assert "response_format" not in error["message"] and "function." not in error["message"]


def test_an_unknown_model_is_a_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="gpt-nothing", input="hello")
    assert e.value.param == "model"


def test_metrics_count_responses_requests(client, server) -> None:
    create(client, input="hello")
    text = httpx.get(server.url + "/metrics").text
    assert 'endpoint="/v1/responses",status="200"' in text


@pytest.fixture(scope="module")
def thinking_client(make_tiny, tmp_path_factory):
    """The scripted model behind a Qwen3-style template that has the enable_thinking switch."""
    with serve(fake_server_args(make_tiny(thinking=True)), tmp_path_factory.mktemp("responses-think")) as s:
        yield s, openai.OpenAI(base_url=s.base_url, api_key="unused", max_retries=0)


@pytest.mark.parametrize("effort", ["high", None])  # None: the template's default, which thinks
def test_thinking_is_a_reasoning_item_before_the_message(thinking_client, effort) -> None:
    _, client = thinking_client
    r = create(client, input="think", reasoning={"effort": effort})
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and [c.text.strip() for c in reasoning.content] == ["Let me see."]
    assert message.type == "message" and r.output_text == "The answer is 4."
    assert 0 < r.usage.output_tokens_details.reasoning_tokens < r.usage.output_tokens
    assert r.reasoning.effort == effort and reasoning.summary == []


def test_a_summary_asked_for_is_the_thinking(thinking_client) -> None:
    server, client = thinking_client
    r = create(client, input="think", reasoning={"effort": "high", "summary": "auto"})
    assert [s.text for s in r.output[0].summary] == [c.text for c in r.output[0].content]
    assert r.output[0].summary[0].text.strip() == "Let me see."
    events = raw_events(server, input="think", reasoning={"effort": "high", "summary": "detailed"})
    kinds = [e["type"] for e in events]
    at = kinds.index("response.reasoning_summary_part.added")
    assert kinds[at:at + 5] == ["response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
                                "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
                                "response.output_item.done"]
    assert events[at + 2]["text"] == events[at + 4]["item"]["summary"][0]["text"]


def test_effort_none_switches_thinking_off(thinking_client) -> None:
    _, client = thinking_client
    r = create(client, input="think", reasoning={"effort": "none"})
    assert [o.type for o in r.output] == ["message"] and r.output_text == "The answer is 4."
    assert r.usage.output_tokens_details.reasoning_tokens == 0


def test_streamed_thinking_then_a_required_call(thinking_client) -> None:
    server, _ = thinking_client
    events = raw_events(server, input="think weather", tools=TOOLS, tool_choice="required",
                        reasoning={"effort": "medium"})
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.reasoning_text.delta")
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.reasoning_text.delta"] * deltas,
                     "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    reasoning, call = events[-1]["response"]["output"]
    assert reasoning["content"][0]["text"].strip() == "The weather needs a tool."
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}


def test_thinking_before_a_json_schema_answer(thinking_client) -> None:
    _, client = thinking_client
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city", "days"], "additionalProperties": False}
    r = create(client, input="think json", reasoning={"effort": "low"},
               text={"format": {"type": "json_schema", "name": "trip", "schema": schema}})
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert json.loads(r.output_text) == {"city": "Paris", "days": 3}


def _delta(text: str, reason: str | None = None) -> Delta:
    stats = GenerationStats(10, 5, 0, 0.1, 10.0, 10.0) if reason else None
    return Delta(text, 1, reason, stats)


def _head() -> dict:
    return {"id": "resp_1", "object": "response", "created_at": 0, "status": "in_progress", "completed_at": None,
            "error": None, "incomplete_details": None, "instructions": None, "model": "m", "output": [],
            "parallel_tool_calls": True, "tools": [], "tool_choice": "auto", "temperature": 1.0, "top_p": 1.0,
            "metadata": {}}


def test_thinking_comes_out_as_a_reasoning_item_before_the_message() -> None:
    answer = ResponsesAnswer(_head(), ChoiceReader(Plain(), thinks=True), lambda text: len(text.split()))
    events = answer.opening() + answer.feed(0, _delta("<think>two words</think>"))
    events += answer.feed(0, _delta("Hi.", "stop")) + answer.closing()
    bodies = [validate_event(json.loads(e["data"])) for e in events]
    assert [b["type"] for b in bodies] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done", *TEXT_EVENTS[2:], "response.output_text.delta", *TEXT_END]
    result = validate(answer.result(), "Response")
    reasoning, message = result["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "two words"}]
    assert message["content"][0]["text"] == "Hi."
    assert result["usage"]["output_tokens_details"]["reasoning_tokens"] == 2


def test_a_failure_mid_stream_is_a_failed_response_event() -> None:
    answer = ResponsesAnswer(_head(), ChoiceReader(Plain()), len)
    answer.opening()
    answer.feed(0, _delta("partial"))
    failed = validate_event(json.loads(answer.error_event(APIError(503, "The engine stopped."))["data"]))
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "The engine stopped."}


# ---- the tiny random model's cpu graph ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir, cpu_onnx_of, tmp_path_factory):
    onnx = cpu_onnx_of(tiny_model_dir, 1024)
    # the cpu graph reads only the filled part of its cache: api.py refuses a cache method for it
    args = [a for a in tiny_server_args(tiny_model_dir, onnx) if a not in ("--kv_cache_method", "basic")]
    with serve(args, tmp_path_factory.mktemp("responses-tiny")) as s:
        yield s


def test_tiny_model_streams_a_schema_answer(tiny_server) -> None:
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key="none", max_retries=0)
    fmt = {"type": "json_schema", "name": "order", "schema": SCHEMAS["nested"], "strict": True}
    with client.responses.stream(model="tiny", input="An order, as JSON.", text={"format": fmt},
                                 max_output_tokens=300, temperature=0) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == text
    jsonschema.validate(json.loads(text), SCHEMAS["nested"])
