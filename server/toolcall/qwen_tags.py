"""Qwen2.5's own format: <tool_call>{"name": ..., "arguments": {...}}</tool_call>, one block per call."""
from __future__ import annotations

import re

from server.toolcall.common import Parsed, calls_from_json, leftover, loads_lenient

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# The closing tag may be missing when the model ends its turn right after the JSON.
BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def parse(text: str, names: set[str]) -> Parsed | None:
    if OPEN not in text:
        return None
    calls = []
    for body in BLOCK.findall(text):
        try:
            found = calls_from_json(loads_lenient(body), names)
        except ValueError:
            return None
        if found is None:
            return None
        calls.extend(found)
    return Parsed(leftover(BLOCK.sub("", text)), calls) if calls else None
