"""POST /v1/chat/completions: an OpenAI chat request becomes one Job (the messages through the chat template,
the sampling parameters, the grammar its tools or response_format ask for), and the job's Deltas become
chat.completion (collected) or chat.completion.chunk events (streamed), for one choice or several (n).
How calls appear in them is the request's mode's business (server/modes.py)."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response

from engine.constraint import ANY_OBJECT, GrammarError, after_thinking, json_grammar, tool_grammar
from inference import Delta, SamplingParams
from server.errors import APIError
from server.fields import check_fields
from server.logprobs import chat_logprobs
from server.reading import ChoiceReader
from server.reasoning import EFFORT_THINKS, Thinking, drop_thinking, render_arguments, thinking_for
from server.modes import Functions, Mode, Plain, Tools
from server.params import Knobs, chat_logprobs as wanted_logprobs, choices, sampling_params
from server.schema import ChatCompletionRequest, FunctionDef, FunctionName, NamedToolChoice, ToolDef
from server.serving import Context, data, gbnf, usage
from server.toolcall.common import ToolCall
from server.worker import Job


@dataclass
class Plan:
    messages: list[dict]
    mode: Mode
    params: SamplingParams
    thinks: bool = False  # the model may think first (<think>...</think>), to be split from the answer
    starts_inside: bool = False  # the template opens the <think> at the end of the prompt
    template_kwargs: dict | None = None  # extra variables for the chat template (enable_thinking)

    def reader(self) -> ChoiceReader:
        """A fresh reader of one choice's text."""
        return ChoiceReader(self.mode, self.thinks, self.starts_inside)


def _offered(defs: Sequence[ToolDef | FunctionDef], choice: str | NamedToolChoice | FunctionName | None,
             field: str, choice_field: str) -> list[dict]:
    """The tools (or legacy functions) the model may call under tool_choice (or function_call): none,
    all of them, or the one it names."""
    if choice == "none":
        return []
    if choice is not None and not isinstance(choice, str):
        defs = [d for d in defs if d.name == choice.name]
        if not defs:
            raise APIError(400, f"{choice_field} names '{choice.name}', which is not in {field}", param=choice_field)
    return [d.model_dump(exclude_none=True) for d in defs]


def _mode(req: ChatCompletionRequest) -> Mode:
    if req.tools and req.functions:
        raise APIError(400, "send either tools or the legacy functions, not both", param="functions")
    functions = _offered(req.functions or [], req.function_call, "functions", "function_call")
    if functions:
        return Functions(functions)
    tools = _offered(req.tools or [], req.tool_choice, "tools", "tool_choice")
    return Tools(tools, parallel=req.parallel_tool_calls is not False) if tools else Plain()


def _answer_schema(req: ChatCompletionRequest) -> dict | None:
    """The JSON schema response_format asks the answer to follow; None for free text."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ANY_OBJECT
    if fmt.json_schema is None:
        raise APIError(400, "response_format: type 'json_schema' needs a 'json_schema' object "
                            "({name, schema, strict})", param="response_format")
    return fmt.json_schema.json_schema if fmt.json_schema.json_schema is not None else ANY_OBJECT


def grammar(req: ChatCompletionRequest, mode: Mode, tags_are_tokens: bool = True) -> str | None:
    """The grammar the answer must follow (engine/constraint.py), None when it is free; a schema the engine
    cannot compile is a 400 naming it."""
    answer = _answer_schema(req)
    forced = req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice)
    if forced and not req.tools:
        raise APIError(400, "tool_choice: a call can only be required when 'tools' offers some", param="tool_choice")
    if req.grammar is not None:
        if answer is not None or not isinstance(mode, Plain):
            raise APIError(400, "grammar cannot be combined with response_format, tools or functions",
                           param="grammar")
        return gbnf(req.grammar)
    if isinstance(mode, Functions):
        if answer is not None:
            raise APIError(400, "response_format cannot be combined with the legacy 'functions'; send 'tools'",
                           param="response_format")
        return None
    try:
        if isinstance(mode, Tools):
            return tool_grammar(mode.tools, forced, None if forced else answer, tags_are_tokens=tags_are_tokens,
                                parallel=mode.parallel)
        return None if answer is None else json_grammar(answer, "response_format.json_schema.schema")
    except GrammarError as e:
        param = "response_format" if str(e).startswith("response_format") else "tools"
        raise APIError(400, str(e), code="invalid_schema", param=param) from None


def chat_thinking(req: ChatCompletionRequest, ctx: Context) -> Thinking:
    """The thinking a chat request asks for: reasoning_effort mapped onto the template's switch, and its
    chat_template_kwargs passed on (a key the template renderer itself takes is refused)."""
    kwargs = req.chat_template_kwargs or {}
    taken = sorted(set(kwargs) & render_arguments(ctx.inference))
    if taken:
        raise APIError(400, f"chat_template_kwargs: '{taken[0]}' is set by the server, not the request",
                       param="chat_template_kwargs", code="invalid_value")
    enable = None if req.reasoning_effort is None else EFFORT_THINKS[req.reasoning_effort]
    return thinking_for(ctx, enable, "reasoning_effort", kwargs)


def plan(req: ChatCompletionRequest, ctx: Context, check_grammar: bool = True,
         thinking: Thinking | None = None) -> Plan:
    """The messages, mode and sampling parameters of a request. check_grammar: build the constraint's
    matcher now and compute its first mask (a grammar that cannot run is a 400 before the engine).
    thinking: what another door asked of the thinking (server/reasoning.thinking_for); None: what req asks."""
    if thinking is None:
        thinking = chat_thinking(req, ctx)
    knobs = Knobs.from_openai(req, max_tokens=req.max_completion_tokens or req.max_tokens,
                              limit_field="max_completion_tokens" if req.max_completion_tokens else "max_tokens",
                              logprobs=wanted_logprobs(req.logprobs, req.top_logprobs))
    params = sampling_params(knobs, ctx.base, ctx.max_output, ctx.vocab_size)
    mode = _mode(req)
    params.stop = params.stop + list(mode.stops)
    text = grammar(req, mode, ctx.grammars.tags_are_tokens)
    if text is not None and thinking.thinks:  # the grammar is the answer's: the thinking before it is free
        text = after_thinking(text, thinking.starts_inside, ctx.grammars.think_tags_are_tokens)
    if text is not None:
        param = "grammar" if req.grammar is not None else "tools" if isinstance(mode, Tools) else "response_format"
        params.processors = params.processors + [ctx.constraint(text, param, check_grammar)]
    return Plan(mode.messages(req.messages), mode, params, thinking.thinks, thinking.starts_inside,
                thinking.template_kwargs)


def _prompt(ctx: Context, p: Plan) -> list[int]:
    """The prompt's token ids: the chat template (earlier turns without their thinking), then the tokenizer."""
    try:
        ids = ctx.inference.apply_chat_template(drop_thinking(p.messages, ctx.inference), p.mode.tools,
                                                p.template_kwargs)
    except Exception as e:  # the template rejects what the messages ask for: the client's problem
        raise APIError(400, f"The messages cannot be rendered with this model's chat template: {e}",
                       param="messages") from None
    ctx.check_length(len(ids), "your messages are", "messages")
    return ids


class ChatServing:
    """The chat door: a request in, its answer out, through the shared worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def __call__(self, req: ChatCompletionRequest, request: Request) -> Response:
        ctx = self.ctx
        ctx.check_model(req.model)
        check_fields(req, "/v1/chat/completions")
        n = choices(req.n)

        def prepare() -> tuple[Plan, list[int]]:
            p = plan(req, ctx)
            return p, _prompt(ctx, p)

        p, ids = await ctx.prepare(prepare)
        job = Job([ids], p.params, asyncio.get_running_loop(), n=n)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        answer = ChatAnswer(Builder(ctx.model_name, p.mode), p.reader, n, p.params.logprobs is not None,
                            ctx, bool(req.stream), include_usage)
        return await ctx.answer(job, answer, bool(req.stream), request)


class Builder:
    """OpenAI's chat response objects of one request."""

    def __init__(self, model: str, mode: Mode) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.mode = mode

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "qwen-ascend-llm"}

    def message(self, content: str, calls: list[ToolCall], reasoning: str = "") -> dict:
        thought = {"reasoning_content": reasoning} if reasoning else {}
        return {"role": "assistant", "content": (content.strip() or None) if calls else content, "refusal": None,
                **thought, **self.mode.message_fields(calls)}

    def choice(self, index: int, content: str, calls: list[ToolCall], model_reason: str | None,
               logprobs: dict | None = None, reasoning: str = "") -> dict:
        return {"index": index, "message": self.message(content, calls, reasoning), "logprobs": logprobs,
                "finish_reason": self.mode.finish_reason(calls, model_reason)}

    def completion(self, choices: list[dict], stats: Sequence[Any]) -> dict:
        return {**self._head("chat.completion"), "choices": choices, "usage": usage(stats, len(stats))}

    def chunk(self, delta: dict, reason: str | None = None, with_usage: bool = False, index: int = 0,
              logprobs: dict | None = None) -> dict:
        body = {**self._head("chat.completion.chunk"),
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]}
        if with_usage:
            body["usage"] = None  # OpenAI sends null on every chunk but the last when usage was asked for
        return body

    def closing_chunks(self, calls: list[ToolCall], model_reason: str | None, with_usage: bool,
                       index: int = 0) -> list[dict]:
        """After the streamed text: the calls and the finish_reason of one choice."""
        out = [self.chunk(delta, with_usage=with_usage, index=index) for delta in self.mode.call_deltas(calls)]
        out.append(self.chunk({}, self.mode.finish_reason(calls, model_reason), with_usage=with_usage, index=index))
        return out

    def usage_chunk(self, stats: Sequence[Any]) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(stats, len(stats))}


class ChatAnswer:
    """A chat answer's n choices as their Deltas come in: each read by its own ChoiceReader (markup, thinking,
    calls), with the logprobs not yet sent (when asked for); streamed as chunks, or collected into one
    completion. Thinking goes out as `reasoning_content`, as vLLM and llama.cpp send it."""

    def __init__(self, builder: Builder, reader: Callable[[], ChoiceReader], n: int, logprobs: bool, ctx: Context,
                 streaming: bool, include_usage: bool) -> None:
        self.builder, self.words = builder, ctx.words if logprobs else None
        self.streaming, self.include_usage = streaming, include_usage
        self.readers = [reader() for _ in range(n)]
        self.texts: list[dict[str, list[str]]] = [{"answer": [], "thinking": []} for _ in range(n)]
        self.calls: list[list[ToolCall]] = [[] for _ in range(n)]
        self.logprobs: list[list] = [[] for _ in range(n)]
        self.last: list[Delta | None] = [None] * n

    def _take_logprobs(self, i: int) -> dict | None:
        if self.words is None:
            return None
        out, self.logprobs[i] = self.logprobs[i], []
        return chat_logprobs(out, self.words)

    def _stats(self) -> list[Any]:
        return [d and d.stats for d in self.last]

    def _chunk(self, delta: dict, i: int, **kw: Any) -> dict:
        return data(self.builder.chunk(delta, with_usage=self.include_usage, index=i, **kw))

    def opening(self) -> list[dict]:
        return [self._chunk({"role": "assistant", "content": ""}, i) for i in range(len(self.readers))]

    def feed(self, i: int, delta: Delta) -> list[dict]:
        self.logprobs[i] += delta.logprobs
        pieces, calls = self.readers[i].read(delta.text, last=bool(delta.finish_reason))
        if delta.finish_reason:
            self.last[i], self.calls[i] = delta, calls
        if not self.streaming:
            for piece in pieces:
                self.texts[i][piece.kind].append(piece.text)
            return []
        field = {"answer": "content", "thinking": "reasoning_content"}
        out = [self._chunk({field[p.kind]: p.text}, i, logprobs=self._take_logprobs(i)) for p in pieces]
        if delta.finish_reason:
            if self.logprobs[i]:  # tokens that showed no text
                out.append(self._chunk({"content": ""}, i, logprobs=self._take_logprobs(i)))
            out += [data(c) for c in self.builder.closing_chunks(self.calls[i], delta.finish_reason,
                                                                  self.include_usage, index=i)]
        return out

    def closing(self) -> list[dict]:
        out = [data(self.builder.usage_chunk(self._stats()))] if self.include_usage else []
        return out + [{"data": "[DONE]"}]

    def error_event(self, error: APIError) -> dict:
        return data(error.body())

    def result(self) -> dict:
        out = []
        for i, texts in enumerate(self.texts):
            last = self.last[i]
            out.append(self.builder.choice(i, "".join(texts["answer"]), self.calls[i], last and last.finish_reason,
                                           self._take_logprobs(i), "".join(texts["thinking"])))
        return self.builder.completion(out, self._stats())
