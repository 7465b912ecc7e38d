"""A call inside a Markdown code fence (```json ... ```), often with prose around it."""
from __future__ import annotations

import re

from server.toolcall.common import Parsed, calls_from_json, leftover, loads_lenient

FENCE = re.compile(r"```[a-zA-Z]*[ \t]*\n?(.*?)```", re.DOTALL)


def parse(text: str, names: set[str]) -> Parsed | None:
    calls = []
    kept: list[str] = []
    pos = 0
    for m in FENCE.finditer(text):
        try:
            found = calls_from_json(loads_lenient(m.group(1)), names)
        except ValueError:
            found = None
        if found is None:
            continue  # an ordinary code block stays part of the text
        calls.extend(found)
        kept.append(text[pos:m.start()])
        pos = m.end()
    if not calls:
        return None
    kept.append(text[pos:])
    return Parsed(leftover("".join(kept)), calls)
