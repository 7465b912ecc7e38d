"""Two Ray Serve replicas (deploy/ray_serve.py), each pinned to one core, against one api.py on both cores:

    python bench/experiments/ray_load.py --hf_model_dir download/Qwen2.5-Coder-0.5B-Instruct \
        --onnx_model_path output/onnx_cpu_int4/qwen2.5_coder_0.5b_instruct.onnx

- throughput: 8 streaming clients at once, each sending its requests one after another; completion tokens
  of all clients over the wall time, api.py (--cpu_thread 2) against the Ray replicas (--replicas 2
  --num_cpus_per_replica 1 --pin_cores: each replica's process, all its threads, on its own core, one
  onnxruntime thread), and api.py with --cpu_thread 1 beside them;
- turn-2 first-token latency on the replicas: a conversation's first turn, then its second, one
  conversation at a time; the second turn's time to its first streamed token, and how many second turns
  left their first turn's replica (conversation affinity keeps them: none should).

The servers run as the user would start them (subprocesses) and stay up for the whole run; each round
measures every variant once, back to back, so the shared machine's noise falls on all alike, and the
median of the rounds is reported. Writes bench/experiments/ray_load.json. (The recorded run also compared
random routing, a router policy kept only for it and since removed.)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from core.flags import ArgumentParser, add_flags, from_args, option

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 8
QUESTIONS = ["Write a Python function that checks whether a string is a palindrome.",
             "Explain what a Python generator is, with a short example.",
             "Write a function that returns the n-th Fibonacci number iteratively.",
             "How do I read a CSV file with the csv module? Show code.",
             "Write a binary search over a sorted list in Python.",
             "What does the with statement do in Python? Show an example.",
             "Write a function that counts the words in a text file.",
             "Show how to sort a list of dicts by a key in Python."]
TURN2 = "Now add type hints and a docstring to it."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(name: str, argv: list[str], log_dir: Path, startup_s: float = 900) -> Iterator[str]:
    """Start `python argv... --port N`, wait until /health answers, stop it (SIGINT) afterwards."""
    port = free_port()
    log = log_dir / f"ray_load_{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv, "--port", str(port)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # ray_serve.py then shuts Serve and its Ray down
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stream(url: str, messages: list[dict], max_tokens: int) -> dict:
    """One greedy streamed chat request: its text, completion tokens, first-token time and replica."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, text, tokens = None, [], 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        replica = r.headers.get("x-replica-id")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    first = first or time.perf_counter() - started
                    text.append(choice["delta"]["content"])
    return {"text": "".join(text), "tokens": tokens, "first_token_s": first, "replica": replica}


def throughput(url: str, requests_per_client: int, max_tokens: int, round_no: int) -> float:
    """Completion tokens per second of CLIENTS concurrent clients, each asking in turn."""
    def client(c: int) -> int:
        n = 0
        for k in range(requests_per_client):
            question = QUESTIONS[(c + k) % len(QUESTIONS)]
            n += stream(url, [{"role": "user", "content": f"({round_no}.{c}.{k}) {question}"}], max_tokens)["tokens"]
        return n

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        tokens = sum(pool.map(client, range(CLIENTS)))
    return tokens / (time.perf_counter() - started)


def turn2_latency(url: str, conversations: int, context: str, turn1_tokens: int, tag: str) -> dict:
    """Turn-2 first-token times of conversations asked one at a time (mean and median: they are bimodal when
    turns move, a turn that stays reuses its cache and one that moves prefills it all), and the share of
    second turns that went to another replica than their first."""
    times, moved = [], 0
    for i in range(conversations):
        turn1 = [{"role": "system", "content": f"You are a careful reviewer ({tag} {i})."},
                 {"role": "user", "content": f"{context}\n\n{QUESTIONS[i % len(QUESTIONS)]}"}]
        first = stream(url, turn1, turn1_tokens)
        turn2 = [*turn1, {"role": "assistant", "content": first["text"]}, {"role": "user", "content": TURN2}]
        second = stream(url, turn2, 1)
        times.append(second["first_token_s"])
        moved += second["replica"] != first["replica"]
    return {"mean_s": statistics.mean(times), "median_s": statistics.median(times), "moved": moved / conversations}


def warm_up(url: str) -> None:
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda c: stream(url, [{"role": "user", "content": f"Hello {c}"}], 4), range(CLIENTS)))


def replicas_seen(url: str) -> list[dict]:
    """/health of the replicas that answer a burst of health checks (the router spreads them)."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        health = list(pool.map(lambda _: httpx.get(url + "/health", timeout=60).json(), range(4 * CLIENTS)))
    return list({h["replica_id"]: {k: h[k] for k in ("replica_id", "cores", "slots")} for h in health}.values())


@dataclass
class RayLoadOptions:
    hf_model_dir: str = option("download/Qwen2.5-Coder-0.5B-Instruct", help="the model directory")
    onnx_model_path: str = option("output/onnx_cpu_int4/qwen2.5_coder_0.5b_instruct.onnx",
                                  help="the cpu graph every server runs")
    max_prefill_length: int = option(64, help="the servers' prefill chunk")
    rounds: int = option(3, help="rounds; the median is reported")
    requests_per_client: int = option(1, help="throughput: requests each client sends, one after another")
    max_tokens: int = option(48, help="throughput: most completion tokens per request")
    conversations: int = option(4, help="turn-2 latency: conversations per round")
    turn1_tokens: int = option(64, help="turn-2 latency: most tokens of the first turn's answer")
    output: str = option(str(ROOT / "bench/experiments/ray_load.json"), help="results")
    log_dir: str = option(str(ROOT / "output"), help="where the servers' logs go")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(p, RayLoadOptions)
    a = from_args(RayLoadOptions, p.parse_args(argv))
    model = ["--hf_model_dir", a.hf_model_dir, "--onnx_model_path", a.onnx_model_path,
             "--max_prefill_length", str(a.max_prefill_length), "--no_web_ui"]
    ray_args = ["deploy/ray_serve.py", *model, "--replicas", "2", "--num_cpus_per_replica", "1", "--pin_cores"]
    context = (ROOT / "bench/prompt.txt").read_text()
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    rounds = []
    with ExitStack() as stack:
        single = stack.enter_context(server("api", ["api.py", *model, "--cpu_thread", "2"], log_dir))
        # The same api.py with one onnxruntime thread: how much of the replicas' gain is one thread per
        # process (no thread pool to synchronise on a busy machine) rather than two processes.
        single_1t = stack.enter_context(server("api_1thread", ["api.py", *model, "--cpu_thread", "1"], log_dir))
        affinity = stack.enter_context(server("ray_affinity", ray_args, log_dir))
        for url in (single, single_1t, affinity):
            warm_up(url)
        placement = replicas_seen(affinity)
        for r in range(a.rounds):
            one = {"api_tok_s": throughput(single, a.requests_per_client, a.max_tokens, r),
                   "ray_tok_s": throughput(affinity, a.requests_per_client, a.max_tokens, r),
                   "api_1thread_tok_s": throughput(single_1t, a.requests_per_client, a.max_tokens, r)}
            aff = turn2_latency(affinity, a.conversations, context, a.turn1_tokens, f"a{r}")
            one.update({f"affinity_turn2_{k}": v for k, v in aff.items()})
            one["throughput_ratio"] = one["ray_tok_s"] / one["api_tok_s"]
            one["throughput_ratio_vs_1thread"] = one["ray_tok_s"] / one["api_1thread_tok_s"]
            print(json.dumps(one), flush=True)
            rounds.append(one)
    result = {"model": Path(a.onnx_model_path).name, "graph": "int4 cpu graph", "cpu_count": os.cpu_count(),
              "clients": CLIENTS, "requests_per_client": a.requests_per_client, "max_tokens": a.max_tokens,
              "conversations_per_round": a.conversations, "turn1_tokens": a.turn1_tokens,
              "ray_replicas": placement, "rounds": rounds,
              "median": {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}}
    Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
