"""Writes responses.schema.json: the components of OpenAI's public OpenAPI description (openai/openai-openapi)
that describe what POST /v1/responses answers (the Response object, every streamed event, the error body),
with everything they reference, as JSON Schema draft 2020-12 under $defs. Run it by hand when the spec moves:

    python tests/data/openai/extract_responses.py path/to/openapi.yaml > tests/data/openai/responses.schema.json

The rewriting is what turns OpenAPI into JSON Schema: references point into $defs, OpenAPI's `nullable: true`
becomes anyOf [..., {"type": "null"}] (draft 2020-12 has no such keyword), and draft 2019-09's recursive
self-reference becomes a plain $ref to its own component."""
from __future__ import annotations

import json
import sys
from typing import Any

import yaml

ROOTS = ("Response", "ResponseStreamEvent", "ErrorResponse")
PREFIX = "#/components/schemas/"


def _rewrite(node: Any, owner: str) -> Any:
    """node of the component named owner, in draft 2020-12 terms."""
    if isinstance(node, list):
        return [_rewrite(v, owner) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rewrite(v, owner) for k, v in node.items() if k not in ("nullable", "$recursiveAnchor")}
    if "$ref" in out:
        out["$ref"] = "#/$defs/" + out["$ref"].removeprefix(PREFIX)
    if out.pop("$recursiveRef", None) == "#":  # draft 2019-09's self-reference (CompoundFilter's filters)
        out["$ref"] = "#/$defs/" + owner
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _referenced(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_referenced(v) for v in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"].removeprefix(PREFIX)} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(_referenced(v) for k, v in node.items() if k != "$ref"))


def extract(spec: dict) -> dict:
    schemas = spec["components"]["schemas"]
    wanted, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += _referenced(schemas[name])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"Subset of OpenAI's public OpenAPI description (openai/openai-openapi, info.version "
                    f"{spec['info']['version']}): {', '.join(ROOTS)} and every component they reference. Data, "
                    "MIT-licensed upstream. OpenAPI 'nullable: true' rewritten as anyOf [..., null].",
        "$defs": {name: _rewrite(schemas[name], name) for name in sorted(wanted)},
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(extract(yaml.safe_load(f)), indent=1, ensure_ascii=False))
