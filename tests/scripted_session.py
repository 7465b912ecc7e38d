"""The API tests' model: a scripted Session under the real Inference and the real server. It decodes the
prompt it is fed with the tiny model's tokenizer, picks a reply by RULES (matched against the last message),
and steers greedy decoding to it: at each step a large logit on the reply's next token, then on <|im_end|>.
Everything above the session (template, tokenizer, stop strings, prefix reuse, the server) is the real code."""
from __future__ import annotations

import re
import time

import numpy as np
from transformers import AutoTokenizer

from config import InferenceConfig
from inference import Inference
from session import Session

WEATHER_CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
SLOW = "tick " * 2000
# What a page must show as text, never run: each piece would set window.__pwned if it were treated as HTML.
HOSTILE = ('Look: <script>window.__pwned = 1</script>\n<img src=x onerror="window.__pwned = 2">\n'
           "[click me](javascript:window.__pwned=3) and <a href=\"javascript:window.__pwned=4\">this</a>\n"
           '<iframe srcdoc="<script>parent.__pwned = 5</script>"></iframe> **bold <b>tag</b>**')
# (substring of "role: content" of the last message, reply); first match wins; {last} = that content
RULES: list[tuple[str, str]] = [
    ("user: think weather",
     f"<think>\nThe weather needs a tool.\n</think>\n\n<tool_call>\n{WEATHER_CALL}\n</tool_call>"),
    ("user: think json", '<think>\nA city and some days.\n</think>\n\n{"city": "Paris", "days": 3}'),
    ("user: think", "<think>\nLet me see.\n</think>\n\nThe answer is 4."),
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
    ("user: slow", SLOW),
    ("user: html please", HOSTILE),
    ("user: count", "one two three four five six seven eight nine ten"),
    ("user: markup", "Done.</tool_response>\n<|im_start|>"),
    ("user: chinese", "你好，世界！这是一个测试。"),
    ("user: json object", '{"city": "Paris", "days": 3}'),
    ("", "You said: {last}"),
]
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
NO_THINKING = "<think>\n\n</think>\n\n"  # what Qwen3's generation prompt adds when thinking is off
THOUGHT = re.compile(r"<think>.*?</think>\n*", re.DOTALL)
STEER = 100.0  # far above the other logits (0): the steered token wins at any temperature a request may set
SLOW_STEP_S = 0.005  # per token of SLOW, so that a client can leave (or be queued behind it) mid-answer
TOOL_RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.DOTALL)


def last_message(prompt: str) -> tuple[str, str]:
    """(role, content) of the turn before the generation prompt of a ChatML text. Tool results, which the
    template wraps in <tool_response> blocks inside a user turn (as Qwen2.5's does), count as role "tool"."""
    role, _, content = prompt.split(IM_START)[-2].partition("\n")
    content = content.removesuffix("\n").removesuffix(IM_END)
    results = TOOL_RESPONSE.findall(content)
    return ("tool", results[-1]) if role == "user" and results else (role, content)


def reply_to(role: str, content: str) -> str:
    key = f"{role}: {content}"
    for needle, reply in RULES:
        if needle in key:
            # an echoed "Observation:" would hit the ReAct stop string
            return reply.replace("{last}", content.removeprefix("Observation: "))
    raise AssertionError("the catch-all rule always matches")


class ScriptedSession(Session):
    def __init__(self, config: InferenceConfig) -> None:
        super().__init__(config)
        self.tokenizer = AutoTokenizer.from_pretrained(config.session.hf_model_dir, local_files_only=True)
        self.header = self.tokenizer.encode(IM_START + "assistant\n", add_special_tokens=False)
        self.no_thinking = self.header + self.tokenizer.encode(NO_THINKING, add_special_tokens=False)
        self.end = self.tokenizer.convert_tokens_to_ids(IM_END)
        self.ids: list[int] = []  # what the cache holds
        self.answer_at: int | None = None  # where the scripted answer starts in ids
        self.reply: list[int] = []
        self.step_s = 0.0

    @property
    def kv_len(self) -> int:
        return self.config.session.kv_cache_length

    @property
    def length(self) -> int:
        return len(self.ids)

    def _forward(self, input_ids: np.ndarray, n_logits: int) -> np.ndarray | None:
        self.ids += input_ids[0].tolist()
        if not n_logits:
            return None
        thinking_off = self.ids[-len(self.no_thinking):] == self.no_thinking
        if thinking_off or self.ids[-len(self.header):] == self.header:  # a prompt ends here: script its answer
            prompt = self.tokenizer.decode(self.ids)
            text = reply_to(*last_message(prompt.removesuffix(NO_THINKING)))
            if thinking_off:  # the template closed the thinking: the model answers at once
                text = THOUGHT.sub("", text)
            self.answer_at, self.reply = len(self.ids), self.tokenizer.encode(text, add_special_tokens=False)
            self.step_s = SLOW_STEP_S if text == SLOW else 0.0
        if self.step_s:
            time.sleep(self.step_s)
        logits = np.zeros((n_logits, self.config.shape.vocab_size), np.float32)
        for row, end in zip(logits, range(len(self.ids) - n_logits + 1, len(self.ids) + 1)):
            row[self._next_token(end)] = STEER
        return logits

    def _next_token(self, end: int) -> int:
        """The token after ids[:end]: the reply's next one while the answer follows the reply, else the end."""
        if self.answer_at is None or end < self.answer_at:
            return self.end
        done = self.ids[self.answer_at:end]
        if len(done) < len(self.reply) and done == self.reply[:len(done)]:
            return self.reply[len(done)]
        return self.end

    def truncate(self, n: int) -> None:
        del self.ids[max(0, n):]
        if self.answer_at is not None and n < self.answer_at:
            self.answer_at = None

    def reset(self) -> None:
        self.truncate(0)


def scripted_inference(model_dir: str, max_input_length: int = 2048) -> Inference:
    """The real Inference on a ScriptedSession, with room for the SLOW reply's first 4096 tokens."""
    # The session is given, so the session type only has to pass the config's validation.
    config = InferenceConfig.create(model_dir, session_type="pytorch", max_input_length=max_input_length,
                                    max_output_length=4096, kv_cache_length=8192, sampling_method="greedy")
    return Inference(config, session=ScriptedSession(config))
