"""Sampling settings and the choice of the next token from logits: greedy, or sampling after temperature with
top-k, top-p (nucleus) and min-p cut-offs, in that order (as vLLM and llama.cpp apply them)."""
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
    method: str = "top_p"  # greedy, top_k (value is k) or top_p (value is p): the seed project's two flags
    value: float = 0.8
    temperature: float = 0.7
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    processors: list[LogitsProcessor] = field(default_factory=list)
    logprobs: int | None = None  # None: none wanted; k: each chosen token's logprob and the k likeliest
    top_k: int = 0  # also keep only the k likeliest tokens (0: no such cut), whatever the method
    min_p: float = 0.0  # drop tokens less likely than min_p times the likeliest one
    # CTRL's multiplicative penalty (as vLLM and llama.cpp apply it) on every token of the prompt and the
    # answer so far: a positive logit is divided by it, a negative one multiplied.
    repetition_penalty: float = 1.0
    min_tokens: int = 0  # the end tokens (and stop_token_ids) are masked until this many tokens are out
    ignore_eos: bool = False  # the end-of-sequence tokens do not end the answer
    stop_token_ids: list[int] = field(default_factory=list)  # tokens that end the answer, as an end token does

    def for_choice(self, i: int) -> "SamplingParams":
        """Choice i of n for one prompt: seed + i, so that it equals a lone request with that seed, and
        processors of its own."""
        seed = None if self.seed is None else (self.seed + i) % 2**64
        return replace(self, seed=seed, stop=list(self.stop), processors=[p.fork() for p in self.processors],
                       stop_token_ids=list(self.stop_token_ids))

    @classmethod
    def from_config(cls, c: InferenceConfig, **overrides) -> "SamplingParams":
        g = c.generation
        base = dict(max_new_tokens=g.max_output_length, method=g.sampling_method, value=g.sampling_value,
                    temperature=g.temperature, seed=g.seed, top_k=g.top_k or 0,
                    repetition_penalty=g.repetition_penalty)
        return cls(**{**base, **overrides})

    @property
    def cut_k(self) -> int:
        """The top-k cut in force: the method's k, the top_k field's, or the smaller of both (0: none)."""
        ks = [k for k in (int(self.value) if self.method == "top_k" else 0, self.top_k) if k > 0]
        return min(ks) if ks else 0

    @property
    def cut_p(self) -> float:
        return self.value if self.method == "top_p" else 1.0


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def token_probs(logits: np.ndarray, p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The tokens sampling may pick from float32 logits [vocab] (not greedy), and their probabilities:
    temperature, then the top-k, top-p and min-p cut-offs, each on what the one before kept."""
    scaled = logits.astype(np.float64) / p.temperature
    if k := p.cut_k:
        k = min(k, scaled.size)
        ids = np.argpartition(-scaled, k - 1)[:k]
        probs = softmax(scaled[ids])
        if p.cut_p < 1.0 or p.min_p > 0:
            order = np.argsort(-probs)
            ids, probs = ids[order], probs[order]
    else:
        full = softmax(scaled)
        # The nucleus almost always lies among the few hundred likeliest tokens: sort only those,
        # and fall back to the whole vocabulary when their mass is short of p.
        k = min(NUCLEUS_CANDIDATES, full.size)
        ids = np.argpartition(-full, k - 1)[:k]
        if full[ids].sum() < p.cut_p:
            ids = np.arange(full.size)
        ids = ids[np.argsort(-full[ids])]
        probs = full[ids]
    if p.cut_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), p.cut_p)) + 1  # probs of the whole distribution
        ids, probs = ids[:keep], probs[:keep]
    if p.min_p > 0:
        keep = probs >= p.min_p * probs[0]
        ids, probs = ids[keep], probs[keep]
    return ids, probs / probs.sum()


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
    lp = np.nan_to_num(np.maximum(log_softmax(logits), LOGPROB_FLOOR), nan=LOGPROB_FLOOR, posinf=0.0)
    ids = np.argpartition(-lp, top - 1)[:top] if top else np.array([], np.int64)
    ids = ids[np.lexsort((ids, -lp[ids]))]  # likeliest first, ties by id: the same order every time
    return TokenLogprob(token, float(lp[token]), [(int(i), float(lp[i])) for i in ids])


def speculative_ok(p: SamplingParams) -> bool:
    """Speculative decoding judges drafts against the processed logits and reports no logprobs: a request
    may use it when it asks for no logprobs and each of its processors says it holds there."""
    return p.logprobs is None and all(processor.speculative for processor in p.processors)
