"""The sampling options both endpoints share beyond the basic ones: n, logprobs, presence and frequency
penalties, logit_bias; and the request fields we refuse by name because they would change the answer and
this server does not honour them (nothing that changes the output is silently ignored)."""
from __future__ import annotations

from engine.penalties import penalty_processors
from inference import SamplingParams
from server.errors import APIError
from server.schema import Sampling

MAX_N = 16  # choices per prompt; beyond the free slots they queue
MAX_TOP_LOGPROBS = 20  # OpenAI's limits: chat 20, legacy completions 5
MAX_LEGACY_LOGPROBS = 5

# Fields OpenAI (or a popular OpenAI-compatible server) defines that would change the answer, and why we
# do not honour them. Fields that change nothing we return (user, metadata, store, service_tier, ...) are
# accepted and ignored.
REFUSED = {
    "audio": "this model answers in text only",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "this model does not reason in a separate channel",
    "verbosity": "this model has no verbosity setting",
    "web_search_options": "this server does not search the web",
    "top_k": "use top_p (the server's --sampling_method sets top-k for every request)",
    "min_p": "use top_p",
    "typical_p": "use top_p",
    "repetition_penalty": "use presence_penalty or frequency_penalty",
    "length_penalty": "beam search is not supported",
    "use_beam_search": "beam search is not supported",
    "min_tokens": "not supported",
    "guided_json": "use response_format",
    "guided_regex": "not supported",
    "guided_choice": "not supported",
    "guided_grammar": "not supported",
}


def refuse_unknown(req: Sampling) -> None:
    """A 400 naming the first field that would change the answer and that we do not honour."""
    extra = req.model_extra or {}
    for name, why in REFUSED.items():
        if extra.get(name) is not None:
            raise APIError(400, f"{name} is not supported by this server: {why}", param=name,
                           code="unsupported_parameter")
    modalities = extra.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise APIError(400, "modalities: this model answers in text only (send [\"text\"] or leave it out)",
                       param="modalities", code="unsupported_parameter")


def choices(n: int | None) -> int:
    if n is None:
        return 1
    if not 1 <= n <= MAX_N:
        raise APIError(400, f"n must be between 1 and {MAX_N}; got {n}", param="n", code="invalid_value")
    return n


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    out = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < vocab_size:
            raise APIError(400, f"logit_bias: '{key}' is not a token id of this model (0 to {vocab_size - 1})",
                           param="logit_bias", code="invalid_value")
        if not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: the bias of token {key} must be between -100 and 100; got {value}",
                           param="logit_bias", code="invalid_value")
        out[token] = value
    return out


def apply(req: Sampling, params: SamplingParams, vocab_size: int, logprobs: int | None) -> SamplingParams:
    """The request's penalties and bias added to params' processors, and the logprobs it wants (None: no
    logprobs; k: each token's and the k likeliest)."""
    bias = _logit_bias(req.logit_bias, vocab_size)
    params.processors = params.processors + penalty_processors(req.presence_penalty or 0.0,
                                                               req.frequency_penalty or 0.0, bias)
    params.logprobs = logprobs
    return params


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
