"""OpenAI's response objects: chat.completion and its streamed chat.completion.chunk pieces, for one choice
or several (n). How calls appear in them is the request's mode's business (server/modes.py)."""
from __future__ import annotations

import time
import uuid
from typing import Any, Sequence

from server.modes import Mode
from server.toolcall.common import ToolCall


def usage(stats: Sequence[Any]) -> dict:
    """stats: the GenerationStats of each choice's last Delta (None for a choice that ended without one).
    The prompt counts once, however many choices shared it."""
    known = [s for s in stats if s is not None]
    completion = sum(s.completion_tokens for s in known)
    prompt = known[0].prompt_tokens if known else 0
    reused = known[0].reused_tokens if known else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reused}}


class Builder:
    def __init__(self, model: str, mode: Mode) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.mode = mode

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "qwen-ascend-llm"}

    def message(self, content: str, calls: list[ToolCall]) -> dict:
        return {"role": "assistant", "content": (content.strip() or None) if calls else content, "refusal": None,
                **self.mode.message_fields(calls)}

    def choice(self, index: int, content: str, calls: list[ToolCall], model_reason: str | None,
               logprobs: dict | None = None) -> dict:
        return {"index": index, "message": self.message(content, calls), "logprobs": logprobs,
                "finish_reason": self.mode.finish_reason(calls, model_reason)}

    def completion(self, choices: list[dict], stats: Sequence[Any]) -> dict:
        return {**self._head("chat.completion"), "choices": choices, "usage": usage(stats)}

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
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(stats)}
