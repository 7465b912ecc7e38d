"""The graph-only side of serving several conversations on a CPU, timed in one process on the cpu graph:
one decode step for 1 to 8 rows (what batching can gain at most) and the time to read new prompt tokens on
one row (what every new request costs before its first token). load.py records both beside its runs and
load_goals.py's ceilings are computed from them."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from config import InferenceConfig
from core.flags import option

ROWS = (1, 2, 4, 8)
PREFILL_LENGTHS = (16, 32, 64, 96, 128)
PREFILL_PREFIX = 28  # the chat template's system turn, which a server lends every new prompt (load.py)


@dataclass
class GraphTiming:
    hf_model_dir: str = option(help="the model directory the cpu graphs were exported from")
    context: int = option(256, help="tokens each row holds while decode is timed")
    rounds: int = option(7, help="interleaved rounds; the median is reported")
    steps: int = option(4, help="decode steps timed per round and row count")
    max_prefill_length: int = option(64, help="the session's prefill chunk")
    threads: int = option(2, help="CPU threads")


def session_config(t: GraphTiming, model: str, rows: int, kv_needed: int) -> InferenceConfig:
    return InferenceConfig.create(t.hf_model_dir, onnx_model_path=model, max_batch=rows, cpu_thread=t.threads,
                                  max_prefill_length=t.max_prefill_length, max_input_length=kv_needed)


def decode_ratio(t: GraphTiming, model: str) -> dict:
    """One decode step for k rows (k in ROWS), each holding t.context tokens, in interleaved rounds
    (median): tokens/s = k / step time; "vs_1_row" against the one-row step, "per_answer_vs_alone" each
    conversation's own speed against running alone."""
    from session import open_session

    session = open_session(session_config(t, model, max(ROWS), t.context + 1))
    rng = np.random.default_rng(0)
    vocab = session.config.shape.vocab_size
    for r in range(session.rows):
        session.row_session(r).run(rng.integers(3, vocab, (1, t.context)))
    times: dict[int, list[float]] = {k: [] for k in ROWS}
    for _ in range(t.rounds):
        for k in ROWS:
            rows = list(range(k))
            tokens = rng.integers(3, vocab, k).tolist()
            start = time.perf_counter()
            for _ in range(t.steps):
                session.decode(rows, tokens)
            times[k].append((time.perf_counter() - start) / t.steps)
            for r in rows:  # back to t.context tokens: every round times the same work
                session.row_session(r).truncate(t.context)
    step = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model, "context": t.context, "threads": t.threads,
            "step_ms": {k: round(1000 * s, 2) for k, s in step.items()},
            "tok_s": {k: round(k / s, 1) for k, s in step.items()},
            "vs_1_row": {k: round(step[1] * k / s, 2) for k, s in step.items()},
            "per_answer_vs_alone": {k: round(step[1] / s, 2) for k, s in step.items()}}


def prefill_cost(t: GraphTiming, model: str) -> dict:
    """Seconds to read n new prompt tokens on one row holding PREFILL_PREFIX tokens, split as the server
    splits them (--max_prefill_length chunks and one shorter rest), for each n of PREFILL_LENGTHS; rounds
    interleaved, median. Prefill is bound by arithmetic, not by reading the weights: no other row makes
    it cheaper, so a server with k new prompts spends k times this before the last one's first token."""
    from session import open_session

    session = open_session(session_config(t, model, 1, PREFILL_PREFIX + max(PREFILL_LENGTHS)))
    rng = np.random.default_rng(2)
    vocab = session.config.shape.vocab_size
    session.run(rng.integers(3, vocab, (1, PREFILL_PREFIX)))
    times: dict[int, list[float]] = {n: [] for n in PREFILL_LENGTHS}
    for _ in range(t.rounds):
        for n in PREFILL_LENGTHS:
            ids = rng.integers(3, vocab, (1, n))
            start = time.perf_counter()
            session.run(ids)
            times[n].append(time.perf_counter() - start)
            session.truncate(PREFILL_PREFIX)
    return {"model": model, "threads": t.threads, "max_prefill_length": t.max_prefill_length,
            "prefix": PREFILL_PREFIX, "prefill_s": {n: round(statistics.median(v), 4) for n, v in times.items()}}
