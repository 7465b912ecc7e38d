"""OpenAI's presence and frequency penalties and logit_bias, as LogitsProcessors (engine/sampling.py).

As OpenAI documents them: with c[j] the number of times token j was generated so far,
logits[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty; and logit_bias[j] is added to
logits[j] before sampling (-100 bans a token in practice, +100 all but forces it)."""
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
