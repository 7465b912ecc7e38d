"""Sampling parameters from a request, built in one place for every door: the server's defaults, overridden
by what the request sets (limit, temperature, top_p, top_k, min_p, seed, stops, penalties, logit_bias,
logprobs, min_tokens, ignore_eos, stop_token_ids), with the limits OpenAI documents checked as OpenAI answers
them (a 400 that names the field)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.penalties import penalty_processors
from engine.sampling import SamplingParams
from server.errors import APIError

MAX_STOPS = 4  # OpenAI's own limit; more would only slow the stop-string scan
MAX_N = 16  # choices per prompt; beyond the free slots they queue
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
MAX_TOP_LOGPROBS = 20  # OpenAI's limits: chat 20, legacy completions 5
MAX_LEGACY_LOGPROBS = 5


@dataclass
class Knobs:
    """What a request asks of sampling, in the door-neutral form; None: the server's default."""
    max_tokens: int | None = None
    limit_field: str = "max_tokens"  # the field max_tokens came from, for error messages
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = None  # None: none; k: each token's logprob and the k likeliest
    top_k: int | None = None  # -1 or 0: no top-k cut
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_openai(cls, req: Any, **fields: Any) -> "Knobs":
        """The knobs an OpenAI-style request (server/schema.py's Sampling) sets; fields: the door's own."""
        names = ("max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty",
                 "logit_bias", "top_k", "min_p", "repetition_penalty", "ignore_eos", "min_tokens")
        return cls(**{**{n: getattr(req, n) for n in names}, "stop_token_ids": list(req.stop_token_ids or []),
                      **fields})


def choices(n: int | None) -> int:
    if n is None:
        return 1
    if not 1 <= n <= MAX_N:
        raise APIError(400, f"n must be between 1 and {MAX_N}; got {n}", param="n", code="invalid_value")
    return n


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop: at most {MAX_STOPS} sequences are allowed, got {len(stops)}", param="stop")
    return [s for s in stops if s]


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    if bias and len(bias) > MAX_LOGIT_BIAS:
        raise APIError(400, f"logit_bias: at most {MAX_LOGIT_BIAS} entries are allowed, got {len(bias)}",
                       param="logit_bias", code="invalid_value")
    out = {}
    for key, value in (bias or {}).items():
        token = int(key) if key.isascii() and key.isdigit() else -1
        if not 0 <= token < vocab_size:
            raise APIError(400, f"logit_bias: '{key[:40]}' is not a token id of this model (0 to {vocab_size - 1})",
                           param="logit_bias", code="invalid_value")
        if not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: the bias of token {key} must be between -100 and 100; got {value}",
                           param="logit_bias", code="invalid_value")
        out[token] = value
    return out


def _token_ids(ids: list[int], vocab_size: int) -> list[int]:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise APIError(400, f"stop_token_ids: {bad[0]} is not a token id of this model (0 to {vocab_size - 1})",
                       param="stop_token_ids", code="invalid_value")
    return list(ids)


def sampling_params(k: Knobs, base: SamplingParams, max_output: int, vocab_size: int) -> SamplingParams:
    """The parameters one request samples with."""
    if k.max_tokens is not None and k.max_tokens > max_output:
        raise APIError(400, f"{k.limit_field} is too large: {k.max_tokens}. This server answers with at most "
                            f"{max_output} tokens (--max_output_length).", param=k.limit_field)
    limit = k.max_tokens or max_output
    if k.min_tokens is not None and k.min_tokens > limit:
        raise APIError(400, f"min_tokens ({k.min_tokens}) must not exceed {k.limit_field} ({limit})",
                       param="min_tokens", code="invalid_value")
    method, value, temperature = base.method, base.value, base.temperature
    if k.temperature is not None:
        temperature = k.temperature
    if k.top_p is not None:
        method, value = "top_p", k.top_p
    if temperature == 0 or (method == "top_p" and value == 0):
        method = "greedy"
    # numpy seeds must be non-negative; folding keeps every distinct small seed distinct
    seed = base.seed if k.seed is None else k.seed % 2**64
    processors = penalty_processors(k.presence_penalty or 0.0, k.frequency_penalty or 0.0,
                                    _logit_bias(k.logit_bias, vocab_size))
    return SamplingParams(
        max_new_tokens=limit, method=method, value=value, temperature=temperature, seed=seed, stop=_stops(k.stop),
        processors=processors, logprobs=k.logprobs, top_k=base.top_k if k.top_k is None else max(k.top_k, 0),
        min_p=k.min_p or 0.0,
        repetition_penalty=base.repetition_penalty if k.repetition_penalty is None else k.repetition_penalty,
        min_tokens=k.min_tokens or 0, ignore_eos=bool(k.ignore_eos),
        stop_token_ids=_token_ids(k.stop_token_ids, vocab_size))


def chat_logprobs(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}; got {top_logprobs}",
                       param="top_logprobs", code="invalid_value")
    if top_logprobs is not None and not logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs",
                       code="invalid_value")
    return (top_logprobs or 0) if logprobs else None


def legacy_logprobs(logprobs: int | None) -> int | None:
    if logprobs is not None and not 0 <= logprobs <= MAX_LEGACY_LOGPROBS:
        raise APIError(400, f"logprobs must be between 0 and {MAX_LEGACY_LOGPROBS}; got {logprobs}",
                       param="logprobs", code="invalid_value")
    return logprobs
