"""Tool calls in a model's text answer: one small parser per format, tried in a fixed order (react.py,
the legacy `functions` format, is read on its own)."""
from __future__ import annotations

from server.toolcall import bare_json, fenced_json, qwen_tags
from server.toolcall.common import Parsed, ToolCall

TOOL_PARSERS = (qwen_tags.parse, fenced_json.parse, bare_json.parse)

__all__ = ["Parsed", "ToolCall", "parse_tool_calls"]


def parse_tool_calls(text: str, names: set[str]) -> Parsed | None:
    """Calls to offered tools in any format we know; None when the text is an ordinary answer
    (including a malformed call, which the client then sees as text)."""
    for parser in TOOL_PARSERS:
        found = parser(text, names)
        if found is not None:
            return found
    return None
