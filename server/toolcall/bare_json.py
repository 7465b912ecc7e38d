"""A call written as a bare JSON object (or list) at the start of the answer, without any tags:
what small models often do when they were offered tools."""
from __future__ import annotations

import json

from server.toolcall.common import Parsed, calls_from_json, leftover, loads_lenient


def parse(text: str, names: set[str]) -> Parsed | None:
    body = text.lstrip()
    if not body.startswith(("{", "[")):
        return None
    try:
        value, end = json.JSONDecoder().raw_decode(body)
    except ValueError:
        try:  # the whole answer may be one call that lacks its final braces
            value, end = loads_lenient(body), len(body)
        except ValueError:
            return None
    calls = calls_from_json(value, names)
    return Parsed(leftover(body[end:]), calls) if calls else None
