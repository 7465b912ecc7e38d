"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, as a thin door onto the chat
machinery. The request is translated into a chat-completions request (system and content blocks become chat
messages, tool_use and tool_result blocks calls and tool messages, tools and tool_choice their chat forms,
output_config.format a response_format, stop_sequences the stop strings), so that server/chat.py plans it
(template, tools, constraint, sampling) exactly as it plans a chat request; the job's Deltas become
Anthropic's message and stream events (server/anthropic_answer.py). Errors on these paths take Anthropic's
shape (server/errors.py)."""
from __future__ import annotations

import asyncio

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.anthropic_answer import AnthropicAnswer
from server.anthropic_schema import Block, CountTokensRequest, MessagesRequest
from server.chat import Plan, _prompt, plan
from server.errors import APIError
from server.fields import check_fields
from server.reasoning import EFFORT_THINKS, Thinking, thinking_for
from server.schema import ChatCompletionRequest
from server.serving import Context
from server.worker import Job

ENDPOINT = "/v1/messages"
# Chat fields the planning names in its errors, and the Messages fields the client sent them as.
RENAMED = {"stop": "stop_sequences", "response_format.json_schema.schema": "output_config.format.schema",
           "response_format": "output_config.format"}


def _renamed(e: APIError) -> APIError:
    param = e.param
    for chat, ours in RENAMED.items():
        if param is not None and (param == chat or param.startswith(chat + ".")):
            param = ours + param[len(chat):]
            break
    return APIError(e.status, e.message, e.code, param, e.type)


def _field(block: Block, name: str, where: str) -> object:
    value = (block.model_extra or {}).get(name)
    if value is None:
        raise APIError(400, f"{where}: a '{block.type}' block needs '{name}'", param=f"{where}.{name}")
    return value


def _text_of(content: str | list[Block] | list, where: str) -> str:
    """The text of a string or of text blocks; any other block (an image, a document) is refused naming it."""
    if isinstance(content, str):
        return content
    parts = []
    for j, raw in enumerate(content):
        block = raw if isinstance(raw, Block) else Block.model_validate(raw)
        if block.type != "text":
            raise APIError(400, f"{where}.{j}: content block type '{block.type[:40]}' is not supported here; this "
                                "model reads text only", param=f"{where}.{j}.type")
        text = _field(block, "text", f"{where}.{j}")
        if not isinstance(text, str):
            raise APIError(400, f"{where}.{j}.text must be a string", param=f"{where}.{j}.text")
        parts.append(text)
    return "\n".join(parts)


def chat_messages(req: CountTokensRequest) -> list[dict]:
    """system, then every message as chat messages: a user turn's tool_result blocks become tool messages
    (before its text), an assistant turn's tool_use blocks its calls and its thinking blocks its
    reasoning_content."""
    out: list[dict] = []
    if req.system:
        out.append({"role": "system", "content": _text_of(req.system, "system")})
    for i, msg in enumerate(req.messages):
        where = f"messages.{i}.content"
        if isinstance(msg.content, str):
            out.append({"role": msg.role, "content": msg.content})
            continue
        texts, calls, thinking, results = [], [], [], []
        for j, block in enumerate(msg.content):
            at = f"{where}.{j}"
            if block.type == "text":
                texts.append(_text_of([block], where))
            elif block.type == "tool_use" and msg.role == "assistant":
                arguments = _field(block, "input", at)
                calls.append({"id": _field(block, "id", at), "type": "function",
                              "function": {"name": _field(block, "name", at), "arguments": arguments}})
            elif block.type == "thinking" and msg.role == "assistant":
                thinking.append(str(_field(block, "thinking", at)))
            elif block.type == "redacted_thinking" and msg.role == "assistant":
                continue  # opaque to this model
            elif block.type == "tool_result" and msg.role == "user":
                content = (block.model_extra or {}).get("content") or ""
                results.append({"role": "tool", "tool_call_id": _field(block, "tool_use_id", at),
                                "content": _text_of(content, f"{at}.content")})
            else:
                raise APIError(400, f"{at}: content block type '{block.type[:40]}' is not supported in a "
                                    f"{msg.role} message (this model reads text; tools: tool_use and tool_result)",
                               param=f"{at}.type")
        out += results
        if texts or calls or thinking or not results:
            message: dict = {"role": msg.role, "content": "\n".join(texts)}
            if calls:
                message["tool_calls"] = calls
            if thinking:
                message["reasoning_content"] = "\n".join(thinking)
            out.append(message)
    return out


def thinking(req: CountTokensRequest, ctx: Context) -> Thinking:
    """thinking (enabled / disabled / adaptive) or else output_config.effort onto the template's thinking
    switch; a 400 naming the field where the template has none."""
    if req.thinking is not None:
        enable = {"enabled": True, "disabled": False, "adaptive": None}[req.thinking.type]
        return thinking_for(ctx, enable, "thinking")
    effort = req.output_config and req.output_config.effort
    return thinking_for(ctx, None if effort is None else EFFORT_THINKS.get(effort, True), "output_config.effort")


def chat_request(req: CountTokensRequest) -> ChatCompletionRequest:
    """The chat-completions request that asks what req asks (but its thinking: see thinking())."""
    tools = [{"type": "function", "function": {k: v for k, v in {"name": t.name, "description": t.description,
                                                                   "parameters": t.input_schema}.items()
                                               if v is not None}} for t in req.tools or []]
    choice, parallel = None, None
    if req.tool_choice is not None:
        c = req.tool_choice
        if c.type == "tool" and not c.name:
            raise APIError(400, "tool_choice: type 'tool' needs the tool's 'name'", param="tool_choice.name")
        choice = {"auto": "auto", "any": "required", "none": "none"}.get(c.type) or \
            {"type": "function", "function": {"name": c.name}}
        parallel = False if c.disable_parallel_tool_use else None
    fmt = req.output_config and req.output_config.format
    body = {"messages": chat_messages(req), "tools": tools or None, "tool_choice": choice,
            "parallel_tool_calls": parallel,
            "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.json_schema}}
            if fmt else None}
    if isinstance(req, MessagesRequest):
        body.update(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                    stop=req.stop_sequences, stream=req.stream)
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as e:  # what the Messages shape allows and the chat shape does not
        first = e.errors()[0]
        raise APIError(400, f"The request cannot be read: {first['msg']}", param="messages") from None


class MessagesServing:
    """The Messages door: a request in, its answer out, through the chat planning and the shared worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _planned(self, req: CountTokensRequest) -> tuple[Plan, list[int]]:
        try:
            p = plan(chat_request(req), self.ctx, thinking=thinking(req, self.ctx))
            return p, _prompt(self.ctx, p)
        except APIError as e:
            raise _renamed(e) from None

    async def __call__(self, req: MessagesRequest, request: Request) -> Response:
        ctx = self.ctx
        ctx.check_model(req.model)
        check_fields(req, ENDPOINT)
        p, ids = await ctx.prepare(lambda: self._planned(req))
        job = Job([ids], p.params, asyncio.get_running_loop())
        answer = AnthropicAnswer(ctx.model_name, p, len(ids), bool(req.stream))
        return await ctx.answer(job, answer, bool(req.stream), request)

    async def count_tokens(self, req: CountTokensRequest) -> Response:
        """The prompt's tokens for this request, as /v1/messages would read them (its usage.input_tokens)."""
        self.ctx.check_model(req.model)
        check_fields(req, ENDPOINT + "/count_tokens")
        _, ids = await self.ctx.prepare(lambda: self._planned(req))
        return JSONResponse({"input_tokens": len(ids)})

