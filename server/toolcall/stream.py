"""Streaming with tools offered: pass plain text on at once, hold back whatever may become a call,
and decide at the end of the answer. Non-streamed answers use the same classes, fed once."""
from __future__ import annotations

from server.toolcall import parse_tool_calls, react
from server.toolcall.common import Parsed, ToolCall, only_declared

TRIGGERS = ("<tool_call>", "```")


class PlainStream:
    """No tools offered: every piece goes straight through."""

    def feed(self, piece: str) -> str:
        return piece

    def finish(self) -> tuple[str, list[ToolCall]]:
        return "", []


class ToolStream(PlainStream):
    """declared: per tool, the argument names its call may carry (None: any); others are dropped."""

    def __init__(self, names: set[str], declared: dict[str, set[str] | None] | None = None,
                 limit: int | None = None) -> None:
        self.names = names
        self.declared = declared or {}
        self.limit = limit  # the most calls an answer may make (None: any)
        self.text = ""
        self.sent = 0
        self.hold_from: int | None = None

    def _trigger(self) -> int | None:
        if self.sent == 0:
            body = self.text.lstrip()
            if body.startswith(("{", "[")):
                return len(self.text) - len(body)
        found = [i for i in (self.text.find(t, self.sent) for t in TRIGGERS) if i >= 0]
        return min(found) if found else None

    def _safe_end(self) -> int:
        """End of the text that cannot be the start of a trigger still being written."""
        if self.sent == 0 and not self.text.strip():
            return 0  # a bare JSON call may still follow the leading whitespace
        for n in range(max(len(t) for t in TRIGGERS) - 1, 0, -1):
            tail = self.text[-n:]
            if len(tail) == n and any(t.startswith(tail) for t in TRIGGERS):
                return len(self.text) - n
        return len(self.text)

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.hold_from is None:
            self.hold_from = self._trigger()
        end = self.hold_from if self.hold_from is not None else self._safe_end()
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent += len(out)
        return out

    def parse(self, text: str) -> Parsed | None:
        return parse_tool_calls(text, self.names)

    def finish(self) -> tuple[str, list[ToolCall]]:
        rest = self.text[self.sent:]
        found = self.parse(rest)
        if found is None:
            return rest, []
        return found.content or "", [only_declared(c, self.declared.get(c.name)) for c in found.calls[:self.limit]]


class ReactStream(ToolStream):
    """Legacy `functions`: the reasoning is never shown; the final answer streams once it starts."""

    MARK = react.FINAL

    def __init__(self, names: set[str], arg_names: dict[str, set[str]] | None = None) -> None:
        super().__init__(names)
        self.arg_names = arg_names or {}

    def feed(self, piece: str) -> str:
        self.text += piece
        at = self.text.find(self.MARK)
        if at < 0:
            return ""
        self.sent = max(self.sent, at + len(self.MARK))
        out = self.text[self.sent:]
        if self.sent == at + len(self.MARK):
            out = out.lstrip()  # the space after the marker is formatting, not answer
        self.sent = len(self.text) if out else self.sent
        return out

    def parse(self, text: str) -> Parsed | None:
        return react.parse(text, self.names, self.arg_names)

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self.MARK in self.text:
            return self.feed(""), []
        return super().finish()  # nothing was sent: the whole text is parsed
