"""The graph contract: what an exported model's inputs, outputs and metadata are called, and the shape
read from config.json (its one parser). The exporter writes it, onnx2om.py compiles it, the sessions
check it; all of them import it from here.

npu graph (plain ONNX, what atc compiles):
  input_ids [batch, seq] int64; attention_mask [batch, kv_len + seq] int64; position_ids [batch, seq]
  int64; past_key_values [batch, kv_len, layers*2*kv_heads, head_dim]  ->  logits [batch, seq, vocab],
  out_key_values [batch, seq, layers*2*kv_heads, head_dim]
cpu graph (onnxruntime only): input_ids, seqlens_k, total_sequence_length, num_logits,
  past_key_<i>/past_value_<i>  ->  logits, present_key_<i>/present_value_<i>
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.errors import UserError

NPU_INPUTS = ("input_ids", "attention_mask", "position_ids", "past_key_values")
NPU_OUTPUTS = ("logits", "out_key_values")
CPU_INPUTS = ("input_ids", "seqlens_k", "total_sequence_length", "num_logits")

PRODUCER = "qwen-ascend-llm"
# metadata_props every export records; the integers are checked against each run's configuration.
SHAPE_KEYS = ("num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size")
INT_KEYS = ("kv_cache_length",) + SHAPE_KEYS
TARGETS = ("npu", "cpu")


def cache_width(num_hidden_layers: int, num_key_value_heads: int) -> int:
    """The third dim of past_key_values: every layer's keys, then its values, per KV head."""
    return num_hidden_layers * 2 * num_key_value_heads


@dataclass(frozen=True)
class ModelShape:
    """A Qwen (1.5 / 2 / 2.5 / 3) model's shape and settings, as its config.json gives them: the sizes a
    graph and its KV cache are built from, and what the exporters and the torch reference build layers
    from. Plain Python: the exporters read it without torch."""
    num_hidden_layers: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = True
    qk_norm: bool = False

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelShape":
        """Read a config.json written by transformers 4.x (`rope_theta`) or 5.x (`rope_parameters`)."""
        model_type = cfg.get("model_type", "qwen2")
        if model_type not in ("qwen2", "qwen3"):
            raise ValueError(f"unsupported model_type {model_type!r}: expected a Qwen1.5/Qwen2/Qwen2.5/Qwen3 model")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"unsupported rope scaling {rope_type!r}: only plain RoPE is exported")
        heads = cfg["num_attention_heads"]
        return cls(num_hidden_layers=cfg["num_hidden_layers"],
                   num_key_value_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   vocab_size=cfg["vocab_size"],
                   hidden_size=cfg["hidden_size"],
                   intermediate_size=cfg["intermediate_size"],
                   num_attention_heads=heads,
                   rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))),
                   rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
                   qk_norm=model_type == "qwen3")

    @classmethod
    def from_dir(cls, hf_model_dir: str | Path) -> "ModelShape":
        path = Path(hf_model_dir) / "config.json"
        if not path.is_file():
            raise UserError(f"--hf_model_dir {hf_model_dir}: no config.json there "
                            "(expected a HuggingFace model directory)")
        try:
            return cls.from_hf_config(json.loads(path.read_text()))
        except (ValueError, KeyError) as e:
            raise UserError(f"{path}: not a usable model config ({type(e).__name__}: {e})") from None

    @property
    def cache_width(self) -> int:
        return cache_width(self.num_hidden_layers, self.num_key_value_heads)

    def as_meta(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in SHAPE_KEYS}


def write_meta(model, meta: dict[str, object]) -> None:
    """Record the export settings in an onnx.ModelProto's metadata_props."""
    import onnx

    onnx.helper.set_model_props(model, {k: str(v) for k, v in {**meta, "producer": PRODUCER}.items()})


def _file_key(path: str | Path) -> tuple[str, int, int]:
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=32)
def _read_meta(key: tuple[str, int, int]) -> dict[str, str]:
    import onnx

    model = onnx.load(key[0], load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_meta(path: str | Path) -> dict[str, str]:
    """A model file's metadata, read once per process while the file stays unchanged. Weights in an
    external .data file are not read; every npu and cpu graph keeps them there, so this is cheap."""
    try:
        key = _file_key(path)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    try:
        return dict(_read_meta(key))
    except Exception as e:  # onnx raises its own decode errors for a file that is not a model
        raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None


def mismatches(meta: dict[str, str], expected: dict[str, object]) -> list[str]:
    """Human-readable differences between what a model was exported with and what a run asks for.
    Keys the model does not record (a graph from another exporter) are not judged."""
    out = []
    for key, want in expected.items():
        if key in meta and want is not None and meta[key] != str(want):
            out.append(f"{key}: the model was exported with {meta[key]}, this run asks for {want}")
    return out
