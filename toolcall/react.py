"""The legacy ReAct format used with the `functions` field (Qwen1.5/Qwen2 style prompting):
Thought: ... / Action: name / Action Input: {json} / Observation: ... / Final Answer: ..."""
from __future__ import annotations

import json
import re

from toolcall.common import Parsed, ToolCall, arguments_text

ACTION = re.compile(r"Action:\s*(.+?)\s*\n\s*Action Input:\s*(.*)", re.DOTALL)
FINAL = "Final Answer:"
OBSERVATION = "Observation:"  # where the model would start inventing the tool's result: a stop string


def parse(text: str, names: set[str]) -> Parsed | None:
    """A function call, or the final answer with the reasoning removed; None for text in neither shape."""
    if FINAL in text:
        return Parsed(text.split(FINAL, 1)[1].strip(), [])
    m = ACTION.search(text)
    if not m or m.group(1) not in names:
        return None
    raw = m.group(2).split(OBSERVATION, 1)[0].strip()
    args = arguments_text(raw) if raw else "{}"
    # Non-JSON input is passed on as written: the legacy API never promised valid JSON arguments.
    return Parsed(None, [ToolCall(m.group(1), args if args is not None else raw)])


def system_prompt(functions: list[dict]) -> str:
    """The instructions that make a chat model answer in the ReAct shape."""
    lines = ["You can use these tools to answer the question:", ""]
    for f in functions:
        params = json.dumps(f.get("parameters") or {}, ensure_ascii=False)
        lines.append(f"{f['name']}: {f.get('description') or ''} Parameters: {params}")
    names = ", ".join(f["name"] for f in functions)
    lines += ["", "Reply in exactly this format:", "",
              "Thought: what you need to do next",
              f"Action: the tool to call, one of [{names}]",
              "Action Input: the tool's arguments as a JSON object",
              "Observation: the tool's result (given to you, never write it yourself)",
              "... (Thought / Action / Action Input / Observation may repeat)",
              "Thought: I know the final answer now",
              "Final Answer: the answer to the question"]
    return "\n".join(lines)
