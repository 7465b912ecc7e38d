"""Speculative decoding: a draft model (the same model, quantized) guesses a few tokens, and the target
model checks them all in one graph call.

Decoding on a CPU is bound by the bytes of weights read per token. Checking four guessed tokens reads
the target's weights once instead of four times, so every accepted guess saves a pass over them. The
output is the target's own: greedy decoding keeps a guess only when it is the target's argmax, and
sampling uses the accept/reject rule of Leviathan et al. (2023), which leaves the target's distribution
(after temperature, top-k and top-p) exactly as it was.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from config import InferenceConfig
from engine.sampling import SamplingParams, is_greedy, sample, token_probs
from kvcache import common_prefix
from session import Session, open_session


def dense_probs(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """token_probs over the whole vocabulary, zero outside what sampling may pick."""
    ids, probs = token_probs(logits, p)
    dense = np.zeros(logits.shape[-1])
    dense[ids] = probs
    return dense


class Drafter:
    """The draft session, the ids its cache holds, and how its guesses fared: of the guesses the target
    judged (a round stops judging at the first wrong one), how many it accepted."""

    def __init__(self, session: Session, tokens: int):
        self.session, self.tokens = session, tokens
        self.ids: list[int] = []
        self.judged = self.accepted = 0

    @classmethod
    def from_config(cls, config: InferenceConfig) -> "Drafter":
        """The draft model config.session.draft_onnx_model_path names, set up to draft for config's model."""
        return cls(open_session(config.draft()), config.session.draft_tokens)

    def reset(self) -> None:
        self.session.reset()
        self.ids = []

    def propose(self, context: list[int], n: int, params: SamplingParams,
                rng: np.random.Generator) -> tuple[list[int], list[np.ndarray | None]]:
        """n guesses to follow context, and the distribution each was drawn from (None when greedy).
        The draft cache keeps whatever prefix it shares with context and runs only the rest."""
        keep = min(common_prefix(self.ids, context), len(context) - 1)
        self.session.truncate(keep)
        logits = self.session.run(np.array([context[keep:]], dtype=np.int64))
        self.ids = list(context)
        guesses: list[int] = []
        dists: list[np.ndarray | None] = []
        for i in range(n):
            q = None if is_greedy(params) else dense_probs(logits, params)
            guesses.append(int(np.argmax(logits)) if q is None else int(rng.choice(q.size, p=q)))
            dists.append(q)
            if i < n - 1:
                logits = self.session.run(np.array([[guesses[-1]]], dtype=np.int64))
                self.ids.append(guesses[-1])
        return guesses, dists


def judge(guess: int, logits: np.ndarray, q: np.ndarray | None, params: SamplingParams,
          rng: np.random.Generator) -> int:
    """The token the target emits where the draft guessed `guess` (drawn from q): the guess itself
    when accepted, else a replacement drawn so that the result follows the target's distribution."""
    if q is None:
        return int(np.argmax(logits))
    p = dense_probs(logits, params)
    if rng.random() * q[guess] < p[guess]:
        return guess
    rest = np.maximum(p - q, 0.0)
    total = rest.sum()
    # p == q leaves nothing over; then every guess is accepted above and this is not reached.
    return int(rng.choice(p.size, p=rest / total)) if total > 0 else int(rng.choice(p.size, p=p))


def speculative_tokens(target: Session, drafter: Drafter, cached: list[int], logits: np.ndarray,
                       params: SamplingParams, rng: np.random.Generator) -> Iterator[int]:
    """Tokens after a prefill whose last logits are `logits`, as plain decoding would yield them.

    `cached` lists the ids the target cache holds, and is kept up to date in place. When a token is
    yielded it holds exactly the tokens before it, as in plain decoding. The target's cache may then
    already hold a few more (guesses being checked). Only the first len(cached) slots count: the next
    prefill truncates to a prefix of `cached`."""
    pending = sample(logits, params, rng)
    yield pending
    yield from speculative_after(target, drafter, cached, pending, params, rng)


def _unchanged(logits: np.ndarray) -> np.ndarray:
    return logits


def speculative_after(target: Session, drafter: Drafter, cached: list[int], pending: int,
                      params: SamplingParams, rng: np.random.Generator,
                      process: Callable[[np.ndarray], np.ndarray] = _unchanged) -> Iterator[int]:
    """The tokens after `pending`, a token already yielded but not yet in the cache, which holds exactly
    `cached`; as speculative_tokens. A caller may stop at any yield and go on with plain decoding from
    the token just yielded, once it has truncated the target to len(cached).

    process: the request's logits processors (a grammar's mask, say). Each guess is judged against the
    processed target logits at its position, so the tokens are those plain decoding with the processors
    would give; the caller tells the processors each yielded token before asking for the next one. The
    draft guesses unprocessed: a guess the processors forbid is rejected like any wrong guess."""
    while True:
        room = target.kv_len - len(cached) - 1
        guesses, dists = drafter.propose(cached + [pending], min(drafter.tokens, room), params, rng) \
            if room > 0 else ([], [])
        rows = target.run_all(np.array([[pending] + guesses], dtype=np.int64))
        cached.append(pending)
        for i, guess in enumerate(guesses):
            pending = judge(guess, process(rows[i]), dists[i], params, rng)
            drafter.judged += 1
            if pending != guess:
                break
            drafter.accepted += 1
            yield guess
            cached.append(guess)
        else:
            pending = sample(process(rows[len(guesses)]), params, rng)
        target.truncate(len(cached))
        yield pending
