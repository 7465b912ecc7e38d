"""Checks every request body gets before any of it reaches the tokenizer, a grammar or an error message:
each string, keys included, must be text UTF-8 can carry. JSON may spell a lone surrogate (\\ud800), which
Python keeps in a str that cannot be encoded; the tokenizer would raise on it, and an error message that
quoted it could not be sent."""
from __future__ import annotations

from typing import Any

from server.errors import APIError


def _bad(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unencodable_path(body: Any) -> str | None:
    """The dotted path of the first string in body (a key or a value) that is not valid Unicode text."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _bad(value):
                return path or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _bad(key):
                    return f"{path}.<key>" if path else "<key>"
                stack.append((f"{path}.{key}" if path else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{i}", item) for i, item in enumerate(value))
    return None


def check_text(body: Any) -> Any:
    """body unchanged, or a 400 naming the field that holds text which is not valid Unicode."""
    path = unencodable_path(body)
    if path is not None:
        raise APIError(400, f"'{_printable(path)}' holds text that is not valid Unicode (a lone surrogate "
                            "such as \\ud800); send UTF-8 text", param=_printable(path), code="invalid_value")
    return body


def _printable(path: str) -> str:
    return path.encode("utf-8", "backslashreplace").decode("utf-8")
