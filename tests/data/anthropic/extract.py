"""Writes messages.schema.json: the JSON Schema of the Messages API's response objects, as Anthropic's own
Python SDK declares them (its types are generated from Anthropic's OpenAPI description). Run it again after
upgrading the pinned `anthropic` package: python tests/data/anthropic/extract.py"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import TypeAdapter

OUT = Path(__file__).resolve().parent / "messages.schema.json"


def main() -> None:
    import anthropic
    import anthropic.types as t

    roots = {"Message": t.Message, "RawMessageStreamEvent": t.RawMessageStreamEvent,
             "MessageTokensCount": t.MessageTokensCount, "ErrorResponse": t.ErrorResponse}
    defs: dict = {}
    for name, kind in roots.items():
        schema = TypeAdapter(kind).json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[name] = schema
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "x-anthropic-sdk": anthropic.__version__,
           "$defs": dict(sorted(defs.items()))}
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
