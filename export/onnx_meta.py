"""The export settings recorded in an ONNX model's metadata_props, and the checks built on them."""
from __future__ import annotations

from pathlib import Path

import onnx

PRODUCER = "qwen-ascend-llm"
INT_KEYS = ("kv_cache_length", "num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size")


def write_meta(model: onnx.ModelProto, meta: dict[str, object]) -> None:
    onnx.helper.set_model_props(model, {k: str(v) for k, v in {**meta, "producer": PRODUCER}.items()})


def read_meta(path: str | Path) -> dict[str, str]:
    """Metadata without the weights (external data is not read)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def mismatches(meta: dict[str, str], expected: dict[str, object]) -> list[str]:
    """Human-readable differences between what a model was exported with and what a run asks for.
    Keys the model does not record (a graph from another exporter) are not judged."""
    out = []
    for key, want in expected.items():
        if key in meta and want is not None and meta[key] != str(want):
            out.append(f"{key}: the model was exported with {meta[key]}, this run asks for {want}")
    return out
