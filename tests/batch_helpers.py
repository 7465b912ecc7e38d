"""Shared by the batching tests: drive an Inference's scheduler step by step, and see every token it hands
each request."""
from __future__ import annotations

from inference import Generation, Inference, SamplingParams


def record_tokens(monkeypatch) -> None:
    """Every Generation records the tokens the engine hands it in `seen` (end tokens included): Deltas
    carry text, and a token that only starts a character carries none."""
    accept = Generation.accept

    def recording(self, token, cache_full):
        self.__dict__.setdefault("seen", []).append(token)
        return accept(self, token, cache_full)

    monkeypatch.setattr(Generation, "accept", recording)


def alone(engine: Inference, ids: list[int], params: SamplingParams) -> list[int]:
    """The tokens a request gets with nothing else running, from an empty cache."""
    engine.reset()
    generation = engine.start(ids, params)
    while not generation.finished:
        engine.step()
    assert generation.error is None
    return generation.seen


def schedule(engine: Inference, arrivals: list[tuple[int, list[int], SamplingParams, int | None]]) -> list:
    """Start request i at step arrivals[i][0]; cancel it once it has arrivals[i][3] tokens (None: never).
    Returns the Generations, after every one has finished."""
    started: dict[int, Generation] = {}
    step = 0
    while len(started) < len(arrivals) or not all(g.finished for g in started.values()):
        for i, (at, ids, params, _) in enumerate(arrivals):
            if at == step:
                started[i] = engine.start(ids, params)
        engine.step()
        for i, g in started.items():
            cancel_after = arrivals[i][3]
            if cancel_after and not g.finished and len(getattr(g, "seen", [])) >= cancel_after:
                engine.cancel(g)
        step += 1
        assert step < 2000, "the requests never finished"
    return [started[i] for i in range(len(arrivals))]
