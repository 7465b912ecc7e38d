"""The tool-call parsers, the streaming hold-back and the three modes (plain, tools, legacy functions), on
requests and model outputs written out by hand."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine.constraint import Grammars
from inference import SamplingParams
from server.chat import plan
from server.errors import APIError
from server.reasoning import Thinking
from server.schema import ChatCompletionRequest
from server.toolcall import parse_tool_calls, react
from server.toolcall.stream import ReactStream, ToolStream

NAMES = {"get_weather", "calculate"}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def one_call(text: str) -> tuple[str | None, str, dict]:
    found = parse_tool_calls(text, NAMES)
    assert found is not None and len(found.calls) == 1
    call = found.calls[0]
    return found.content, call.name, json.loads(call.arguments)


def test_qwen_tags_with_text_before() -> None:
    content, name, args = one_call(f"Let me check.\n<tool_call>\n{CALL}\n</tool_call>")
    assert (content, name, args) == ("Let me check.", "get_weather", {"city": "Paris"})


def test_qwen_tags_without_closing_tag() -> None:
    assert one_call(f"<tool_call>\n{CALL}\n")[1:] == ("get_weather", {"city": "Paris"})


def test_qwen_tags_several_calls_get_distinct_ids() -> None:
    second = '{"name": "calculate", "arguments": {"expression": "1+1"}}'
    text = f"<tool_call>{CALL}</tool_call>\n<tool_call>{second}</tool_call>"
    found = parse_tool_calls(text, NAMES)
    assert [c.name for c in found.calls] == ["get_weather", "calculate"]
    assert found.calls[0].id != found.calls[1].id and found.calls[0].id.startswith("call_")
    assert found.content is None


def test_bare_json_object_and_parameters_key() -> None:
    assert one_call(CALL)[1:] == ("get_weather", {"city": "Paris"})
    assert one_call('  {"name": "calculate", "parameters": {"expression": "2*3"}}')[2] == {"expression": "2*3"}


def test_bare_json_arguments_given_as_json_text() -> None:
    assert one_call('{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}')[2] == {"city": "Rome"}


def test_fenced_json_with_chinese_prose() -> None:
    text = '好的，我来调用天气函数：\n```json\n{"name": "get_weather", "arguments": {"city": "北京"}}\n```\n请稍等。'
    content, name, args = one_call(text)
    assert name == "get_weather" and args == {"city": "北京"}
    assert "好的" in content and "请稍等" in content and "```" not in content


@pytest.mark.parametrize("text", [
    "The weather in Paris is sunny.",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',  # truncated JSON
    '<tool_call>{"name": "launch_rocket", "arguments": {}}</tool_call>',  # a tool nobody offered
    '{"name": "Bob", "age": 3}',  # ordinary JSON that merely has a name
    '```python\nprint("hi")\n```',
    '{"name": "get_weather", "arguments": [1, 2]}',  # arguments that are no object
])
def test_text_that_is_not_a_valid_call_stays_text(text: str) -> None:
    assert parse_tool_calls(text, NAMES) is None


def test_react_action_and_final_answer() -> None:
    found = react.parse('Thought: look it up\nAction: get_weather\nAction Input: {"city": "Paris"}\n', NAMES)
    assert found.content is None and found.calls[0].name == "get_weather"
    assert json.loads(found.calls[0].arguments) == {"city": "Paris"}
    assert react.parse("Thought: done\nFinal Answer: It is sunny.", NAMES).content == "It is sunny."
    assert react.parse("Action: rm_rf\nAction Input: {}", NAMES) is None


def test_react_placeholder_action_is_resolved_by_name_or_arguments() -> None:
    args = {"get_weather": {"city"}, "calculate": {"expression"}}
    copied = 'Thought: x\nAction: the tool to call, one of [get_weather, calculate]\nAction Input: {"city": "Paris"}'
    assert react.parse(copied, NAMES, args).calls[0].name == "get_weather"
    assert react.parse(copied, NAMES) is None  # without the parameter names nothing decides between them
    named = "Action: I will use calculate now\nAction Input: {\"expression\": \"6*7\"}"
    assert react.parse(named, NAMES).calls[0].name == "calculate"
    unknown = 'Action: one of [get_weather, calculate]\nAction Input: {"zip": "75001"}'
    assert react.parse(unknown, NAMES, args) is None


def feed_by_char(stream: ToolStream, text: str) -> tuple[str, str, list]:
    shown = "".join(stream.feed(ch) for ch in text)
    tail, calls = stream.finish()
    return shown, tail, calls


def test_stream_passes_plain_text_through_as_it_comes() -> None:
    s = ToolStream(NAMES)
    assert s.feed("Hello") == "Hello" and s.feed(" world") == " world"
    assert s.finish() == ("", [])


def test_stream_holds_a_possible_tag_prefix_then_releases_it() -> None:
    s = ToolStream(NAMES)
    assert s.feed("a <tool") == "a "
    assert s.feed("box> b") == "<toolbox> b"


@pytest.mark.parametrize("text", [f"Sure.\n<tool_call>\n{CALL}\n</tool_call>", CALL, f"\n  {CALL}",
                                  f"Calling:\n```json\n{CALL}\n```"])
def test_stream_never_shows_a_call_as_text(text: str) -> None:
    shown, tail, calls = feed_by_char(ToolStream(NAMES), text)
    assert "get_weather" not in shown + tail
    assert [c.name for c in calls] == ["get_weather"]


@pytest.mark.parametrize("declared, args", [({"city"}, {"city": "Paris"}), (None, {"city": "Paris", "type": "object"})])
def test_an_untagged_call_keeps_only_the_arguments_its_tool_declares(declared, args) -> None:
    """What the grammar does for a tagged call, done for a bare one: a small model copied schema keys in."""
    text = '{"name": "get_weather", "arguments": {"city": "Paris", "type": "object"}}'
    _, _, calls = feed_by_char(ToolStream(NAMES, {"get_weather": declared}), text)
    assert [json.loads(c.arguments) for c in calls] == [args]


def test_stream_gives_back_a_malformed_call_as_text() -> None:
    text = 'Hmm <tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    shown, tail, calls = feed_by_char(ToolStream(NAMES), text)
    assert calls == [] and shown + tail == text


def test_react_stream_shows_only_the_final_answer() -> None:
    shown, tail, calls = feed_by_char(ReactStream(NAMES), "Thought: easy\nFinal Answer: 42 is the answer")
    assert shown + tail == "42 is the answer" and calls == []
    react = 'Thought: x\nAction: calculate\nAction Input: {"expression": "6*7"}'
    shown, tail, calls = feed_by_char(ReactStream(NAMES), react)
    assert shown == "" and calls[0].name == "calculate"


def test_call_missing_its_last_brace_is_still_a_call() -> None:
    # what the default 0.5B model wrote for "What is 12*(3+4)?"
    text = '{"name": "calculate", "arguments": {"expression": "12*(3+4)"}'
    assert one_call(text)[1:] == ("calculate", {"expression": "12*(3+4)"})
    assert one_call(f"<tool_call>\n{text}\n</tool_call>")[1] == "calculate"


def planned(**body):
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **body)
    # No tokenizer: the constraints tools bring are built and checked, never run here.
    grammars = Grammars(None, [])
    ctx = SimpleNamespace(base=SamplingParams(max_new_tokens=16), max_output=16, vocab_size=32, grammars=grammars,
                          constraint=lambda text, param, check: grammars.constraint(text))
    # No template either: the model cannot think (the thinking is tests/test_thinking.py's).
    return plan(req, ctx, check_grammar=False, thinking=Thinking({}, thinks=False, starts_inside=False))


def read(mode, text: str) -> tuple[str, list]:
    reader = mode.reader()
    shown = "".join(reader.feed(ch) for ch in text)
    tail, calls = reader.finish()
    return shown + tail, calls


def test_each_mode_prompts_reads_and_reports_its_own_way() -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in sorted(NAMES)]
    tagged = f"<tool_call>\n{CALL}\n</tool_call>"
    plain, with_tools = planned().mode, planned(tools=tools).mode
    functions = planned(functions=[t["function"] for t in tools])
    assert plain.tools is None and [t["function"]["name"] for t in with_tools.tools] == sorted(NAMES)
    assert read(plain, tagged) == (tagged, []) and plain.finish_reason([], "length") == "length"

    text, calls = read(with_tools, tagged)
    assert text == "" and with_tools.finish_reason(calls, "stop") == "tool_calls"
    assert with_tools.message_fields(calls)["tool_calls"][0]["function"]["name"] == "get_weather"
    assert [d["tool_calls"][0]["index"] for d in with_tools.call_deltas(calls * 2)] == [0, 1]

    mode = functions.mode
    assert mode.tools is None and "Observation:" in functions.params.stop
    assert "Action Input" in functions.messages[0]["content"] and functions.messages[0]["role"] == "system"
    text, calls = read(mode, 'Thought: x\nAction: get_weather\nAction Input: {"city": "Paris"}')
    assert text == "" and mode.finish_reason(calls, "stop") == "function_call"
    assert mode.message_fields(calls) == {"function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert mode.call_deltas(calls) == [mode.message_fields(calls)]


@pytest.mark.parametrize("body,param", [
    ({"tool_choice": {"type": "function", "function": {"name": "launch_rocket"}}}, "tool_choice"),
    ({"function_call": {"name": "launch_rocket"}}, "function_call"),
])
def test_a_named_choice_outside_the_offer_is_refused_alike(body, param) -> None:
    offer = ({"tools": [{"type": "function", "function": {"name": "get_weather"}}]} if param == "tool_choice"
             else {"functions": [{"name": "get_weather"}]})
    with pytest.raises(APIError) as e:
        planned(**offer, **body)
    assert e.value.status == 400 and e.value.param == param and "launch_rocket" in e.value.message


def test_choice_none_plans_plain_and_a_named_choice_keeps_only_that_one() -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in sorted(NAMES)]
    assert planned(tools=tools, tool_choice="none").mode.tools is None
    only = planned(tools=tools, tool_choice={"type": "function", "function": {"name": "calculate"}}).mode
    assert [t["function"]["name"] for t in only.tools] == ["calculate"]
    fns = planned(functions=[t["function"] for t in tools], function_call={"name": "calculate"})
    assert "calculate" in fns.messages[0]["content"] and "get_weather" not in fns.messages[0]["content"]
