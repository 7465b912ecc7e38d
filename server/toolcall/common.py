"""What every tool-call parser returns, and how a decoded JSON object becomes a call."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it: clients json.loads() it themselves
    id: str = field(default_factory=new_call_id)


@dataclass
class Parsed:
    content: str | None  # text outside the calls, None when there is none
    calls: list[ToolCall]


def arguments_text(args: object) -> str | None:
    """JSON text for an arguments value; None when it cannot be one (the call is then not trusted)."""
    if args is None:
        return "{}"
    if isinstance(args, dict):
        return json.dumps(args, ensure_ascii=False)
    if isinstance(args, str):
        # Models sometimes double-encode the arguments; keep them only if they are a JSON object.
        try:
            inner = json.loads(args)
        except ValueError:
            return None
        return json.dumps(inner, ensure_ascii=False) if isinstance(inner, dict) else None
    return None


def call_from_object(obj: object, names: set[str]) -> ToolCall | None:
    """A call from {"name", "arguments"} (or "parameters", or wrapped in "function"), if the name was offered."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    args = arguments_text(obj.get("arguments", obj.get("parameters")))
    return ToolCall(name, args) if args is not None else None


def calls_from_json(value: object, names: set[str]) -> list[ToolCall] | None:
    """One call object or a list of them; None if any element is not a valid call."""
    items = value if isinstance(value, list) else [value]
    calls = [call_from_object(v, names) for v in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


def loads_lenient(text: str) -> object:
    """json.loads, also accepting an object whose last closing braces are missing: small models often
    stop one "}" short. Raises ValueError when even that does not parse."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        missing = text.count("{") - text.count("}")
        if not 0 < missing <= 2:
            raise
        return json.loads(text + "}" * missing)


def leftover(text: str) -> str | None:
    text = text.strip()
    return text or None


def only_declared(call: ToolCall, declared: set[str] | None) -> ToolCall:
    """The call without arguments its function does not declare (None: it declares no limit). The grammar
    keeps them out of a tagged call; this does the same for the formats it does not constrain."""
    if declared is None:
        return call
    args = json.loads(call.arguments)
    if set(args) <= declared:
        return call
    kept = {k: v for k, v in args.items() if k in declared}
    return ToolCall(call.name, json.dumps(kept, ensure_ascii=False), call.id)
