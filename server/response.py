"""OpenAI's response objects: chat.completion and its streamed chat.completion.chunk pieces."""
from __future__ import annotations

import time
import uuid
from typing import Any

from server.toolcall.common import ToolCall


def usage(stats: Any, prompt_tokens: int) -> dict:
    completion = stats.completion_tokens if stats else 0
    prompt = stats.prompt_tokens if stats else prompt_tokens
    reused = stats.reused_tokens if stats else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reused}}


def finish_reason(mode: str, calls: list[ToolCall], model_reason: str | None) -> str:
    if calls:
        return "function_call" if mode == "functions" else "tool_calls"
    return model_reason or "stop"


class Builder:
    def __init__(self, model: str, mode: str) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.mode = mode

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "qwen-ascend-llm"}

    def message(self, content: str, calls: list[ToolCall]) -> dict:
        msg: dict = {"role": "assistant", "content": (content.strip() or None) if calls else content,
                     "refusal": None}
        if calls and self.mode == "functions":
            msg["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
        elif calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
        return msg

    def completion(self, content: str, calls: list[ToolCall], reason: str, use: dict) -> dict:
        choice = {"index": 0, "message": self.message(content, calls), "logprobs": None, "finish_reason": reason}
        return {**self._head("chat.completion"), "choices": [choice], "usage": use}

    def chunk(self, delta: dict, reason: str | None = None, with_usage: bool = False) -> dict:
        body = {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
        if with_usage:
            body["usage"] = None  # OpenAI sends null on every chunk but the last when usage was asked for
        return body

    def call_deltas(self, calls: list[ToolCall]) -> list[dict]:
        """Whole calls, one delta each: clients concatenate argument pieces, so one piece is valid."""
        if self.mode == "functions":
            return [{"function_call": {"name": calls[0].name, "arguments": calls[0].arguments}}] if calls else []
        return [{"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                 "function": {"name": c.name, "arguments": c.arguments}}]}
                for i, c in enumerate(calls)]

    def usage_chunk(self, use: dict) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": use}
