"""POST /v1/responses: OpenAI's Responses API, stateless, as a thin door onto the chat machinery. The request
is translated into a chat-completions request (instructions and input items become messages, function tools
and tool_choice their chat forms, text.format a response_format), so that server/chat.py plans it (template,
tools, constraint, sampling) exactly as it plans a chat request; the job's Deltas become Response output
items and events (server/responses_answer.py). Nothing is stored: previous_response_id and store: true are
refused by server/fields.py."""
from __future__ import annotations

import asyncio
import re
import time
import uuid

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from inference import SamplingParams
from server.chat import Plan, _prompt, plan
from server.errors import APIError
from server.fields import check_fields
from server.reasoning import EFFORT_THINKS, Thinking, thinking_for
from server.responses_answer import ResponsesAnswer
from server.responses_schema import (ITEMS, FunctionCallItem, FunctionCallOutputItem, MessageItem, Part,
                                     ResponsesRequest)
from server.schema import ChatCompletionRequest
from server.serving import Context
from server.worker import Job

ENDPOINT = "/v1/responses"
# Chat fields the planning names in its errors, and the Responses fields the client sent them as (the
# longer name first: it is the one to rename when both match).
RENAMED = {"max_completion_tokens": "max_output_tokens", "response_format.json_schema": "text.format",
           "response_format": "text.format", "messages": "input"}
CHAT_TOOL = re.compile(r"tools\[(\d+)\]\.function\.")  # a chat tool's fields sit under `function`
TEXT_PARTS = ("input_text", "output_text", "text")


def _renamed(e: APIError) -> APIError:
    param, message = e.param, e.message
    for chat, ours in RENAMED.items():
        if param is not None and (param == chat or param.startswith(chat + ".")):
            param = ours + param[len(chat):]
        if chat != "messages":  # "messages" in a sentence still means the conversation's messages
            message = message.replace(chat, ours)
    return APIError(e.status, CHAT_TOOL.sub(r"tools[\1].", message), e.code, param, e.type)


def _item(raw: dict, i: int) -> object:
    kind = raw.get("type", "message")
    model = ITEMS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise APIError(400, f"input.{i}: item type '{str(kind)[:40]}' is not supported; send messages, "
                            "function_call and function_call_output items (this server keeps no earlier "
                            "items to refer to)", param=f"input.{i}.type", code="invalid_value")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = "".join(f".{p}" for p in first["loc"])
        raise APIError(400, f"input.{i}{loc}: {first['msg']}", param=f"input.{i}{loc}",
                       code="invalid_value") from None


def _text(content: str | list[Part], where: str) -> str:
    """An item's text; a part that is not text (an image, a file, audio) is refused naming it."""
    if isinstance(content, str):
        return content
    out = []
    for j, part in enumerate(content):
        if part.type not in TEXT_PARTS + ("refusal",):
            raise APIError(400, f"{where}.{j}: content part type '{part.type[:40]}' is not supported; this model "
                                "reads text only", param=f"{where}.{j}", code="invalid_value")
        text = part.refusal if part.type == "refusal" else part.text
        if text is None:
            field = "refusal" if part.type == "refusal" else "text"
            raise APIError(400, f"{where}.{j}: a '{part.type}' part needs its '{field}'", param=f"{where}.{j}.{field}",
                           code="missing_required_parameter")
        out.append(text)
    return "\n".join(out)


def chat_messages(req: ResponsesRequest) -> list[dict]:
    """instructions as the system message, then the input as chat messages: a function_call joins the
    assistant message before it (one turn's text and calls are one message), its output is a tool message."""
    msgs: list[dict] = [{"role": "system", "content": req.instructions}] if req.instructions else []
    if isinstance(req.input, str):
        return msgs + [{"role": "user", "content": req.input}]
    names: dict[str, str] = {}
    for i, raw in enumerate(req.input):
        item = _item(raw, i)
        if isinstance(item, MessageItem):
            msgs.append({"role": item.role, "content": _text(item.content, f"input.{i}.content")})
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            if msgs and msgs[-1]["role"] == "assistant":
                msgs[-1].setdefault("tool_calls", []).append(call)
            else:
                msgs.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            msg = {"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output, f"input.{i}.output")}
            if item.call_id in names:
                msg["name"] = names[item.call_id]
            msgs.append(msg)
    if not msgs:
        raise APIError(400, "input has no message, function_call or function_call_output to answer",
                       param="input", code="invalid_value")
    return msgs


def _response_format(req: ResponsesRequest) -> dict | None:
    fmt = req.text and req.text.format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    for field in ("name", "json_schema"):
        if getattr(fmt, field) is None:
            name = "schema" if field == "json_schema" else field
            raise APIError(400, f"text.format: type 'json_schema' needs '{name}'", param=f"text.format.{name}",
                           code="missing_required_parameter")
    spec = {"name": fmt.name, "schema": fmt.json_schema, "description": fmt.description, "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}


def thinking(req: ResponsesRequest, ctx: Context) -> Thinking:
    """reasoning.effort onto the chat template's thinking switch (a 400 naming `reasoning` where the template
    has none); no effort leaves the template's default."""
    effort = req.reasoning and req.reasoning.effort
    # xhigh and max, which the chat door does not know, ask for more thinking still: on.
    enable = None if effort is None else EFFORT_THINKS.get(effort, True)
    return thinking_for(ctx, enable, "reasoning")


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat-completions request that asks what req asks (but its thinking: see thinking())."""
    tools = [{"type": "function", "function": {k: v for k, v in
                                               {"name": t.name, "description": t.description,
                                                "parameters": t.parameters}.items() if v is not None}}
             for t in req.tools or []]
    choice = req.tool_choice
    body = {"messages": chat_messages(req), "tools": tools or None,
            "tool_choice": {"type": "function", "function": {"name": choice.name}} if hasattr(choice, "name")
            else choice,
            "parallel_tool_calls": req.parallel_tool_calls, "max_completion_tokens": req.max_output_tokens,
            "temperature": req.temperature, "top_p": req.top_p, "response_format": _response_format(req),
            "stream": req.stream}
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as e:  # what the Responses shape allows and the chat shape does not
        first = e.errors()[0]
        raise APIError(400, f"The request cannot be read: {first['msg']}", param="input",
                       code="invalid_value") from None


def response_head(req: ResponsesRequest, model: str, params: SamplingParams, extra: dict) -> dict:
    """The Response object's fields that echo the request, with the sampling values actually used."""
    choice = req.tool_choice
    fmt = req.text and req.text.format
    reasoning = req.reasoning.model_dump(exclude={"generate_summary"}) if req.reasoning else None
    return {
        "id": "resp_" + uuid.uuid4().hex, "object": "response", "created_at": int(time.time()),
        "status": "in_progress", "completed_at": None, "error": None, "incomplete_details": None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": model,
        "output": [], "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": None,
        "reasoning": reasoning, "store": False, "temperature": params.temperature,
        "top_p": params.value if params.method == "top_p" else 1.0,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "tool_choice": choice.model_dump() if hasattr(choice, "name") else choice or "auto",
        "tools": [t.model_dump() for t in req.tools or []], "truncation": "disabled",
        "metadata": extra.get("metadata") or {},
    }


class ResponsesServing:
    """The Responses door: a request in, its answer out, through the chat planning and the shared worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def __call__(self, req: ResponsesRequest, request: Request) -> Response:
        ctx = self.ctx
        ctx.check_model(req.model)
        check_fields(req, ENDPOINT)

        def prepare() -> tuple[Plan, list[int]]:
            try:
                p = plan(chat_request(req), ctx, thinking=thinking(req, ctx))
                return p, _prompt(ctx, p)
            except APIError as e:
                raise _renamed(e) from None

        p, ids = await ctx.prepare(prepare)
        job = Job([ids], p.params, asyncio.get_running_loop())
        tokenizer = ctx.inference.tokenizer
        summary = bool(req.reasoning and (req.reasoning.summary or req.reasoning.generate_summary))
        answer = ResponsesAnswer(response_head(req, ctx.model_name, p.params, req.model_extra or {}), p.reader(),
                                 lambda text: len(tokenizer.encode(text, add_special_tokens=False)), summary)
        return await ctx.answer(job, answer, bool(req.stream), request)
