"""Penalties and biases as LogitsProcessors (engine/sampling.py).

OpenAI's, as it documents them: with c[j] the number of times token j was generated so far,
logits[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty; and logit_bias[j] is added to
logits[j] before sampling (-100 bans a token in practice, +100 all but forces it).
The local servers' (vLLM, llama.cpp): repetition_penalty, CTRL's multiplicative penalty on every token seen
in the prompt or the answer; min_tokens, which holds the end tokens back until the answer is that long."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.sampling import LogitsProcessor


class Penalties(LogitsProcessor):
    """Presence and frequency penalties over the tokens this choice has generated (not the prompt)."""

    def __init__(self, presence: float, frequency: float):
        self.presence, self.frequency = presence, frequency
        self.counts: dict[int, int] = {}

    def process(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        if not self.counts:
            return logits
        ids = np.fromiter(self.counts, np.int64, len(self.counts))
        counts = np.fromiter(self.counts.values(), np.float32, len(self.counts))
        out = logits.copy()
        out[ids] -= counts * self.frequency + self.presence
        return out

    def accept(self, token: int) -> None:
        self.counts[token] = self.counts.get(token, 0) + 1


class LogitBias(LogitsProcessor):
    """A fixed amount added to given tokens' logits at every step."""

    def __init__(self, bias: dict[int, float]):
        self.ids = np.array(list(bias), np.int64)
        self.values = np.array(list(bias.values()), np.float32)

    def process(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        out = logits.copy()
        out[self.ids] += self.values
        return out


def penalty_processors(presence: float, frequency: float, bias: dict[int, float]) -> list[LogitsProcessor]:
    """The processors a request's settings ask for; none for the neutral ones."""
    out: list[LogitsProcessor] = []
    if bias:
        out.append(LogitBias(bias))
    if presence or frequency:
        out.append(Penalties(presence, frequency))
    return out


class RepetitionPenalty(LogitsProcessor):
    """Every token of the prompt and of the answer so far: a positive logit divided by the penalty, a negative
    one multiplied by it (so that a penalty above 1 always makes the token less likely)."""

    speculative = True  # it depends only on the tokens accepted so far

    def __init__(self, penalty: float, prompt_ids: Sequence[int]):
        self.penalty = penalty
        self.seen = set(prompt_ids)
        self._ids: np.ndarray | None = None  # self.seen as an array, rebuilt only after it grew

    def process(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        if self._ids is None:
            self._ids = np.fromiter(self.seen, np.int64, len(self.seen))
        out = logits.copy()
        picked = out[self._ids]
        out[self._ids] = np.where(picked > 0, picked / self.penalty, picked * self.penalty)
        return out

    def accept(self, token: int) -> None:
        if token not in self.seen:
            self.seen.add(token)
            self._ids = None


class MinTokens(LogitsProcessor):
    """The end tokens masked until `count` tokens have been generated."""

    speculative = True

    def __init__(self, count: int, end_ids: Sequence[int]):
        self.count = count
        self.end_ids = np.array(sorted(end_ids), np.int64)

    def process(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        if len(generated) >= self.count or not self.end_ids.size:
            return logits
        out = logits.copy()
        out[self.end_ids[self.end_ids < out.size]] = -np.inf
        return out
