"""A model's thinking (issue 27) through the real server and the `openai` SDK: the scripted Qwen3-style model
(tests/tiny_model.py thinking=True, tests/scripted_session.py "think" rules) writes <think>...</think> before its
answer; the server sends it as reasoning_content, lets grammars through it, and renders the template's switch
from chat_template_kwargs and reasoning_effort. A template without the switch refuses the effort by name."""
from __future__ import annotations

import io
import json
import re
import shutil
import sys

import httpx
import llguidance
import openai
import pytest
from transformers import AutoTokenizer

import cli_chat
from api_helpers import fake_server_args, prompt_tokens, serve, sse_chunks, user, validate
from engine.constraint import Grammars, after_thinking, json_grammar
from inference import SamplingParams
from scripted_session import scripted_inference
from server.chat import plan
from server.reasoning import Thinking, ThinkingSplitter, thinking_for
from server.schema import ChatCompletionRequest
from server.serving import Context

MODEL = "fake-model"
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                              "parameters": {"type": "object",
                                                             "properties": {"city": {"type": "string"}}}}}]
CITY = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"], "additionalProperties": False}


@pytest.fixture(scope="module")
def thinking_dir(make_tiny):
    return make_tiny(model_type="qwen3", thinking=True)


@pytest.fixture(scope="module")
def server(thinking_dir, tmp_path_factory):
    with serve(fake_server_args(thinking_dir), tmp_path_factory.mktemp("thinking")) as s:
        yield s


@pytest.fixture(scope="module")
def plain_server(tiny_model_dir, tmp_path_factory):
    """A template without <think> or a thinking switch (Qwen2.5's kind)."""
    with serve(fake_server_args(tiny_model_dir), tmp_path_factory.mktemp("plain")) as s:
        yield s


def post(server, **body) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, **body}, timeout=60)


def ask(server, **body) -> dict:
    r = post(server, **body)
    assert r.status_code == 200, r.text
    return validate(r.json(), "CreateChatCompletionResponse")["choices"][0]["message"]


def test_thinking_is_split_from_the_answer(client, server) -> None:
    msg = client.chat.completions.create(model=MODEL, messages=user("think")).choices[0].message
    assert msg.content == "The answer is 4."
    assert msg.reasoning_content.strip() == "Let me see."
    raw = ask(server, messages=user("think"))
    assert (raw["content"], raw["reasoning_content"].strip()) == ("The answer is 4.", "Let me see.")


def test_streamed_thinking_comes_first_as_reasoning_content(client, server) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=user("think"), stream=True))
    kinds = []
    for c in chunks:
        validate(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        delta = c.choices[0].delta
        if getattr(delta, "reasoning_content", None):
            kinds.append(("thinking", delta.reasoning_content))
        if delta.content:
            kinds.append(("answer", delta.content))
    assert "".join(t for k, t in kinds if k == "thinking").strip() == "Let me see."
    assert "".join(t for k, t in kinds if k == "answer") == "The answer is 4."
    first_answer = [k for k, _ in kinds].index("answer")
    assert all(k == "answer" for k, _ in kinds[first_answer:]) and first_answer > 0
    assert "<think>" not in "".join(t for _, t in kinds) and "</think>" not in "".join(t for _, t in kinds)


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_a_call_after_thinking(client, choice) -> None:
    r = client.chat.completions.create(model=MODEL, messages=user("think weather"), tools=WEATHER,
                                       tool_choice=choice)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == \
        [("get_weather", {"city": "Paris"})]
    assert msg.reasoning_content.strip() == "The weather needs a tool."
    assert "<think>" not in (msg.content or "")


def test_a_streamed_call_after_thinking(server) -> None:
    r = post(server, messages=user("think weather"), tools=WEATHER, stream=True)
    assert r.status_code == 200, r.text
    chunks = sse_chunks(r.text)
    assert chunks.pop() == "[DONE]"
    deltas = [validate(c, "CreateChatCompletionStreamResponse")["choices"][0]["delta"] for c in chunks]
    thought = "".join(d.get("reasoning_content", "") for d in deltas)
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert thought == "The weather needs a tool." and not "".join(d.get("content") or "" for d in deltas)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("get_weather", {"city": "Paris"})]
    first_call = next(i for i, d in enumerate(deltas) if d.get("tool_calls"))
    assert all("reasoning_content" not in d for d in deltas[first_call:])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_json_schema_applies_to_the_answer_after_thinking(client, server) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": CITY, "strict": True}}
    msg = client.chat.completions.create(model=MODEL, messages=user("think json"), response_format=fmt)
    assert json.loads(msg.choices[0].message.content) == {"city": "Paris", "days": 3}
    assert msg.choices[0].message.reasoning_content.strip() == "A city and some days."
    raw = ask(server, messages=user("think json"), response_format={"type": "json_object"})
    assert json.loads(raw["content"]) == {"city": "Paris", "days": 3} and raw["reasoning_content"]


def test_gbnf_applies_to_the_answer_after_thinking(server) -> None:
    msg = ask(server, messages=user("think"), grammar='root ::= "The answer is " [0-9] "."')
    assert (msg["content"], msg["reasoning_content"].strip()) == ("The answer is 4.", "Let me see.")


def test_enable_thinking_false_reaches_the_template(client, server) -> None:
    r = client.chat.completions.create(model=MODEL, messages=user("think"),
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    msg = r.choices[0].message
    assert msg.content == "The answer is 4." and getattr(msg, "reasoning_content", None) is None
    raw = ask(server, messages=user("think"), chat_template_kwargs={"enable_thinking": False})
    assert "reasoning_content" not in raw
    on = ask(server, messages=user("think"), chat_template_kwargs={"enable_thinking": True})
    assert on["reasoning_content"].strip() == "Let me see."


@pytest.mark.parametrize("effort, thinks", [("none", False), ("minimal", False), ("low", True), ("high", True),
                                           ("max", True)])
def test_reasoning_effort_turns_the_switch(client, effort, thinks) -> None:
    msg = client.chat.completions.create(model=MODEL, messages=user("think"), reasoning_effort=effort)
    msg = msg.choices[0].message
    assert msg.content == "The answer is 4."
    assert (getattr(msg, "reasoning_content", None) is not None) == thinks


def test_effort_against_its_own_template_kwargs_is_refused(server) -> None:
    r = post(server, messages=user("think"), reasoning_effort="high",
             chat_template_kwargs={"enable_thinking": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning_effort"
    r = post(server, messages=user("think"), chat_template_kwargs={"add_generation_prompt": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs"


def test_reasoning_effort_is_refused_without_a_switch(plain_server) -> None:
    client = openai.OpenAI(base_url=plain_server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=user("think"), reasoning_effort="low")
    assert e.value.body["param"] == "reasoning_effort" and "thinking switch" in e.value.body["message"]
    validate(e.value.response.json(), "ErrorResponse")
    # no switch, no <think> in the template: the model's text is all answer, tags and all
    msg = client.chat.completions.create(model=MODEL, messages=user("think")).choices[0].message
    assert msg.content.startswith("<think>") and getattr(msg, "reasoning_content", None) is None


def test_earlier_thinking_is_left_out_of_the_prompt(server, plain_server, thinking_dir, tiny_model_dir) -> None:
    said = [{"role": "user", "content": "hello"},
            {"role": "assistant", "content": "<think>\nA long thought.\n</think>\n\nHi."},
            {"role": "user", "content": "think"}]
    bare = [said[0], {"role": "assistant", "content": "Hi."}, said[2]]
    for s, model_dir in ((server, thinking_dir), (plain_server, tiny_model_dir)):
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        r = post(s, messages=said, max_tokens=1)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == prompt_tokens(tokenizer, bare)


def test_reasoning_content_sent_back_reaches_the_template(server, thinking_dir) -> None:
    """Qwen3's template keeps the thinking of the current question's tool-calling turns and drops the older."""
    tokenizer = AutoTokenizer.from_pretrained(str(thinking_dir), local_files_only=True)
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    sent = [{"role": "user", "content": "think weather"},
            {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "Needs a tool."},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    rendered = [{"role": "user", "content": "think weather"},
                {"role": "assistant", "content": "", "reasoning_content": "Needs a tool.",
                 "tool_calls": [{"type": "function",
                                 "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny"}]
    assert "Needs a tool." in tokenizer.apply_chat_template(rendered, tools=WEATHER, tokenize=False)
    r = post(server, messages=sent, tools=WEATHER, max_tokens=1)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == prompt_tokens(tokenizer, rendered, WEATHER)
    older = [{"role": "user", "content": "hello"},
             {"role": "assistant", "content": "Hi.", "reasoning_content": "An old thought."},
             {"role": "user", "content": "think"}]
    r = post(server, messages=older, max_tokens=1)
    assert r.json()["usage"]["prompt_tokens"] == prompt_tokens(tokenizer, older) == \
        prompt_tokens(tokenizer, [older[0], {"role": "assistant", "content": "Hi."}, older[2]])


def tokens_accepted(grammars: Grammars, grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(grammars.tokenizer(), grammar, log_level=0)
    ids = grammars.hf_tokenizer.encode(text, add_special_tokens=False)
    return all(matcher.consume_token(i) for i in ids) and matcher.is_accepting()


@pytest.mark.parametrize("thinking", [True, False])
def test_grammar_after_thinking_with_tags_as_tokens_or_text(make_tiny, thinking) -> None:
    """Qwen3's tokenizer has <think> tokens; another spells the tags out, and its thinking ends at the first
    </think>. Both: the thinking is optional, the answer after it follows the grammar."""
    tokenizer = AutoTokenizer.from_pretrained(str(make_tiny(model_type="qwen3", thinking=thinking)))
    grammars = Grammars(tokenizer, [tokenizer.convert_tokens_to_ids("<|im_end|>")])
    assert grammars.think_tags_are_tokens == thinking
    g = after_thinking(json_grammar(CITY), tags_are_tokens=thinking)
    assert tokens_accepted(grammars, g, '<think>\nA {thought}.\n</think>\n\n{"city": "Paris", "days": 3}')
    assert tokens_accepted(grammars, g, '{"city": "Paris", "days": 3}')
    assert not tokens_accepted(grammars, g, '<think>\nA thought.\n</think>\n\nParis, 3 days')
    assert not tokens_accepted(grammars, g, '{"city": "Paris"}')
    inside = after_thinking(json_grammar(CITY), starts_inside=True, tags_are_tokens=thinking)
    assert tokens_accepted(grammars, inside, 'Still thinking.\n</think>\n\n{"city": "Paris", "days": 3}')
    assert not tokens_accepted(grammars, inside, '{"city": "Paris", "days": 3}')


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_cli_chat_shows_thinking_dimmed_on_a_terminal(thinking_dir, monkeypatch, tty) -> None:
    engine = scripted_inference(str(thinking_dir))
    out = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO("think\nthink again\nexit\n"))
    monkeypatch.setattr(sys, "stdout", out)
    cli_chat.chat_loop(engine, SamplingParams.from_config(engine.config), "")
    shown = out.getvalue()
    thought = f"{cli_chat.DIM}Let me see.{cli_chat.UNDIM}" if tty else "Let me see."
    assert shown.count(f"Assistant: {thought}\nThe answer is 4.\n[first token") == 2, shown
    assert (cli_chat.DIM in shown) == tty
    # the second turn's prompt holds the first answer without its thinking
    said = [{"role": "user", "content": "think"}, {"role": "assistant", "content": "The answer is 4."},
            {"role": "user", "content": "think again"}]
    tokens = int(re.findall(r"(\d+) prompt tokens", shown)[1])
    assert tokens == prompt_tokens(engine.tokenizer, said)


@pytest.fixture(scope="module")
def opening_dir(thinking_dir, tmp_path_factory):
    """The thinking model with a template that opens the <think> itself unless thinking is off (as QwQ and
    DeepSeek-R1's templates end their prompts)."""
    out = tmp_path_factory.mktemp("opening") / "model"
    shutil.copytree(thinking_dir, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    template = config.get("chat_template") or (out / "chat_template.jinja").read_text()
    opened = template.replace("{{- '<think>\\n\\n</think>\\n\\n' -}}\n    {%- endif -%}",
                              "{{- '<think>\\n\\n</think>\\n\\n' -}}\n    {%- else -%}{{- '<think>\\n' -}}\n"
                              "    {%- endif -%}")
    assert opened != template
    if "chat_template" in config:
        config["chat_template"] = opened
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    else:
        (out / "chat_template.jinja").write_text(opened)
    return out


def test_a_prompt_that_opens_the_thinking_starts_inside(opening_dir, thinking_dir) -> None:
    ctx = Context.create(scripted_inference(str(opening_dir)), None, MODEL)
    assert thinking_for(ctx, None, "thinking") == Thinking({}, thinks=True, starts_inside=True)
    assert thinking_for(ctx, True, "thinking") == Thinking({"enable_thinking": True}, True, True)
    assert thinking_for(ctx, False, "thinking") == Thinking({"enable_thinking": False}, False, False)
    req = ChatCompletionRequest.model_validate({"messages": user("think json"),
                                                "response_format": {"type": "json_object"}})
    p = plan(req, ctx)
    assert (p.thinks, p.starts_inside) == (True, True)
    (constraint,) = p.params.processors
    assert tokens_accepted(ctx.grammars, constraint.grammar, 'Hm.\n</think>\n\n{"city": "Paris"}')
    assert not tokens_accepted(ctx.grammars, constraint.grammar, '{"city": "Paris"}')
    reader = p.reader()
    pieces = reader.feed("\nHm, a city.\n</think>\n\n{}") + reader.finish()[0]
    assert [(x.kind, x.text) for x in pieces] == [("thinking", "Hm, a city."), ("answer", "{}")]
    # the Qwen3-style template leaves the opening to the model
    plain = Context.create(scripted_inference(str(thinking_dir)), None, MODEL)
    assert thinking_for(plain, None, "thinking") == Thinking({}, thinks=True, starts_inside=False)


@pytest.mark.parametrize("starts_inside", [False, True])
def test_the_split_is_the_same_however_the_text_is_cut(starts_inside) -> None:
    text = "Let me see.\n\nTwo lines.\n</think>\n\nThe answer\n\nis 4."
    text = text if starts_inside else "<think>\n" + text
    for size in (1, 2, 3, 7, len(text)):
        splitter = ThinkingSplitter(starts_inside)
        parts = [p for at in range(0, len(text), size) for p in splitter.feed(text[at:at + size])]
        parts += splitter.finish()
        assert "".join(t for k, t in parts if k == "thinking") == "Let me see.\n\nTwo lines.", size
        assert "".join(t for k, t in parts if k == "answer") == "The answer\n\nis 4.", size
    assert ThinkingSplitter().feed("Plain <think> later") == [("answer", "Plain <think> later")]
