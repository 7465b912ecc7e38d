"""Sampling settings and the choice of the next token from logits: greedy, top-k or top-p."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from config import InferenceConfig

NUCLEUS_CANDIDATES = 512
# OpenAI's stand-in for "very unlikely": a logprob is a JSON number, and -inf (a masked token) is none.
LOGPROB_FLOOR = -9999.0


class LogitsProcessor:
    """One request's change to its logits before a token is sampled (a penalty, a bias, a grammar's mask),
    told each token chosen so that it can keep its own state. Each request owns its processors."""

    # True when the processor also holds under speculative decoding, where the target's logits for each
    # draft position are processed in turn, each after `accept` of the tokens before it.
    speculative = False

    def process(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        """The logits [vocab] to sample from, given the tokens generated so far."""
        return logits

    def accept(self, token: int) -> None:
        """The token chosen after the last `process`."""

    def fork(self) -> "LogitsProcessor":
        """A fresh copy for another choice of the same request (n > 1): same settings, its own state."""
        return copy.deepcopy(self)


@dataclass
class SamplingParams:
    max_new_tokens: int
    method: str = "top_p"
    value: float = 0.8
    temperature: float = 0.7
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    processors: list[LogitsProcessor] = field(default_factory=list)
    logprobs: int | None = None  # None: none wanted; k: each chosen token's logprob and the k likeliest

    def for_choice(self, i: int) -> "SamplingParams":
        """Choice i of n for one prompt: seed + i, so that it equals a lone request with that seed, and
        processors of its own."""
        seed = None if self.seed is None else (self.seed + i) % 2**64
        return replace(self, seed=seed, stop=list(self.stop), processors=[p.fork() for p in self.processors])

    @classmethod
    def from_config(cls, c: InferenceConfig, **overrides) -> "SamplingParams":
        g = c.generation
        base = dict(max_new_tokens=g.max_output_length, method=g.sampling_method, value=g.sampling_value,
                    temperature=g.temperature, seed=g.seed)
        return cls(**{**base, **overrides})


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def token_probs(logits: np.ndarray, p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The tokens sampling may pick from float32 logits [vocab] (not greedy), and their probabilities."""
    scaled = logits.astype(np.float64) / p.temperature
    if p.method == "top_k":
        k = max(1, min(int(p.value), scaled.size))
        ids = np.argpartition(-scaled, k - 1)[:k]
        return ids, softmax(scaled[ids])
    probs = softmax(scaled)
    # The nucleus almost always lies among the few hundred likeliest tokens: sort only those,
    # and fall back to the whole vocabulary when their mass is short of p.
    k = min(NUCLEUS_CANDIDATES, probs.size)
    ids = np.argpartition(-probs, k - 1)[:k]
    if probs[ids].sum() < p.value:
        ids = np.arange(probs.size)
    ids = ids[np.argsort(-probs[ids])]
    keep = int(np.searchsorted(np.cumsum(probs[ids]), p.value)) + 1
    ids = ids[:keep]
    return ids, probs[ids] / probs[ids].sum()


def is_greedy(p: SamplingParams) -> bool:
    return p.method == "greedy" or p.temperature == 0


def sample(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token from float32 logits [vocab]."""
    if is_greedy(p):
        return int(np.argmax(logits))
    ids, probs = token_probs(logits, p)
    return int(rng.choice(ids, p=probs))


@dataclass
class TokenLogprob:
    """A chosen token's log-probability and the likeliest alternatives [(token, logprob)], best first."""
    token: int
    logprob: float
    top: list[tuple[int, float]]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """The log-softmax of the logits a token was chosen from (after the processors, before temperature and
    top-p, as OpenAI reports the model's own distribution), at the token and at the `top` likeliest."""
    lp = np.maximum(log_softmax(logits), LOGPROB_FLOOR)
    ids = np.argpartition(-lp, top - 1)[:top] if top else np.array([], np.int64)
    ids = ids[np.lexsort((ids, -lp[ids]))]  # likeliest first, ties by id: the same order every time
    return TokenLogprob(token, float(lp[token]), [(int(i), float(lp[i])) for i in ids])


def speculative_ok(p: SamplingParams) -> bool:
    """Speculative decoding judges drafts against the processed logits and reports no logprobs: a request
    may use it when it asks for no logprobs and each of its processors says it holds there."""
    return p.logprobs is None and all(processor.speculative for processor in p.processors)
