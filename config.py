"""The configuration of a run, in three dataclasses whose fields are also the command-line flags
(core/flags.py turns each field into `--name`, so a default lives in one place):

- SessionOptions: which model file, which backend, and how it runs (cache, threads, prefill chunks);
- GenerationOptions: prompt and answer limits and the sampling defaults a request may override;
- ServerOptions: api.py's own flags.

InferenceConfig joins the first two with the model's shape from config.json, and checks that they fit.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.contract import ModelShape, read_meta
from core.errors import UserError
from core.flags import add_flags, from_args, option

SESSION_TYPES = ("onnx", "pytorch", "acl")
SAMPLING_METHODS = ("greedy", "top_k", "top_p")
DEFAULT_KV_CACHE_LENGTH = 1024
# api.py's --max_batch on the CPU (onnx, pytorch). On 2 shared cores one decode step of the default model's
# cpu graph for 4 rows gives 3.1-3.5x the tokens/s of 1 row at fp32 and 1.8-2.0x at int4, each answer at
# 0.77-0.86x / 0.45-0.5x its speed alone; 8 rows give 4.5-5.8x / 2.1-2.3x, each answer at 0.56-0.73x /
# 0.26-0.29x. 4 keeps every answer near its own speed at fp32 (what make serve
# runs), and at int4 8 rows add little over 4 while halving each answer's speed.
CPU_SERVER_MAX_BATCH = 4
# --max_input_length when not given: this share of the cache, the rest is room for the answer.
INPUT_SHARE = 7 / 8


@dataclass
class SessionOptions:
    hf_model_dir: str = option(
        help="HuggingFace model directory: tokenizer, chat template and config.json come from here")
    session_type: str = option(
        "onnx", choices=SESSION_TYPES,
        help="onnx: onnxruntime on the CPU (either exported graph); pytorch: our export model in torch; "
             "acl: a .om on an Ascend NPU")
    onnx_model_path: str | None = option(None, help="the .onnx from export_onnx.py or change_node.py (session onnx)")
    om_model_path: str | None = option(None, help="the .om from onnx2om.py (session acl)")
    dtype: str | None = option(None, choices=("float32", "float16"),
                               help="dtype of the pytorch session (default float32); the onnx and acl sessions "
                                    "run the dtype their model was exported with")
    cpu_thread: int | None = option(None, help="CPU threads for onnxruntime/torch (default: all cores)")
    max_batch: int | None = option(
        None, help="conversations served at once, each in its own rows of the KV cache; decoding runs them in one "
                   "graph call. For acl it must equal the value given to onnx2om.py (default: 1; api.py on the "
                   f"CPU: {CPU_SERVER_MAX_BATCH})")
    max_prefill_length: int = option(
        8, help="longest chunk, a power of two, that one prefill call processes: a 12-token prompt with 8 "
                "runs as 8+4. For acl it must equal the value given to onnx2om.py")
    kv_cache_length: int | None = option(
        None, help="KV cache length in tokens; must equal the value the model was exported with "
                   f"(default: read from the model, else {DEFAULT_KV_CACHE_LENGTH})")
    kv_cache_method: str | None = option(
        None, choices=("fixsize", "basic"),
        help="npu graph on onnxruntime, and pytorch: fixsize passes the whole static cache every step (what "
             "the NPU does), basic only the filled part (less work on a CPU) (default fixsize). The cpu graph "
             "always reads only the filled part, acl always the whole cache")
    draft_onnx_model_path: str | None = option(
        None, help="speculative decoding (onnx and pytorch sessions): a faster export of the same model, e.g. "
                   "its int4 quantization from quantize_onnx.py, guesses --draft_tokens tokens ahead and the "
                   "main model checks them in one call. The answer is the main model's own (same greedy text, "
                   "same sampling distribution), only faster when the guesses are good (default: off)")
    draft_tokens: int = option(4, help="tokens the draft model guesses per check")
    # Set for a target and its draft model, which take turns on the same cores: their onnxruntime threads
    # then stop spinning as soon as a run returns (backends/ort_cache.py).
    threads_shared: bool = option(False, flag=False)

    @property
    def threads(self) -> int:
        return self.cpu_thread or os.cpu_count() or 1


@dataclass
class GenerationOptions:
    max_input_length: int | None = option(
        None, help="most prompt tokens per request; older chat turns are dropped beyond it (default: 7/8 of "
                   "--kv_cache_length, the rest is room for the answer)")
    max_output_length: int = option(1024, help="most new tokens per answer")
    # The sampling defaults a request may override. Each one left unset here takes the value the model
    # directory's generation_config.json recommends, if it names one, else the default in its help:
    # a flag given explicitly always wins over the model's recommendation.
    sampling_method: str | None = option(
        None, choices=SAMPLING_METHODS,
        help="greedy: always the likeliest token; top_k / top_p: sample (default: top_p; with "
             "--sampling_value unset, the model's generation_config.json top_p if it has one)")
    sampling_value: float | None = option(
        None, help="k for top_k (default 40), p for top_p (default: the model's generation_config.json top_p, "
                   "else 0.8)")
    temperature: float | None = option(
        None, help="softmax temperature for sampling; 0 means greedy (default: the model's "
                   "generation_config.json temperature, else 0.7)")
    top_k: int | None = option(
        None, help="also sample only among the k likeliest tokens, 0 for no such cut (default: the model's "
                   "generation_config.json top_k, else 0)")
    repetition_penalty: float | None = option(
        None, help="CTRL's penalty on tokens already in the prompt or answer, 1 for none (default: the model's "
                   "generation_config.json repetition_penalty, else 1)")
    seed: int | None = option(None, help="random seed, for repeatable sampling")


@dataclass
class ServerOptions:
    host: str = option("127.0.0.1", help="address to listen on")
    port: int = option(8000, help="port to listen on")
    api_key: str | None = option(None, help="if set, every /v1 request needs 'Authorization: Bearer <key>'")
    served_model_name: str | None = option(
        None, help="model id clients see and send (default: the model directory's name)")
    max_queue: int = option(64, help="requests that may wait for the model; more get 429")
    max_request_mb: float = option(1.0, help="largest request body accepted, in MiB; larger gets 413")
    no_web_ui: bool = option(False, help="do not serve the chat page at / (the API alone)")
    docs: bool = option(False, help="serve FastAPI's interactive API pages at /docs and /redoc (they load "
                                    "scripts from a CDN, so they are off unless asked for)")
    allowed_hosts: str | None = option(
        None, help="comma-separated host names to answer besides the loopback ones, or '*' for any. Only used "
                   "when bound to loopback (the default --host): then a request whose Host header is not a "
                   "loopback name is refused, so that web pages cannot reach the server through DNS rebinding")
    allowed_origins: str | None = option(
        None, help="comma-separated web origins (e.g. https://chat.example.com) whose pages may call the API "
                   "besides the loopback ones (http://localhost:*, http://127.0.0.1:*, http://[::1]:*), or '*' "
                   "for any (CORS)")
    header_timeout_s: float = option(30.0, help="seconds a connection may take to send a request's headers")
    body_timeout_s: float = option(30.0, help="seconds a request's body may pause before the request is refused")
    max_connections: int = option(128, help="connections served at once; beyond them uvicorn answers 503")
    watchdog_s: float = option(
        120.0, help="an engine step running longer than this makes /health answer 503 (stalled)")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise UserError(f"--port {self.port}: must be 1-65535")
        for name in ("max_queue", "max_connections"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} {getattr(self, name)}: must be at least 1")
        for name in ("max_request_mb", "header_timeout_s", "body_timeout_s", "watchdog_s"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} {getattr(self, name)}: must be positive")


@dataclass
class InferenceConfig:
    """Everything a session and the engine need. Build it with `create` (or `from_args`), which reads
    the model's shape and checks the options against it and against each other."""
    session: SessionOptions
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    shape: ModelShape | None = None

    @classmethod
    def create(cls, hf_model_dir: str | Path, **options) -> "InferenceConfig":
        """From keyword options named as the flags are: `create(dir, session_type="onnx", ...)`."""
        names = {f for f in GenerationOptions.__dataclass_fields__}
        gen = GenerationOptions(**{k: v for k, v in options.items() if k in names})
        session = SessionOptions(hf_model_dir=str(hf_model_dir), **{k: v for k, v in options.items()
                                                                      if k not in names})
        return cls.resolve(session, gen)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "InferenceConfig":
        return cls.resolve(from_args(SessionOptions, args), from_args(GenerationOptions, args))

    @classmethod
    def resolve(cls, session: SessionOptions, generation: GenerationOptions) -> "InferenceConfig":
        shape = ModelShape.from_dir(session.hf_model_dir)
        _check_paths(session)
        if session.kv_cache_length is None:
            session = replace(session, kv_cache_length=_recorded_kv_length(session) or DEFAULT_KV_CACHE_LENGTH)
        if session.draft_onnx_model_path:
            session = replace(session, threads_shared=True)
        if session.max_batch is None:
            session = replace(session, max_batch=1)
        generation = _sampling_defaults(generation, Path(session.hf_model_dir))
        if generation.max_input_length is None:
            generation = replace(generation, max_input_length=max(1, int(session.kv_cache_length * INPUT_SHARE)))
        if generation.max_input_length >= session.kv_cache_length:
            generation = replace(generation, max_input_length=session.kv_cache_length - 1)
        config = cls(session, generation, shape)
        config.validate()
        return config

    def validate(self) -> None:
        s, g = self.session, self.generation
        mpl = s.max_prefill_length
        if mpl < 1 or mpl & (mpl - 1):
            raise UserError(f"--max_prefill_length {mpl}: must be a power of two (1, 2, 4, 8, ...)")
        for name, value in (("kv_cache_length", s.kv_cache_length), ("max_batch", s.max_batch),
                            ("draft_tokens", s.draft_tokens), ("max_input_length", g.max_input_length),
                            ("max_output_length", g.max_output_length)):
            if value < 1:
                raise UserError(f"--{name} {value}: must be at least 1")
        if s.cpu_thread is not None and s.cpu_thread < 1:
            raise UserError(f"--cpu_thread {s.cpu_thread}: must be at least 1")
        if g.temperature < 0:
            raise UserError(f"--temperature {g.temperature}: must not be negative")
        if g.top_k < 0:
            raise UserError(f"--top_k {g.top_k}: must not be negative")
        if g.repetition_penalty <= 0:
            raise UserError(f"--repetition_penalty {g.repetition_penalty}: must be positive")
        if s.draft_onnx_model_path and s.session_type == "acl":
            raise UserError("--draft_onnx_model_path: speculative decoding runs with --session_type onnx or "
                            "pytorch, not acl")

    def draft(self) -> "InferenceConfig":
        """The draft model's settings: the same model and cache, another ONNX file."""
        s = replace(self.session, session_type="onnx", onnx_model_path=self.session.draft_onnx_model_path,
                    draft_onnx_model_path=None, threads_shared=True, dtype=None, kv_cache_method=None,
                    max_batch=1)
        return replace(self, session=s)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model, session and generation flags shared by cli_chat.py and api.py."""
    add_flags(p, SessionOptions, "model and session")
    add_flags(p, GenerationOptions, "generation and sampling")


def _check_paths(s: SessionOptions) -> None:
    needs = {"onnx": "onnx_model_path", "acl": "om_model_path"}
    for flag in ("onnx_model_path", "om_model_path", "draft_onnx_model_path"):
        path = getattr(s, flag)
        if path and not Path(path).is_file():
            raise UserError(f"--{flag} {path}: no such file")
    if s.session_type in needs and not getattr(s, needs[s.session_type]):
        raise UserError(f"--session_type {s.session_type} needs --{needs[s.session_type]}")


# What GenerationOptions' sampling fields default to when neither a flag nor the model sets them.
SAMPLING_DEFAULTS = {"temperature": 0.7, "top_p": 0.8, "top_k": 0, "repetition_penalty": 1.0}
TOP_K_METHOD_DEFAULT = 40.0


def recommended_sampling(hf_model_dir: Path) -> dict[str, float]:
    """The sampling values the model's generation_config.json recommends (those of SAMPLING_DEFAULTS it names)."""
    path = hf_model_dir / "generation_config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        raise UserError(f"{path}: not valid JSON") from None
    return {k: config[k] for k in SAMPLING_DEFAULTS if isinstance(config.get(k), (int, float))
            and not isinstance(config.get(k), bool)}


def _sampling_defaults(g: GenerationOptions, hf_model_dir: Path) -> GenerationOptions:
    """Fill the sampling fields no flag set: the model's recommendation, else SAMPLING_DEFAULTS."""
    values = {**SAMPLING_DEFAULTS, **recommended_sampling(hf_model_dir)}
    method = g.sampling_method or "top_p"
    value = g.sampling_value
    if value is None:  # the p of top_p; for top_k, llama.cpp's default k
        value = values["top_p"] if method == "top_p" else TOP_K_METHOD_DEFAULT if method == "top_k" else 0.0
    return replace(g, sampling_method=method, sampling_value=value,
                   temperature=values["temperature"] if g.temperature is None else g.temperature,
                   top_k=int(values["top_k"]) if g.top_k is None else g.top_k,
                   repetition_penalty=values["repetition_penalty"] if g.repetition_penalty is None
                   else g.repetition_penalty)


def _recorded_kv_length(s: SessionOptions) -> int | None:
    """The cache length our exporter recorded in the ONNX model, when there is one."""
    if s.session_type != "onnx" or not s.onnx_model_path:
        return None
    value = read_meta(s.onnx_model_path).get("kv_cache_length")
    return int(value) if value else None
