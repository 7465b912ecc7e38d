"""OpenAI's chat messages as a chat template takes them: text parts joined, `developer` as `system`, every
earlier call (tool_calls, or a legacy function_call) rendered back with its arguments as an object, and an
assistant turn's reasoning_content passed on for the template to keep or drop."""
from __future__ import annotations

import json

from server.errors import APIError
from server.schema import ChatMessage, FunctionCallIn


def message_text(msg: ChatMessage, index: int) -> str:
    """The message's text; a part that is not text (an image, audio) is refused with a 400."""
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    parts = []
    for part in msg.content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"messages[{index}]: content part type '{part.type}' is not supported; "
                                "this model reads text only", param=f"messages.{index}.content")
        parts.append(part.text)
    return "\n".join(parts)


def _arguments(call: FunctionCallIn) -> dict | str:
    """Templates render arguments with `tojson`: give them the object, not its JSON text."""
    if isinstance(call.arguments, dict):
        return call.arguments
    try:
        value = json.loads(call.arguments)
    except ValueError:
        return call.arguments
    return value if isinstance(value, dict) else call.arguments


def template_messages(msgs: list[ChatMessage]) -> list[dict]:
    out = []
    for i, m in enumerate(msgs):
        role = {"developer": "system", "function": "tool"}.get(m.role, m.role)
        d: dict = {"role": role, "content": message_text(m, i)}
        calls = list(m.tool_calls or [])
        if m.function_call is not None:
            calls.append(m.function_call)  # a legacy call in a `tools` conversation is still a call
        if calls:
            fns = [c.function if hasattr(c, "function") else c for c in calls]
            d["tool_calls"] = [{"type": "function", "function": {"name": f.name, "arguments": _arguments(f)}}
                               for f in fns]
        if m.name and role == "tool":
            d["name"] = m.name
        if m.reasoning_content and role == "assistant":  # Qwen3's template keeps it within the current question
            d["reasoning_content"] = m.reasoning_content
        out.append(d)
    return out
