"""One Responses API answer as its Deltas come in: the choice's text read by the shared ChoiceReader, turned
into output items (a reasoning item for the thinking, a message for the answer, a function_call per call) and,
when streaming, into the typed events OpenAI documents, in its order and with sequence numbers. The same
state builds the collected Response object, so a streamed answer and a collected one cannot differ."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable

from inference import Delta
from server.errors import APIError
from server.reading import ChoiceReader, Piece
from server.toolcall.common import ToolCall

# OpenAI's Responses error codes that our failures map onto; any other failure is a server_error.
FAILURE_CODES = {400: "invalid_prompt", 429: "rate_limit_exceeded"}


def event(kind: str, body: dict) -> dict:
    """One server-sent event as sse-starlette writes it: an `event:` line naming the type, then the JSON."""
    return {"event": kind, "data": json.dumps({"type": kind, **body}, ensure_ascii=False)}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _Open:
    """The output item being written: a reasoning item or a message, with its text so far."""

    def __init__(self, kind: str, index: int, summary: bool = False) -> None:
        self.kind, self.index, self.summary = kind, index, summary
        self.id = _id("rs" if kind == "reasoning" else "msg")
        self.text = ""

    def item(self, status: str) -> dict:
        done = status != "in_progress"
        if self.kind == "reasoning":
            content = [{"type": "reasoning_text", "text": self.text}] if done else []
            summary = [{"type": "summary_text", "text": self.text}] if done and self.summary else []
            return {"type": "reasoning", "id": self.id, "summary": summary, "content": content, "status": status}
        content = [_text_part(self.text)] if done else []
        return {"type": "message", "id": self.id, "role": "assistant", "status": status, "content": content}

    def part(self, text: str) -> dict:
        return {"type": "reasoning_text", "text": text} if self.kind == "reasoning" else _text_part(text)


class ResponsesAnswer:
    """head: the Response object's fields that echo the request (server/responses.py); reader: the choice's
    ChoiceReader; count_tokens: the tokenizer's length of a text (for reasoning_tokens); summary: the request
    asked for a reasoning summary, which is the thinking itself (this model writes no shorter one)."""

    def __init__(self, head: dict, reader: ChoiceReader, count_tokens: Callable[[str], int],
                 summary: bool = False) -> None:
        self.head, self.reader, self.count_tokens, self.summary = head, reader, count_tokens, summary
        self.output: list[dict] = []
        self.open: _Open | None = None
        self.held = ""  # answer text that is only whitespace so far: a message is opened for real text only
        self.thinking: list[str] = []
        self.last: Delta | None = None
        self.seq = 0

    def _event(self, kind: str, **body: Any) -> dict:
        out = event(kind, {**body, "sequence_number": self.seq})
        self.seq += 1
        return out

    def _where(self) -> dict:
        assert self.open is not None
        return {"item_id": self.open.id, "output_index": self.open.index, "content_index": 0}

    def _start(self, kind: str) -> list[dict]:
        out = self._close("completed")
        self.open = _Open(kind, len(self.output), self.summary)
        self.output.append(self.open.item("in_progress"))
        return out + [self._event("response.output_item.added", output_index=self.open.index,
                                  item=self.open.item("in_progress")),
                      self._event("response.content_part.added", **self._where(), part=self.open.part(""))]

    def _close(self, status: str) -> list[dict]:
        o = self.open
        if o is None:
            return []
        where, self.open = {"item_id": o.id, "output_index": o.index, "content_index": 0}, None
        self.output[o.index] = o.item(status)
        done = (self._event("response.reasoning_text.done", **where, text=o.text) if o.kind == "reasoning"
                else self._event("response.output_text.done", **where, text=o.text, logprobs=[]))
        out = [done, self._event("response.content_part.done", **where, part=o.part(o.text))]
        if o.kind == "reasoning" and o.summary:
            at = {"item_id": o.id, "output_index": o.index, "summary_index": 0}
            part = {"type": "summary_text", "text": o.text}
            out += [self._event("response.reasoning_summary_part.added", **at, part={**part, "text": ""}),
                    self._event("response.reasoning_summary_text.delta", **at, delta=o.text),
                    self._event("response.reasoning_summary_text.done", **at, text=o.text),
                    self._event("response.reasoning_summary_part.done", **at, part=part)]
        return out + [self._event("response.output_item.done", output_index=o.index, item=o.item(status))]

    def _write(self, kind: str, text: str) -> list[dict]:
        o = self.open
        if o is None or o.kind != kind:
            raise AssertionError("text is written into an open item of its kind")
        o.text += text
        if kind == "reasoning":
            return [self._event("response.reasoning_text.delta", **self._where(), delta=text)]
        return [self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])]

    def _piece(self, piece: Piece) -> list[dict]:
        if piece.kind == "thinking":
            self.thinking.append(piece.text)
            out = [] if self.open and self.open.kind == "reasoning" else self._start("reasoning")
            return out + self._write("reasoning", piece.text)
        if not (self.open and self.open.kind == "message"):
            if not (self.held + piece.text).strip():
                self.held += piece.text
                return []
            piece, self.held = Piece("answer", self._first_text(self.held + piece.text)), ""
            return self._start("message") + self._write("message", piece.text)
        return self._write("message", piece.text)

    def _first_text(self, text: str) -> str:
        """The start of the message: after a reasoning item, without the blank lines Qwen3 writes between
        </think> and the answer."""
        return text.lstrip("\n") if any(item["type"] == "reasoning" for item in self.output) else text

    def _calls(self, calls: list[ToolCall]) -> list[dict]:
        out = []
        for c in calls:
            index, item_id = len(self.output), _id("fc")
            item = {"type": "function_call", "id": item_id, "call_id": c.id, "name": c.name, "arguments": "",
                    "status": "in_progress"}
            out.append(self._event("response.output_item.added", output_index=index, item=dict(item)))
            # The whole arguments in one delta: calls are known only once the answer ends.
            out.append(self._event("response.function_call_arguments.delta", item_id=item_id, output_index=index,
                                   delta=c.arguments))
            out.append(self._event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                                   name=c.name, arguments=c.arguments))
            item.update(arguments=c.arguments, status="completed")
            self.output.append(item)
            out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def opening(self) -> list[dict]:
        return [self._event("response.created", response=self._response("in_progress")),
                self._event("response.in_progress", response=self._response("in_progress"))]

    def feed(self, index: int, delta: Delta) -> list[dict]:
        pieces, calls = self.reader.read(delta.text, last=bool(delta.finish_reason))
        if delta.finish_reason:
            self.last = delta
        out = [e for p in pieces for e in self._piece(p)]
        if delta.finish_reason:
            if not calls and not (self.open and self.open.kind == "message"):
                text, self.held = self._first_text(self.held), ""
                out += self._start("message") + (self._write("message", text) if text else [])
            out += self._close("incomplete" if self._cut() else "completed") + self._calls(calls)
        return out

    def closing(self) -> list[dict]:
        status = self._status()
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return [self._event(kind, response=self._response(status))]

    def error_event(self, error: APIError) -> dict:
        failure = {"code": FAILURE_CODES.get(error.status, "server_error"), "message": error.message}
        return self._event("response.failed", response={**self._response("failed"), "error": failure})

    def result(self) -> dict:
        return self._response(self._status())

    def _cut(self) -> bool:
        return self.last is not None and self.last.finish_reason == "length"

    def _status(self) -> str:
        return "incomplete" if self._cut() else "completed"

    def _response(self, status: str) -> dict:
        body = {**self.head, "status": status, "output": [dict(item) for item in self.output]}
        usage = self._usage() if status in ("completed", "incomplete") else None
        if usage is not None:  # the schema has no null usage: it is left out until the answer ends
            body["usage"] = usage
        if status == "completed":
            body["completed_at"] = int(time.time())
        if status == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        return body

    def _usage(self) -> dict | None:
        stats = self.last and self.last.stats
        if stats is None:
            return None
        thought = self.count_tokens("".join(self.thinking)) if self.thinking else 0
        return {"input_tokens": stats.prompt_tokens, "output_tokens": stats.completion_tokens,
                "total_tokens": stats.prompt_tokens + stats.completion_tokens,
                # cached: prompt tokens found in the KV cache; nothing is written to a provider-side cache.
                "input_tokens_details": {"cached_tokens": stats.reused_tokens, "cache_write_tokens": 0},
                # The thinking's length in tokens, counted again from its text: the model's own tokens are
                # not marked as thinking or answer (the tags around it are not counted).
                "output_tokens_details": {"reasoning_tokens": min(thought, stats.completion_tokens)}}
