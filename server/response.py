"""OpenAI's response objects: chat.completion and its streamed chat.completion.chunk pieces. How calls
appear in them is the request's mode's business (server/modes.py)."""
from __future__ import annotations

import time
import uuid
from typing import Any

from server.modes import Mode
from server.toolcall.common import ToolCall


def usage(stats: Any) -> dict:
    """stats: the GenerationStats of the last Delta, or None when the answer ended without one."""
    completion = stats.completion_tokens if stats else 0
    prompt = stats.prompt_tokens if stats else 0
    reused = stats.reused_tokens if stats else 0
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

    def completion(self, content: str, calls: list[ToolCall], model_reason: str | None, stats: Any) -> dict:
        choice = {"index": 0, "message": self.message(content, calls), "logprobs": None,
                  "finish_reason": self.mode.finish_reason(calls, model_reason)}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage(stats)}

    def chunk(self, delta: dict, reason: str | None = None, with_usage: bool = False) -> dict:
        body = {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
        if with_usage:
            body["usage"] = None  # OpenAI sends null on every chunk but the last when usage was asked for
        return body

    def closing_chunks(self, calls: list[ToolCall], model_reason: str | None, with_usage: bool) -> list[dict]:
        """After the streamed text: the calls, the finish_reason, and the usage when it was asked for."""
        out = [self.chunk(delta, with_usage=with_usage) for delta in self.mode.call_deltas(calls)]
        out.append(self.chunk({}, self.mode.finish_reason(calls, model_reason), with_usage=with_usage))
        return out

    def usage_chunk(self, stats: Any) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(stats)}
