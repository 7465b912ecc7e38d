"""A scripted stand-in for Inference, so the API's parsing, streaming and queueing are tested without
a model. The prompt is the UTF-8 bytes of a plain rendering of the messages (one token per byte); the
answer is picked by rules matched against the last message and streamed one character per token."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterator

from inference import Delta, GenerationStats, PromptTooLongError, SamplingParams, common_prefix, stop_holdback

WEATHER_CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
# (substring of "role: content" of the last message, reply); first match wins; {last} = that content
RULES: list[tuple[str, str]] = [
    ("user: weather tags", f"<tool_call>\n{WEATHER_CALL}\n</tool_call>"),
    ("user: weather two", f"<tool_call>\n{WEATHER_CALL}\n</tool_call>\n<tool_call>\n"
                          '{"name": "calculate", "arguments": {"expression": "2+2"}}\n</tool_call>'),
    ("user: weather bare", WEATHER_CALL),
    ("user: weather fenced",
     '好的，我来查询天气：\n```json\n{"name": "get_weather", "arguments": {"city": "北京"}}\n```'),
    ("user: weather broken", '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'),
    ("user: weather unknown", '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>'),
    ("user: weather react", "Thought: I should look the weather up.\nAction: get_weather\n"
                            'Action Input: {"city": "Paris"}\nObservation: it is always sunny'),
    ("user: Observation:", "Thought: I know the final answer now.\nFinal Answer: The tool says {last}"),
    ("tool: ", "The tool says {last}"),
    ("user: code please", "Here:\n```python\nprint('hi')\n```\nDone."),
    ("user: slow", "tick " * 2000),
    ("user: count", "one two three four five six seven eight nine ten"),
    ("user: chinese", "你好，世界！这是一个测试。"),
    ("", "You said: {last}"),
]


@dataclass
class FakeConfig:
    max_input_length: int = 2048
    max_output_length: int = 4096
    kv_cache_length: int = 8192
    sampling_method: str = "greedy"
    sampling_value: float = 0.8
    temperature: float = 0.7
    seed: int | None = None


def render(messages: list[dict], tools: list[dict] | None) -> str:
    head = f"<|tools|>{json.dumps(tools, ensure_ascii=False)}\n" if tools else ""
    body = ""
    for m in messages:
        calls = f" calls={json.dumps(m['tool_calls'], ensure_ascii=False)}" if m.get("tool_calls") else ""
        body += f"<|{m['role']}|>{m.get('content') or ''}{calls}\n"
    return head + body + "<|assistant|>"


class FakeInference:
    def __init__(self, config: FakeConfig | None = None, token_delay_s: float = 0.0,
                 slow_delay_s: float = 0.005) -> None:
        self.config = config or FakeConfig()
        self.token_delay_s = token_delay_s
        self.slow_delay_s = slow_delay_s
        self.cached: list[int] = []
        self.last_messages: list[dict] = []

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        self.last_messages = messages
        return list(render(messages, tools).encode("utf-8"))

    def reply_for(self, prompt: str) -> str:
        last = prompt[:-len("<|assistant|>")].rstrip("\n").rsplit("\n<|", 1)[-1].lstrip("<|")
        role, _, content = last.partition("|>")
        key = f"{role}: {content}"
        for needle, reply in RULES:
            if needle in key:
                # an echoed "Observation:" would hit the ReAct stop string
                return reply.replace("{last}", content.removeprefix("Observation: "))
        raise AssertionError("the catch-all rule always matches")

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        if len(prompt_ids) >= self.config.kv_cache_length:
            raise PromptTooLongError(f"the prompt is {len(prompt_ids)} tokens; the cache holds "
                                     f"{self.config.kv_cache_length}")
        start = time.perf_counter()
        reused = common_prefix(self.cached, prompt_ids)
        prompt = bytes(prompt_ids).decode("utf-8", errors="replace")
        reply = self.reply_for(prompt)
        delay = self.slow_delay_s if reply.startswith("tick") else self.token_delay_s
        self.cached = list(prompt_ids)
        text, finish, n, sent = "", "stop", 0, 0
        for ch in reply:
            if n >= params.max_new_tokens:
                finish = "length"
                break
            if delay:
                time.sleep(delay)
            n += 1
            text += ch
            self.cached += list(ch.encode("utf-8"))
            hit = min((i for i in (text.find(s) for s in params.stop if s) if i >= 0), default=-1)
            if hit >= 0:
                if hit > sent:
                    yield Delta(text[sent:hit], n)
                sent = len(text)
                break
            ready = len(text) - stop_holdback(text, params.stop)
            if ready > sent:
                yield Delta(text[sent:ready], n)
                sent = ready
        if sent < len(text):
            yield Delta(text[sent:], None)
        elapsed = time.perf_counter() - start
        stats = GenerationStats(prompt_tokens=len(prompt_ids), completion_tokens=n, reused_tokens=reused,
                                first_token_s=0.0, decode_tok_s=0.0, total_tok_s=n / elapsed if elapsed else 0.0)
        yield Delta("", None, finish_reason=finish, stats=stats)
