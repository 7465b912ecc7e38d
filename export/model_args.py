"""The shape and settings of a Qwen (1.5 / 2 / 2.5 / 3) model, read from its config.json. Plain Python:
the exporters use it without torch."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = True
    qk_norm: bool = False

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelArgs":
        """Read a config.json written by transformers 4.x (`rope_theta`) or 5.x (`rope_parameters`)."""
        model_type = cfg.get("model_type", "qwen2")
        if model_type not in ("qwen2", "qwen3"):
            raise ValueError(f"unsupported model_type {model_type!r}: expected a Qwen1.5/Qwen2/Qwen2.5/Qwen3 model")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"unsupported rope scaling {rope_type!r}: only plain RoPE is exported")
        theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rope_theta=float(theta),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            qk_norm=model_type == "qwen3",
        )

    @classmethod
    def from_dir(cls, hf_model_dir: str | Path) -> "ModelArgs":
        return cls.from_hf_config(json.loads((Path(hf_model_dir) / "config.json").read_text()))

    def rope_inv_freq(self):
        """The rotary frequencies, float32 [head_dim / 2], computed as the reference model does."""
        import numpy as np

        exponents = np.arange(0, self.head_dim, 2, dtype=np.float32) / np.float32(self.head_dim)
        return (np.float32(1.0) / np.power(np.float32(self.rope_theta), exponents)).astype(np.float32)
