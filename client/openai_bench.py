"""Measures the server from outside, through the openai package:
  load:   N concurrent short requests -> requests/s and p50/p95 latency;
  reuse:  second-turn time to first token when the cache holds turn one, and when it does not."""
from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from client.common import connect, parser, run

HISTORY = ("Here is some context about our project. It exports Qwen chat models to ONNX with a static "
           "key-value cache, patches the graph for Ascend's atc compiler, and serves the model through an "
           "OpenAI-compatible HTTP API. The cache is a preallocated buffer; prefill runs in power-of-two "
           "chunks; decoding appends one token at a time. ") * 3


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(client, model: str, n: int, max_tokens: int) -> None:
    def one(i: int) -> float:
        start = time.perf_counter()
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Say hello #{i}."}],
                                       max_tokens=max_tokens, temperature=0)
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        latencies = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    print(f"load: {n} concurrent requests, max_tokens {max_tokens}: {n / wall:.2f} requests/s, "
          f"latency p50 {percentile(latencies, 0.5):.2f}s p95 {percentile(latencies, 0.95):.2f}s")


def first_token(client, model: str, messages: list[dict]) -> tuple[float, int]:
    """Seconds to the first content piece, and the cached prompt tokens the server reported."""
    start, ttft, cached = time.perf_counter(), None, -1
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage:
            cached = chunk.usage.prompt_tokens_details.cached_tokens
    return (ttft if ttft is not None else time.perf_counter() - start), cached


def reuse(client, model: str, rounds: int) -> None:
    warm, cold = [], []
    for i in range(rounds):
        turn1 = [{"role": "user", "content": f"{HISTORY}\nRound {i}: what does the cache do?"}]
        answer = client.chat.completions.create(model=model, messages=turn1, max_tokens=24, temperature=0)
        turn2 = turn1 + [{"role": "assistant", "content": answer.choices[0].message.content},
                         {"role": "user", "content": "And what does prefill do?"}]
        warm.append(first_token(client, model, turn2))
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Unrelated."}],
                                       max_tokens=1)  # replaces the cached conversation
        cold.append(first_token(client, model, turn2))
    for name, runs in (("with reuse", warm), ("without reuse", cold)):
        times = [t for t, _ in runs]
        print(f"second turn first token {name}: median {statistics.median(times):.3f}s "
              f"(runs {', '.join(f'{t:.3f}' for t in times)}; cached tokens {runs[0][1]})")


def main() -> None:
    p = parser(__doc__, "")
    p.add_argument("--mode", choices=["load", "reuse", "both"], default="both")
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    client, model = connect(args)
    if args.mode in ("load", "both"):
        load(client, model, args.concurrency, min(args.max_tokens, 16))
    if args.mode in ("reuse", "both"):
        reuse(client, model, args.rounds)
    sys.stdout.flush()


if __name__ == "__main__":
    run(main)
