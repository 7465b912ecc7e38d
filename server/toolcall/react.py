"""The legacy ReAct format used with the `functions` field (Qwen1.5/Qwen2 style prompting):
Thought: ... / Action: name / Action Input: {json} / Observation: ... / Final Answer: ..."""
from __future__ import annotations

import json
import re

from server.toolcall.common import Parsed, ToolCall, arguments_text

ACTION = re.compile(r"Action:\s*(.+?)\s*\n\s*Action Input:\s*(.*)", re.DOTALL)
FINAL = "Final Answer:"
OBSERVATION = "Observation:"  # where the model would start inventing the tool's result: a stop string


def parse(text: str, names: set[str], arg_names: dict[str, set[str]] | None = None) -> Parsed | None:
    """A function call, or the final answer with the reasoning removed; None for text in neither shape.
    arg_names (each function's parameter names) lets a sloppy Action line still name its function."""
    if FINAL in text:
        return Parsed(text.split(FINAL, 1)[1].strip(), [])
    m = ACTION.search(text)
    if not m:
        return None
    raw = m.group(2).split(OBSERVATION, 1)[0].strip()
    name = m.group(1) if m.group(1) in names else guess_function(m.group(1), raw, names, arg_names or {})
    if name is None:
        return None
    args = arguments_text(raw) if raw else "{}"
    # Non-JSON input is passed on as written: the legacy API never promised valid JSON arguments.
    return Parsed(None, [ToolCall(name, args if args is not None else raw)])


def guess_function(action: str, raw_args: str, names: set[str], arg_names: dict[str, set[str]]) -> str | None:
    """Small models copy the prompt's placeholder ("Action: the tool to call, one of [a, b]"). Take the
    one function the line names, else the one whose parameters cover the input's keys; else no call."""
    named = [n for n in sorted(names) if re.search(rf"\b{re.escape(n)}\b", action)]
    if len(named) == 1:
        return named[0]
    try:
        keys = set(json.loads(raw_args))
    except (ValueError, TypeError):
        return None
    fits = [n for n in (named or sorted(names)) if keys and keys <= arg_names.get(n, set())]
    return fits[0] if len(fits) == 1 else None


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
