"""What serving several conversations at once buys on a CPU, side by side in one process.

1. Graph only: one decode step of the cpu graph for k rows (k = 1, 2, 4, 8), every row holding --context
   tokens, timed in interleaved rounds (median). tokens/s = k / step time; "vs 1 row" is that against
   the one-row step, and "per answer" is each conversation's own speed against running alone.
2. The decode gap: one request decoding while another arrives with a --long_prompt-token prompt. The
   scheduler prefills the long prompt one chunk (--max_prefill_length) at a time between decode steps;
   reported are the decoding request's longest wait between two tokens, its median wait, and the time
   the whole prompt's prefill took (what the wait would be if the prompt ran in one go).
3. Prefill cost: the time to read 16 to 128 new prompt tokens on one row (what load.py's ceilings use).

1 and 3 are bench/graph_ratio.py's, which load.py runs too.

    python bench/experiments/batch_ratio.py --hf_model_dir download/Qwen2.5-Coder-0.5B-Instruct \\
        --onnx_model_path output/onnx_cpu/q.onnx [--onnx_model_path output/onnx_cpu_int4/q.onnx]

Writes the numbers as JSON lines to stdout (and to --output when given).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.graph_ratio import GraphTiming, decode_ratio, prefill_cost, session_config
from core.errors import run_main
from core.flags import ArgumentParser, add_flags, from_args, option


@dataclass
class BatchRatioOptions:
    onnx_model_path: list[str] = option(help="a cpu graph; repeat (or list several) for several")
    long_prompt: int = option(1030, help="tokens of the prompt that arrives mid-answer")
    output: str | None = option(None, help="also append the JSON lines to this file")


def decode_gap(t: GraphTiming, long_prompt: int, model: str) -> dict:
    """Token times of a decoding request while a long prompt is prefilled beside it."""
    from inference import Generation, Inference, SamplingParams

    engine = Inference(session_config(t, model, 2, long_prompt))
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
    long = engine.start(rng.integers(3, vocab, long_prompt).tolist(), SamplingParams(4, **greedy))
    first = len(stamps)
    prefill_start = time.perf_counter()
    while long.first_token_at is None:
        engine.step()
    prefill_s = time.perf_counter() - prefill_start
    gaps = np.diff(stamps[first - 1:])
    engine.cancel(short)
    while not long.finished:
        engine.step()
    return {"model": model, "long_prompt": long_prompt, "max_prefill_length": t.max_prefill_length,
            "threads": t.threads, "prefill_s": round(prefill_s, 2), "longest_gap_s": round(float(gaps.max()), 3),
            "median_gap_s": round(float(np.median(gaps)), 3), "tokens_meanwhile": len(gaps)}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(p, GraphTiming)
    add_flags(p, BatchRatioOptions)
    args = p.parse_args(argv)
    return run_main("batch_ratio.py", lambda: run(from_args(GraphTiming, args), from_args(BatchRatioOptions, args)))


def run(t: GraphTiming, o: BatchRatioOptions) -> int:
    for model in o.onnx_model_path:
        for record in (decode_ratio(t, model), decode_gap(t, o.long_prompt, model), prefill_cost(t, model)):
            line = json.dumps(record)
            print(line, flush=True)
            if o.output:
                with open(Path(o.output), "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
