"""Sampling parameters from a request, built in one place for every door: the server's defaults, overridden
by what the request sets (limit, temperature, top_p, seed, stops, penalties, logit_bias, logprobs), with the
limits OpenAI documents checked as OpenAI answers them (a 400 that names the field)."""
from __future__ import annotations

from dataclasses import dataclass

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


def sampling_params(k: Knobs, base: SamplingParams, max_output: int, vocab_size: int) -> SamplingParams:
    """The parameters one request samples with."""
    if k.max_tokens is not None and k.max_tokens > max_output:
        raise APIError(400, f"{k.limit_field} is too large: {k.max_tokens}. This server answers with at most "
                            f"{max_output} tokens (--max_output_length).", param=k.limit_field)
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
    return SamplingParams(max_new_tokens=k.max_tokens or max_output, method=method, value=value,
                          temperature=temperature, seed=seed, stop=_stops(k.stop), processors=processors,
                          logprobs=k.logprobs)


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
