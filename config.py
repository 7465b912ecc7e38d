"""One InferenceConfig for every entry point, built from command-line flags and the model's config.json."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

SESSION_TYPES = ("onnx", "pytorch", "acl")
SAMPLING_METHODS = ("greedy", "top_k", "top_p")


class ConfigError(ValueError):
    """A setting that cannot work; its message is one line meant for the user."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors on one line (its usage block buries the actual message)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


@dataclass
class InferenceConfig:
    hf_model_dir: str
    session_type: str = "onnx"
    onnx_model_path: str | None = None
    om_model_path: str | None = None
    dtype: str = "float32"
    cpu_thread: int = os.cpu_count() or 1
    max_batch: int = 1
    max_prefill_length: int = 8
    max_input_length: int = 512
    max_output_length: int = 1024
    kv_cache_length: int = 1024
    kv_cache_method: str = "fixsize"
    sampling_method: str = "top_p"
    sampling_value: float = 0.8
    temperature: float = 0.7
    seed: int | None = None
    draft_onnx_model_path: str | None = None
    draft_tokens: int = 4
    # Set for a target and its draft model, which take turns on the same cores: their onnxruntime threads
    # then stop spinning as soon as a run returns (ort_cache.cpu_session).
    threads_shared: bool = False
    num_hidden_layers: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0

    def __post_init__(self) -> None:
        cfg_path = Path(self.hf_model_dir) / "config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"--hf_model_dir {self.hf_model_dir}: no config.json there "
                              "(expected a HuggingFace model directory)")
        cfg = json.loads(cfg_path.read_text())
        heads = cfg["num_attention_heads"]
        self.num_hidden_layers = cfg["num_hidden_layers"]
        self.num_key_value_heads = cfg.get("num_key_value_heads") or heads
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        self.vocab_size = cfg["vocab_size"]
        self.threads_shared = self.threads_shared or bool(self.draft_onnx_model_path)
        self.validate()

    def validate(self) -> None:
        if self.session_type not in SESSION_TYPES:
            raise ConfigError(f"--session_type {self.session_type}: choose one of {', '.join(SESSION_TYPES)}")
        needs = {"onnx": ("onnx_model_path", self.onnx_model_path), "acl": ("om_model_path", self.om_model_path)}
        if self.session_type in needs:
            flag, path = needs[self.session_type]
            if not path:
                raise ConfigError(f"--session_type {self.session_type} needs --{flag}")
            if not Path(path).is_file():
                raise ConfigError(f"--{flag} {path}: no such file")
        mpl = self.max_prefill_length
        if mpl < 1 or mpl & (mpl - 1):
            raise ConfigError(f"--max_prefill_length {mpl}: must be a power of two (1, 2, 4, 8, ...)")
        for name in ("kv_cache_length", "max_input_length", "max_output_length", "cpu_thread", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} {getattr(self, name)}: must be at least 1")
        if self.max_input_length >= self.kv_cache_length:
            raise ConfigError(f"--max_input_length {self.max_input_length} must be below --kv_cache_length "
                              f"{self.kv_cache_length}: the answer needs room in the cache")
        if self.sampling_method not in SAMPLING_METHODS:
            raise ConfigError(f"--sampling_method {self.sampling_method}: choose one of {', '.join(SAMPLING_METHODS)}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature {self.temperature}: must not be negative")
        if self.draft_onnx_model_path:
            if self.session_type == "acl":
                raise ConfigError("--draft_onnx_model_path: speculative decoding runs with --session_type "
                                  "onnx or pytorch, not acl")
            if not Path(self.draft_onnx_model_path).is_file():
                raise ConfigError(f"--draft_onnx_model_path {self.draft_onnx_model_path}: no such file")
        if self.draft_tokens < 1:
            raise ConfigError(f"--draft_tokens {self.draft_tokens}: must be at least 1")


def draft_config(c: InferenceConfig) -> InferenceConfig:
    """The draft model's session settings: the same model and cache, another ONNX file."""
    return replace(c, session_type="onnx", onnx_model_path=c.draft_onnx_model_path, draft_onnx_model_path=None,
                   threads_shared=True)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model, session and sampling flags shared by cli_chat.py and api.py."""
    d = InferenceConfig.__dataclass_fields__
    g = p.add_argument_group("model and session")
    g.add_argument("--hf_model_dir", required=True,
                   help="HuggingFace model directory: tokenizer, chat template and config.json come from here")
    g.add_argument("--session_type", choices=SESSION_TYPES, default="onnx",
                   help="onnx: onnxruntime on the CPU; pytorch: our export model in torch; acl: a .om on an "
                        "Ascend NPU (default onnx)")
    g.add_argument("--onnx_model_path", help="the .onnx from export_onnx.py or change_node.py (session onnx)")
    g.add_argument("--om_model_path", help="the .om from onnx2om.py (session acl)")
    g.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of the pytorch session; onnx and acl sessions use the model's own (default float32)")
    g.add_argument("--cpu_thread", type=int, default=d["cpu_thread"].default,
                   help="CPU threads for onnxruntime/torch (default: all cores)")
    g.add_argument("--max_batch", type=int, default=1, help="batch size the model was built for (default 1)")
    g.add_argument("--max_prefill_length", type=int, default=8,
                   help="longest chunk, a power of two, that one prefill call processes: a 12-token prompt "
                        "with 8 runs as 8+4. For acl it must equal the value given to onnx2om.py (default 8)")
    g.add_argument("--kv_cache_length", type=int, default=None,
                   help="KV cache length in tokens; must equal the value the model was exported with "
                        "(default: read from the model, else 1024)")
    g.add_argument("--kv_cache_method", choices=["fixsize", "basic"], default="fixsize",
                   help="fixsize: pass the whole static cache every step (what the NPU needs); basic: pass "
                        "only the filled part (less work on a CPU) (default fixsize)")
    g.add_argument("--max_input_length", type=int, default=512,
                   help="most prompt tokens per request; older chat turns are dropped beyond it (default 512)")
    g.add_argument("--max_output_length", type=int, default=1024,
                   help="most new tokens per answer (default 1024)")
    s = p.add_argument_group("sampling")
    s.add_argument("--sampling_method", choices=SAMPLING_METHODS, default="top_p",
                   help="greedy: always the likeliest token; top_k / top_p: sample (default top_p)")
    s.add_argument("--sampling_value", type=float, default=0.8,
                   help="k for top_k, p for top_p (default 0.8)")
    s.add_argument("--temperature", type=float, default=0.7,
                   help="softmax temperature for sampling; 0 means greedy (default 0.7)")
    s.add_argument("--seed", type=int, default=None, help="random seed, for repeatable sampling")
    sp = p.add_argument_group("speculative decoding (CPU)")
    sp.add_argument("--draft_onnx_model_path",
                    help="a faster export of the same model, e.g. its int4 quantization from quantize_onnx.py: "
                         "it guesses --draft_tokens tokens ahead and the main model checks them in one call. "
                         "The answer is the main model's own (same greedy text, same sampling "
                         "distribution), only faster when the guesses are good (default: off)")
    sp.add_argument("--draft_tokens", type=int, default=4,
                    help="tokens the draft model guesses per check (default 4)")


def config_from_args(a: argparse.Namespace) -> InferenceConfig:
    """Raises ConfigError with a one-line message on anything that cannot work."""
    kv_len = a.kv_cache_length
    if kv_len is None:
        kv_len = _model_kv_length(a) or 1024
    cfg = InferenceConfig(
        hf_model_dir=a.hf_model_dir, session_type=a.session_type, onnx_model_path=a.onnx_model_path,
        om_model_path=a.om_model_path, dtype=a.dtype, cpu_thread=a.cpu_thread, max_batch=a.max_batch,
        max_prefill_length=a.max_prefill_length, max_input_length=min(a.max_input_length, kv_len - 1),
        max_output_length=a.max_output_length, kv_cache_length=kv_len, kv_cache_method=a.kv_cache_method,
        sampling_method=a.sampling_method, sampling_value=a.sampling_value, temperature=a.temperature,
        seed=a.seed, draft_onnx_model_path=a.draft_onnx_model_path, draft_tokens=a.draft_tokens)
    return cfg


def _model_kv_length(a: argparse.Namespace) -> int | None:
    """The cache length recorded by our exporter in the ONNX model, when there is one."""
    if a.session_type != "onnx" or not a.onnx_model_path or not Path(a.onnx_model_path).is_file():
        return None
    from export.onnx_meta import read_meta
    try:
        value = read_meta(a.onnx_model_path).get("kv_cache_length")
    except Exception as e:  # a corrupt file is reported here, once, as the user's input problem
        raise ConfigError(f"--onnx_model_path {a.onnx_model_path}: not a readable ONNX model ({e})") from None
    return int(value) if value else None
