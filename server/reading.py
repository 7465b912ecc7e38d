"""One choice's model text read as an answer, the same way for every door: chat-template markup cut out, the
thinking split from the answer (when the request lets the model think), and tool calls found by the request's
mode. A door only formats what comes out: pieces of thinking and of answer text as they stream, then the
calls at the end."""
from __future__ import annotations

from dataclasses import dataclass

from server.markup import MarkupFilter
from server.modes import Mode
from server.reasoning import ThinkingSplitter
from server.toolcall.common import ToolCall


@dataclass
class Piece:
    kind: str  # "thinking" or "answer"
    text: str


class ChoiceReader:
    """thinks: the model may open with <think>...</think> (False: it cannot, and its text is all answer);
    starts_inside: the prompt ended inside a <think> the template opened."""

    def __init__(self, mode: Mode, thinks: bool = False, starts_inside: bool = False) -> None:
        self.markup = MarkupFilter()
        self.splitter = ThinkingSplitter(starts_inside) if thinks else None
        self.calls_reader = mode.reader()

    def _pieces(self, parts: list[tuple[str, str]]) -> list[Piece]:
        out = []
        for kind, text in parts:
            if kind == "answer":
                text = self.calls_reader.feed(text)
            if text:
                out.append(Piece(kind, text))
        return out

    def feed(self, text: str) -> list[Piece]:
        text = self.markup.feed(text)
        return self._pieces(self.splitter.feed(text) if self.splitter else [("answer", text)])

    def finish(self) -> tuple[list[Piece], list[ToolCall]]:
        """What was held back, then the calls the answer made (its text is then what is not a call)."""
        rest = self.markup.finish()
        parts = (self.splitter.feed(rest) + self.splitter.finish()) if self.splitter else [("answer", rest)]
        pieces = self._pieces(parts)
        tail, calls = self.calls_reader.finish()
        if tail:
            pieces.append(Piece("answer", tail))
        return pieces, calls

    def read(self, text: str, last: bool) -> tuple[list[Piece], list[ToolCall]]:
        """A Delta's text as pieces; on the answer's last Delta, what was held back too and the calls."""
        pieces = self.feed(text)
        if not last:
            return pieces, []
        more, calls = self.finish()
        return pieces + more, calls
