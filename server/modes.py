"""The three ways a request is answered: plain text, OpenAI's `tools`, and the legacy `functions` (ReAct
prompting). A mode knows what it adds to the prompt, which stream parser reads the model's text, and how
the calls it finds appear in the response; the rest of the server asks the mode, never which one it is."""
from __future__ import annotations

import json

from engine.constraint import declared_arguments
from server.messages import message_text, template_messages
from server.schema import ChatMessage
from server.toolcall import react
from server.toolcall.common import ToolCall
from server.toolcall.stream import PlainStream, ReactStream, ToolStream


class Mode:
    """What every mode answers. This base behaves as a mode that finds no calls; Plain is exactly that."""

    tools: list[dict] | None = None  # the tools the chat template renders into the prompt
    stops: tuple[str, ...] = ()  # stop strings the mode's answer format needs besides the client's
    calls_reason = "stop"  # finish_reason of an answer that was calls

    def messages(self, msgs: list[ChatMessage]) -> list[dict]:
        return template_messages(msgs)

    def reader(self) -> PlainStream:
        """A fresh parser for one answer: feed it the text as it comes, finish it at the end."""
        return PlainStream()

    def finish_reason(self, calls: list[ToolCall], model_reason: str | None) -> str:
        return self.calls_reason if calls else model_reason or "stop"

    def message_fields(self, calls: list[ToolCall]) -> dict:
        """What the calls add to the assistant message of a whole (non-streamed) answer."""
        return {}

    def call_deltas(self, calls: list[ToolCall]) -> list[dict]:
        """The calls as streamed deltas, sent after the text."""
        return []


class Plain(Mode):
    """No tools offered (or tool_choice "none"): the text is the answer, even one that looks like a call."""


class Tools(Mode):
    """OpenAI's `tools`: the chat template renders them, and calls in any format we parse become tool_calls."""

    calls_reason = "tool_calls"

    def __init__(self, tools: list[dict], parallel: bool = True) -> None:
        self.tools = tools
        self.parallel = parallel  # False: one call at most (parallel_tool_calls: false)
        self.names = {t["function"]["name"] for t in tools}
        self.declared = {t["function"]["name"]: declared_arguments(t["function"].get("parameters")) for t in tools}

    def reader(self) -> PlainStream:
        return ToolStream(self.names, self.declared, limit=None if self.parallel else 1)

    def message_fields(self, calls: list[ToolCall]) -> dict:
        return {"tool_calls": [_tool_call(c) for c in calls]} if calls else {}

    def call_deltas(self, calls: list[ToolCall]) -> list[dict]:
        # Whole calls, one delta each: clients concatenate argument pieces, so one piece is valid.
        return [{"tool_calls": [{"index": i, **_tool_call(c)}]} for i, c in enumerate(calls)]


def _tool_call(c: ToolCall) -> dict:
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}


class Functions(Mode):
    """The legacy `functions`: a ReAct system prompt instead of the template's tools, earlier calls and
    results rewritten as Action / Observation turns, and one function_call per answer."""

    stops = (react.OBSERVATION,)  # where the model would start inventing the function's result
    calls_reason = "function_call"

    def __init__(self, functions: list[dict]) -> None:
        self.functions = functions
        self.names = {f["name"] for f in functions}
        self.arg_names = {f["name"]: set((f.get("parameters") or {}).get("properties") or {}) for f in functions}

    def messages(self, msgs: list[ChatMessage]) -> list[dict]:
        out: list[dict] = []
        for i, m in enumerate(msgs):
            text = message_text(m, i)
            if m.role in ("system", "developer"):
                out.append({"role": "system", "content": text})
            elif m.role == "assistant" and (m.function_call or m.tool_calls):
                f = m.function_call or m.tool_calls[0].function
                args = f.arguments if isinstance(f.arguments, str) else json.dumps(f.arguments, ensure_ascii=False)
                thought = text.strip() or "Thought: I need to call a tool."
                out.append({"role": "assistant", "content": f"{thought}\nAction: {f.name}\nAction Input: {args}"})
            elif m.role in ("function", "tool"):
                # The result goes back as the Observation the ReAct format expects after an Action.
                out.append({"role": "user", "content": f"{react.OBSERVATION} {text}"})
            else:
                out.append({"role": m.role, "content": text})
        instructions = react.system_prompt(self.functions)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + instructions}
        else:
            out.insert(0, {"role": "system", "content": instructions})
        return out

    def reader(self) -> PlainStream:
        return ReactStream(self.names, self.arg_names)

    def message_fields(self, calls: list[ToolCall]) -> dict:
        return {"function_call": _function_call(calls[0])} if calls else {}

    def call_deltas(self, calls: list[ToolCall]) -> list[dict]:
        return [{"function_call": _function_call(calls[0])}] if calls else []


def _function_call(c: ToolCall) -> dict:
    return {"name": c.name, "arguments": c.arguments}
