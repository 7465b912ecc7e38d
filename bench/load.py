"""Serving under load: aggregate completion tokens/s and time to first token for 1, 2, 4 and 8 concurrent
streaming clients, against our server (api.py on the int4 and fp32 cpu graphs, --max_batch 8 and 1) and
llama.cpp's own server (llama-server --parallel N, continuous batching) on the default GGUF and its Q4_0
requantization. `make bench` runs it.

    python bench/load.py [--prompts long|short] [--clients 1 2 4 8] [--requests 2] [--max_tokens 64]

1. The graph-only ratio first: one decode step of the cpu graph for 1 to 8 rows (bench/graph_ratio.py's
   decode_ratio), and the time to read 16-128 new prompt tokens on one row (its prefill_cost).
2. Then, for each client count, every server in turn (one at a time, so none shares the cores with
   another): started, warmed up with one request, then each client sends --requests streaming chat
   requests one after another, all clients at once, then stopped. Every engine gets the same prompts,
   unique per request (so no server reuses more of its cache than the shared system prompt), greedy,
   at most --max_tokens tokens. Two workloads: `long` asks in ~142 prompt tokens (a detailed coding task,
   as an IDE client sends), `short` in ~55 (a chat question, as issue 12's "short requests"); `short`
   writes bench/load_short.json and image/bench_load_short.png unless told otherwise. Our server cannot
   ignore the end-of-sequence token, so neither does llama-server here; the prompts ask for long
   answers, and the completion tokens each answer really had (usage) are what is counted.

Our server runs without a draft model: speculative decoding serves a single request, batching is what is
measured. Writes bench/load.json and image/bench_load.png; server logs go to output/load/.
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.flags import ArgumentParser, add_flags, from_args, option

if TYPE_CHECKING:
    import httpx

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HF_DIR = REPO / "download/Qwen2.5-Coder-0.5B-Instruct"
ONNX_NAME = "qwen2.5_coder_0.5b_instruct.onnx"
CPU_FP32 = REPO / "output/onnx_cpu" / ONNX_NAME
CPU_INT4 = REPO / "output/onnx_cpu_int4" / ONNX_NAME
LOGS = REPO / "output/load"

TOPICS = [
    "an LRU cache with a size limit and hit statistics", "a command-line todo list stored in a JSON file",
    "a token-bucket rate limiter for an HTTP client", "a binary search tree with insert, delete and iteration",
    "a CSV report that groups sales by month and region", "a retrying downloader with exponential backoff",
    "a tiny expression parser and evaluator for + - * / and parentheses", "a thread-safe job queue with workers",
    "a matrix class with addition, multiplication and transpose", "a markdown table formatter",
    "a log file analyser that counts errors per hour", "an in-memory key-value store with expiry",
    "a Dijkstra shortest-path finder on a weighted graph", "a unit converter for lengths, masses and times",
    "a password strength checker with clear feedback", "a simple event bus with subscribe and publish",
]


@dataclass
class Engine:
    name: str        # as --engines takes it
    kind: str        # "ours" or "llama-server"
    format: str
    model: Path
    max_batch: int | None = None  # ours: --max_batch; llama-server: --parallel is the client count
    clients: list[int] = field(default_factory=list)  # client counts it runs at


@dataclass
class LoadOptions:
    prompts: str = option("long", choices=("long", "short"),
                          help="long: ~142-token coding tasks; short: ~55-token chat questions")
    clients: list[int] = option([1, 2, 4, 8], help="concurrent clients (none: the graph-only ratio alone)")
    batch1_clients: list[int] = option(
        [1, 8], help="client counts at which our --max_batch 1 servers run (the TTFT goal compares them at 8)")
    requests: int = option(2, help="requests each client sends, one after another")
    max_tokens: int = option(64, help="most completion tokens per request")
    threads: int = option(2, help="CPU threads of every server")
    max_prefill_length: int = option(64, help="our server's prefill chunk, as make serve")
    slot_context: int = option(512, help="llama-server context per slot: -c is this times --parallel")
    engines: list[str] | None = option(
        None, help="names to run (default all): ours:int4:b8 ours:int4:b1 ours:fp32:b8 ours:fp32:b1 "
                   "llama-server:gguf llama-server:q4_0")
    graph_rounds: int = option(5, help="rounds of the graph-only ratio (median)")
    keep: bool = option(False, help="add to --output: keep its graph ratio (measured only if absent) and its "
                                    "runs, replacing those of the same engine and client count")
    output: str | None = option(None, help="results (default bench/load.json, bench/load_short.json for "
                                           "--prompts short)")
    chart: str | None = option(None, help="chart (default image/bench_load.png, image/bench_load_short.png)")
    redraw: bool = option(False, help="only redraw the chart and tables from --output")

    def __post_init__(self) -> None:
        tail = "" if self.prompts == "long" else "_short"
        self.output = self.output or str(REPO / f"bench/load{tail}.json")
        self.chart = self.chart or str(REPO / f"image/bench_load{tail}.png")


def engines(a: LoadOptions) -> list[Engine]:
    from llama_server import GGUF, GGUF_Q4_0

    batch1 = [c for c in a.clients if c in a.batch1_clients]
    all_ = [Engine("ours:int4:b8", "ours", "int4", CPU_INT4, 8, a.clients),
            Engine("ours:int4:b1", "ours", "int4", CPU_INT4, 1, batch1),
            Engine("ours:fp32:b8", "ours", "fp32", CPU_FP32, 8, a.clients),
            Engine("ours:fp32:b1", "ours", "fp32", CPU_FP32, 1, batch1),
            Engine("llama-server:gguf", "llama-server", "gguf (Q5_0 mostly)", GGUF, None, a.clients),
            Engine("llama-server:q4_0", "llama-server", "gguf Q4_0", GGUF_Q4_0, None, a.clients)]
    return [e for e in all_ if not a.engines or e.name in a.engines]


def parse_args(argv: list[str] | None = None) -> LoadOptions:
    p = ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    add_flags(p, LoadOptions)
    return from_args(LoadOptions, p.parse_args(argv))


# ---- prompts and one client ---------------------------------------------------------------------------

def prompt(clients: int, client: int, request: int, kind: str) -> list[dict]:
    """A request's messages: a tag unique to (client count, client, request) opens the user turn, so no
    two requests share more than the chat template's system prompt."""
    topic = TOPICS[(client * 2 + request) % len(TOPICS)]
    if kind == "short":
        return [{"role": "user", "content": f"Ticket {clients}-{client}-{request}. Explain in detail how to write "
                                             f"{topic} in Python."}]
    text = (f"Ticket {clients}-{client}-{request}. Write a complete, well documented Python module that "
            f"implements {topic}. Start with a module docstring that explains the design, then give every "
            "class and function type hints and a docstring with an example, handle invalid input with "
            "clear exceptions, and add a small command-line entry point. After the code, explain step by "
            "step how each part works, which edge cases it covers, and how you would test it with pytest, "
            "including at least five concrete test cases with their expected results.")
    return [{"role": "user", "content": text}]


async def one_request(http: "httpx.AsyncClient", url: str, messages: list[dict], max_tokens: int) -> dict:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "seed": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    usage = None
    pieces = 0
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as res:
        if res.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {res.status_code}: {(await res.aread())[:300]!r}")
        async for line in res.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    pieces += 1
                    if first is None:
                        first = time.perf_counter()
    end = time.perf_counter()
    if usage is None:
        raise RuntimeError(f"{url}: the stream carried no usage")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"ttft_s": (first or end) - start, "total_s": end - start, "started": start, "ended": end,
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
            "cached_tokens": cached, "content_chunks": pieces}


async def load(url: str, clients: int, requests: int, max_tokens: int, kind: str) -> tuple[list[dict], float]:
    import httpx

    async def client(i: int) -> list[dict]:
        return [await one_request(http, url, prompt(clients, i, r, kind), max_tokens) for r in range(requests)]

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800.0), limits=limits) as http:
        start = time.perf_counter()
        results = await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - start
    return [r for rs in results for r in rs], wall


async def warm_up(url: str) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as http:
        await one_request(http, url, [{"role": "user", "content": "Say hello."}], 8)


# ---- servers ------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(e: Engine, clients: int, port: int, a: LoadOptions) -> list[str]:
    if e.kind == "ours":
        return [PY, str(REPO / "api.py"), "--session_type", "onnx", "--hf_model_dir", str(HF_DIR),
                "--onnx_model_path", str(e.model), "--max_batch", str(e.max_batch), "--cpu_thread",
                str(a.threads), "--max_prefill_length", str(a.max_prefill_length), "--port", str(port),
                "--no_web_ui"]
    from llama_server import SERVER

    return [str(SERVER), "-m", str(e.model), "--host", "127.0.0.1", "--port", str(port), "-t", str(a.threads),
            "-tb", str(a.threads), "--parallel", str(clients), "-c", str(a.slot_context * clients)]


class Server:
    """One server process, up while the `with` block runs; stopped (and waited for) on the way out."""

    def __init__(self, e: Engine, clients: int, a: LoadOptions):
        self.port, self.threads = free_port(), a.threads
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = server_command(e, clients, self.port, a)
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{e.name.replace(':', '_')}_c{clients}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        import httpx

        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "TOKENIZERS_PARALLELISM": "false"}
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        log.close()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[1]} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.url} did not come up in 600 s; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(e: Engine, clients: int, a: LoadOptions) -> dict:
    with Server(e, clients, a) as server:
        asyncio.run(warm_up(server.url))
        runs, wall = asyncio.run(load(server.url, clients, a.requests, a.max_tokens, a.prompts))
    tokens = sum(r["completion_tokens"] for r in runs)
    ttft = [r["ttft_s"] for r in runs]
    decode = [(r["completion_tokens"] - 1) / (r["total_s"] - r["ttft_s"]) for r in runs
              if r["completion_tokens"] > 1 and r["total_s"] > r["ttft_s"]]
    return {"engine": e.name, "kind": e.kind, "format": e.format, "max_batch": e.max_batch,
            "parallel": clients if e.kind == "llama-server" else None, "clients": clients,
            "requests": len(runs), "wall_s": round(wall, 2), "completion_tokens": tokens,
            "prompt_tokens": sorted({r["prompt_tokens"] for r in runs}),
            "prefilled_tokens": [r["prompt_tokens"] - r["cached_tokens"] for r in runs],
            "ttft_s": [round(r["ttft_s"], 3) for r in runs],
            "agg_tok_s": round(tokens / wall, 2),
            "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3),
            "ttft_p95_s": round(float(np.percentile(ttft, 95)), 3),
            "per_stream_decode_tok_s": round(float(np.median(decode)), 2) if decode else None,
            "short_answers": sum(r["completion_tokens"] < a.max_tokens for r in runs),
            "at": time.strftime("%H:%M:%S UTC", time.gmtime())}


# ---- the graph-only ratio -----------------------------------------------------------------------------

def graph_ratio(a: LoadOptions) -> list[dict]:
    from graph_ratio import GraphTiming, decode_ratio, prefill_cost

    timing = GraphTiming(hf_model_dir=str(HF_DIR), context=256, rounds=a.graph_rounds, steps=4,
                         threads=a.threads, max_prefill_length=a.max_prefill_length)
    out = []
    for fmt, model in (("int4", CPU_INT4), ("fp32", CPU_FP32)):
        record = json.loads(json.dumps(decode_ratio(timing, str(model))))  # row counts as keys, as in load.json
        record["prefill_s"] = json.loads(json.dumps(prefill_cost(timing, str(model))["prefill_s"]))
        record["format"] = fmt
        record["model"] = str(model.relative_to(REPO))
        out.append(record)
        print(json.dumps(record), flush=True)
        gc.collect()  # the session's 2.4 GB of fp32 weights go before the servers start
    return out


def finish(result: dict, a: LoadOptions) -> None:
    from load_goals import goals, table

    if not result["runs"]:
        Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
        return
    result["goals"] = goals(result)
    Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(json.dumps(result["goals"], indent=2))
    from load_chart import draw  # matplotlib is a peer requirement, needed only here

    draw(result, Path(a.chart))
    print(f"wrote {a.output} and {a.chart}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.redraw:
        finish(json.loads(Path(a.output).read_text()), a)
        return 0
    for path in (CPU_FP32, CPU_INT4):
        if not path.is_file():
            print(f"load.py: error: {path}: no such file (run `make onnx` first)", file=sys.stderr)
            return 2
    chosen = engines(a)
    if any(e.kind == "llama-server" and e.clients for e in chosen):
        from llama_server import ensure_built, ensure_q4_0

        ensure_built()
        ensure_q4_0()
    previous = json.loads(Path(a.output).read_text()) if a.keep and Path(a.output).is_file() else {}
    result = {"setup": {"prompts": a.prompts, "threads": a.threads, "requests_per_client": a.requests, "max_tokens": a.max_tokens,
                        "max_prefill_length": a.max_prefill_length, "slot_context": a.slot_context,
                        "greedy": True, "draft": None, "cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d", time.gmtime())},
              "graph_ratio": previous.get("graph_ratio") or graph_ratio(a), "runs": previous.get("runs", [])}
    # Client counts outside, engines inside: the engines compared at one client count run minutes apart,
    # so a slow spell on the shared machine hits them alike.
    for clients in a.clients:
        for e in chosen:
            if clients not in e.clients:
                continue
            record = measure(e, clients, a)
            result["runs"] = [r for r in result["runs"] if (r["engine"], r["clients"]) != (e.name, clients)]
            result["runs"].append(record)
            print(json.dumps(record), flush=True)
            Path(a.output).write_text(json.dumps(result, indent=2) + "\n")  # partial results survive a stop
    finish(result, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
