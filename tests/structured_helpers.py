"""Shared by the structured-output tests: the schemas they ask for, and the default model's int4 cpu graph
with a cache long enough for tool prompts, exported once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

KV_LEN = 1024

# A dozen shapes: nested objects, arrays, enums, bounded numbers, required and optional fields. Strings and
# arrays are bounded so that a random model (the tiny one), which rarely picks a closing quote, still ends.
SCHEMAS: dict[str, dict] = {
    "flat": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                              "age": {"type": "integer", "minimum": 0, "maximum": 120}},
             "required": ["name", "age"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
             "required": ["color"], "additionalProperties": False},
    "bool_null": {"type": "object", "properties": {"ok": {"type": "boolean"}, "none": {"type": "null"}},
                  "required": ["ok", "none"], "additionalProperties": False},
    "bounded_int": {"type": "object", "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 17}},
                    "required": ["n"], "additionalProperties": False},
    # multipleOf bounds the digits: greedy on random weights may never pick the token that ends a fraction
    "bounded_number": {"type": "object", "properties": {"x": {"type": "number", "minimum": 0, "maximum": 1,
                                                              "multipleOf": 0.25}},
                       "required": ["x"], "additionalProperties": False},
    "int_array": {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                                                    "maximum": 99},
                                                         "minItems": 1, "maxItems": 4}},
                  "required": ["xs"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999},
                                                  "role": {"enum": ["admin", "guest"]}},
                 "required": ["id", "role"], "additionalProperties": False}},
        "required": ["user"], "additionalProperties": False},
    "array_of_objects": {"type": "object", "properties": {"items": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "maxLength": 6},
                                         "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["sku", "qty"], "additionalProperties": False}}},
        "required": ["items"], "additionalProperties": False},
    "optional": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                                  "b": {"type": "string", "maxLength": 5},
                                                  "c": {"type": "boolean"}},
                 "required": ["a"], "additionalProperties": False},
    "string_pattern": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
                       "required": ["code"], "additionalProperties": False},
    "top_level_array": {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 2, "maxItems": 5},
    "any_of": {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 3},
                                                                {"enum": ["none"]}]}},
               "required": ["v"], "additionalProperties": False},
}

WEATHER_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                        "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                                        "b": {"type": "integer", "minimum": -99, "maximum": 99}},
                       "required": ["a", "b"], "additionalProperties": False}}},
]

_built: dict[str, Path] = {}


def default_int4_long(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's int4 cpu graph with a KV_LEN cache (tools prompts are long), once per session."""
    from export.export_onnx import main as export_main

    key = str(default_model_dir)
    if key not in _built:
        path = tmp_path_factory.mktemp("default_int4_long") / "qwen2.5_coder_0.5b_cpu_int4.onnx"
        assert export_main(["--hf_model_dir", str(default_model_dir), "--onnx_model_path", str(path),
                            "--kv_cache_length", str(KV_LEN), "--target", "cpu", "--bits", "4"]) == 0
        _built[key] = path
    return _built[key]
