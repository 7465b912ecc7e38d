"""An Anthropic message built from one choice's Deltas: thinking, text and tool_use content blocks, the stop
reason and usage; streamed as Anthropic's events (message_start, ping, content_block_start /
content_block_delta / content_block_stop per block, message_delta, message_stop), or collected into one
message. The text is read by the same ChoiceReader as every other door's."""
from __future__ import annotations

import json
import uuid

from inference import Delta
from server.chat import Plan
from server.errors import APIError
from server.reading import Piece
from server.toolcall.common import ToolCall

EMPTY_BLOCK = {"thinking": {"type": "thinking", "thinking": "", "signature": ""}, "answer": {"type": "text", "text": ""}}


def tool_input(arguments: str) -> dict:
    """A call's arguments (JSON text) as the object tool_use.input is."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def event(kind: str, body: dict) -> dict:
    """One server-sent event as Anthropic sends it: the type on the event line and in the data."""
    return {"event": kind, "data": json.dumps({"type": kind, **body}, ensure_ascii=False)}


class AnthropicAnswer:
    def __init__(self, model: str, plan: Plan, prompt_tokens: int, streaming: bool) -> None:
        self.id = "msg_" + uuid.uuid4().hex
        self.model, self.mode, self.prompt_tokens, self.streaming = model, plan.mode, prompt_tokens, streaming
        self.reader = plan.reader()
        self.blocks: list[dict] = []  # the content so far, each block whole
        self.open: str | None = None  # the kind of the block being streamed ("thinking" or "answer")
        self.last: Delta | None = None

    def _message(self, content: list[dict], stop_reason: str | None, stop_sequence: str | None,
                 output_tokens: int) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                "usage": {"input_tokens": self.prompt_tokens, "output_tokens": output_tokens}}

    def _add(self, piece: Piece) -> list[dict]:
        """Append a piece to the content: to the open block of its kind, else a new block."""
        out = []
        if self.open != piece.kind:
            out += self._close()
            self.blocks.append(dict(EMPTY_BLOCK[piece.kind]))
            self.open = piece.kind
            out.append(event("content_block_start", {"index": len(self.blocks) - 1,
                                                     "content_block": EMPTY_BLOCK[piece.kind]}))
        block = self.blocks[-1]
        field = "thinking" if piece.kind == "thinking" else "text"
        block[field] += piece.text
        delta = {"type": "thinking_delta", "thinking": piece.text} if piece.kind == "thinking" else \
            {"type": "text_delta", "text": piece.text}
        out.append(event("content_block_delta", {"index": len(self.blocks) - 1, "delta": delta}))
        return out

    def _close(self) -> list[dict]:
        if self.open is None:
            return []
        self.open = None
        return [event("content_block_stop", {"index": len(self.blocks) - 1})]

    def _calls(self, calls: list[ToolCall]) -> list[dict]:
        out = self._close()
        for call in calls:
            self.blocks.append({"type": "tool_use", "id": "toolu_" + call.id.removeprefix("call_"), "name": call.name,
                                "input": tool_input(call.arguments)})
            index = len(self.blocks) - 1
            out.append(event("content_block_start", {"index": index, "content_block": {
                **self.blocks[-1], "input": {}}}))
            out.append(event("content_block_delta", {"index": index, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(self.blocks[-1]["input"], ensure_ascii=False)}}))
            out.append(event("content_block_stop", {"index": index}))
        return out

    def _stop(self) -> tuple[str, str | None]:
        """stop_reason and stop_sequence from how the answer ended."""
        last = self.last
        if any(b["type"] == "tool_use" for b in self.blocks):
            return "tool_use", None
        if last is not None and last.stop is not None and last.stop not in self.mode.stops:
            return "stop_sequence", last.stop
        return ("max_tokens" if last is not None and last.finish_reason == "length" else "end_turn"), None

    def _output_tokens(self) -> int:
        return self.last.stats.completion_tokens if self.last is not None and self.last.stats else 0

    def opening(self) -> list[dict]:
        return [event("message_start", {"message": self._message([], None, None, 0)}), event("ping", {})]

    def feed(self, index: int, delta: Delta) -> list[dict]:
        pieces, calls = self.reader.read(delta.text, last=bool(delta.finish_reason))
        if delta.finish_reason:
            self.last = delta
        out = [e for piece in pieces for e in self._add(piece)]
        if delta.finish_reason:
            out += self._calls(calls) if calls else self._close()
        return out if self.streaming else []

    def closing(self) -> list[dict]:
        reason, sequence = self._stop()
        return [event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence},
                                        "usage": {"output_tokens": self._output_tokens()}}),
                event("message_stop", {})]

    def error_event(self, error: APIError) -> dict:
        body = error.anthropic_body()
        return {"event": "error", "data": json.dumps(body, ensure_ascii=False)}

    def result(self) -> dict:
        reason, sequence = self._stop()
        return self._message(self.blocks, reason, sequence, self._output_tokens())
