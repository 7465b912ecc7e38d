"""What serving several conversations at once buys on a CPU, side by side in one process.

1. Graph only: one decode step of the cpu graph for k rows (k = 1, 2, 4, 8), every row holding --context
   tokens, timed in interleaved rounds (median). tokens/s = k / step time; "vs 1 row" is that against
   the one-row step, and "per answer" is each conversation's own speed against running alone.
2. The decode gap: one request decoding while another arrives with a --long_prompt-token prompt. The
   scheduler prefills the long prompt one chunk (--max_prefill_length) at a time between decode steps;
   reported are the decoding request's longest wait between two tokens, its median wait, and the time
   the whole prompt's prefill took (what the wait would be if the prompt ran in one go).
3. Prefill cost: the time to read 16 to 128 new prompt tokens on one row (what load.py's ceilings use).

    python bench/batch_ratio.py --hf_model_dir download/Qwen2.5-Coder-0.5B-Instruct \\
        --onnx_model_path output/onnx_cpu/q.onnx [--onnx_model_path output/onnx_cpu_int4/q.onnx]

Writes the numbers as JSON lines to stdout (and to --output when given).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from config import InferenceConfig
from core.errors import run_main
from core.flags import ArgumentParser

ROWS = (1, 2, 4, 8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hf_model_dir", required=True)
    p.add_argument("--onnx_model_path", action="append", required=True, help="a cpu graph; repeat for several")
    p.add_argument("--context", type=int, default=256, help="tokens each row holds while decode is timed")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is reported")
    p.add_argument("--steps", type=int, default=4, help="decode steps timed per round and row count")
    p.add_argument("--long_prompt", type=int, default=1030, help="tokens of the prompt that arrives mid-answer")
    p.add_argument("--max_prefill_length", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", help="also append the JSON lines to this file")
    return p.parse_args(argv)


def config(a: argparse.Namespace, model: str, rows: int, kv_needed: int) -> InferenceConfig:
    return InferenceConfig.create(a.hf_model_dir, onnx_model_path=model, max_batch=rows, cpu_thread=a.threads,
                                  max_prefill_length=a.max_prefill_length, max_input_length=kv_needed)


def decode_ratio(a: argparse.Namespace, model: str) -> dict:
    from session import open_session

    session = open_session(config(a, model, max(ROWS), a.context + 1))
    rng = np.random.default_rng(0)
    vocab = session.config.shape.vocab_size
    for r in range(session.rows):
        session.row_session(r).run(rng.integers(3, vocab, (1, a.context)))
    times: dict[int, list[float]] = {k: [] for k in ROWS}
    for _ in range(a.rounds):
        for k in ROWS:
            rows = list(range(k))
            tokens = rng.integers(3, vocab, k).tolist()
            start = time.perf_counter()
            for _ in range(a.steps):
                session.decode(rows, tokens)
            times[k].append((time.perf_counter() - start) / a.steps)
            for r in rows:  # back to --context tokens: every round times the same work
                session.row_session(r).truncate(a.context)
    step = {k: statistics.median(t) for k, t in times.items()}
    return {"model": model, "context": a.context, "threads": a.threads,
            "step_ms": {k: round(1000 * s, 2) for k, s in step.items()},
            "tok_s": {k: round(k / s, 1) for k, s in step.items()},
            "vs_1_row": {k: round(step[1] * k / s, 2) for k, s in step.items()},
            "per_answer_vs_alone": {k: round(step[1] / s, 2) for k, s in step.items()}}


PREFILL_LENGTHS = (16, 32, 64, 96, 128)
PREFILL_PREFIX = 28  # the chat template's system turn, which a server lends every new prompt (load.py)


def prefill_cost(a: argparse.Namespace, model: str) -> dict:
    """Seconds to read n new prompt tokens on one row holding PREFILL_PREFIX tokens, split as the server
    splits them (--max_prefill_length chunks and one shorter rest), for each n of PREFILL_LENGTHS; rounds
    interleaved, median. Prefill is bound by arithmetic, not by reading the weights: no other row makes
    it cheaper, so a server with k new prompts spends k times this before the last one's first token."""
    from session import open_session

    session = open_session(config(a, model, 1, PREFILL_PREFIX + max(PREFILL_LENGTHS)))
    rng = np.random.default_rng(2)
    vocab = session.config.shape.vocab_size
    session.run(rng.integers(3, vocab, (1, PREFILL_PREFIX)))
    times: dict[int, list[float]] = {n: [] for n in PREFILL_LENGTHS}
    for _ in range(a.rounds):
        for n in PREFILL_LENGTHS:
            ids = rng.integers(3, vocab, (1, n))
            start = time.perf_counter()
            session.run(ids)
            times[n].append(time.perf_counter() - start)
            session.truncate(PREFILL_PREFIX)
    return {"model": model, "threads": a.threads, "max_prefill_length": a.max_prefill_length,
            "prefix": PREFILL_PREFIX, "prefill_s": {n: round(statistics.median(t), 4) for n, t in times.items()}}


def decode_gap(a: argparse.Namespace, model: str) -> dict:
    """Token times of a decoding request while a long prompt is prefilled beside it."""
    from inference import Generation, Inference, SamplingParams

    engine = Inference(config(a, model, 2, a.long_prompt))
    stamps: list[float] = []
    accept = Generation.accept

    class Stamped(Generation):
        def accept(self, token: int, cache_full: bool) -> bool:
            stamps.append(time.perf_counter())
            return accept(self, token, cache_full)

    rng = np.random.default_rng(1)
    vocab = engine.config.shape.vocab_size
    greedy = dict(method="greedy", temperature=0.0)
    short = Stamped(rng.integers(3, vocab, 40).tolist(), SamplingParams(10_000, **greedy), engine.tokenizer.decode,
                    set())
    engine.scheduler.submit(short)
    while len(stamps) < 8:  # decoding steadily
        engine.step()
    long = engine.start(rng.integers(3, vocab, a.long_prompt).tolist(), SamplingParams(4, **greedy))
    first = len(stamps)
    prefill_start = time.perf_counter()
    while long.first_token_at is None:
        engine.step()
    prefill_s = time.perf_counter() - prefill_start
    gaps = np.diff(stamps[first - 1:])
    engine.cancel(short)
    while not long.finished:
        engine.step()
    return {"model": model, "long_prompt": a.long_prompt, "max_prefill_length": a.max_prefill_length,
            "threads": a.threads, "prefill_s": round(prefill_s, 2), "longest_gap_s": round(float(gaps.max()), 3),
            "median_gap_s": round(float(np.median(gaps)), 3), "tokens_meanwhile": len(gaps)}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_main("batch_ratio.py", lambda: run(a))


def run(a: argparse.Namespace) -> int:
    for model in a.onnx_model_path:
        for record in (decode_ratio(a, model), decode_gap(a, model), prefill_cost(a, model)):
            line = json.dumps(record)
            print(line, flush=True)
            if a.output:
                with open(Path(a.output), "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
