"""Quality against our fp32 export: perplexity on bench/quality_text.txt and greedy-token agreement over
64 tokens on 5 prompts, for the quantized CPU models, for llama.cpp's formats of the same model (same
token ids, same windows, each window in one eval through llama-cpp-python) and for the npu graph as atc
would compile it.

    python bench/quality.py [--formats fp32 int8 int4 llama.cpp:Q4_0 llama.cpp:Q5_0] [--graph cpu|npu]
    python bench/quality.py --graph npu --formats fp32 atc_mixed atc_mixed_nomixlist \
        [--atc_source output/onnx2_fp16/<name>.onnx] --output bench/quality_npu_atc.json

Writes bench/quality.json unless --output says otherwise. Models are the ones bench.py uses
(output/onnx_cpu*/ for the --target cpu graph, output/onnx*/ for the npu graph); run bench.py or
export/quantize_onnx.py first so the quantized ones exist. The atc_* formats are the npu graph given
as --atc_source (default: the float16 export after change_node.py) rewritten the way the emulated atc
compiles it (tests/emulator/emu_precision.py: float16 rounding wherever the precision mode runs an op
in float16), run with onnxruntime; they are written once to output/atc_*/<source folder>/.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

if __package__:
    from bench.bench import GGUF_FTYPES, HF_DIR, ONNX_NAME, gguf_path, model_path
else:  # run as a file: its own folder comes first on the path, so `bench` is bench/bench.py itself
    from bench import GGUF_FTYPES, HF_DIR, ONNX_NAME, gguf_path, model_path
from config import InferenceConfig
from core.contract import read_meta
from session import Session, open_session

REPO = Path(__file__).resolve().parents[1]

FORMATS = ("fp32", "int8", "int4")
# llama.cpp's formats of the same model (bench.py makes the 4-bit one from the default GGUF), measured on
# the same token ids through llama-cpp-python when it is installed.
GGUF_FORMATS = tuple(f"llama.cpp:{f}" for f in ("Q5_0", *GGUF_FTYPES))
# format: (atc --precision_mode_v2, with export/ops_info.json as --modify_mixlist), as onnx2om.py passes them
ATC_FORMATS = {
    "atc_mixed": ("mixed_float16", True),
    "atc_mixed_nomixlist": ("mixed_float16", False),
    "atc_fp16": ("fp16", False),
}
MIXLIST = REPO / "export/ops_info.json"
WINDOW = 512
PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
    "Explain the difference between a list and a tuple in Python, with a short example of each.",
    "What does the SQL statement SELECT COUNT(*) FROM orders GROUP BY customer_id return?",
    "Write a bash one-liner that counts the lines of every .py file under the current directory.",
    "Why is binary search O(log n)? Answer in three sentences.",
    "Write a JavaScript function that debounces another function by a given number of milliseconds.",
    "Fix the bug: def mean(xs): return sum(xs) / len(xs) fails on an empty list. Show the corrected code.",
    "Write a C function that reverses a singly linked list in place.",
    "What is a Python decorator? Show one that times how long a function takes.",
    "Write a regular expression that matches an ISO 8601 date such as 2024-03-15, and explain each part.",
    "Write a Python class for a stack with push, pop and peek, raising an error when it is empty.",
    "How do I read a CSV file with pandas and print the mean of one column?",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "What is the difference between a process and a thread?",
    "Write a SQL query that returns the five customers with the highest total order amount.",
    "Explain what a race condition is and how a lock prevents it.",
    "Write a Go function that reverses a slice of integers in place.",
    "How do I undo the last git commit but keep its changes in my working tree?",
    "Write a Python generator that yields the prime numbers below a given limit.",
    "What does the 'static' keyword mean on a method in Java?",
    "Write a Rust function that counts the vowels in a string slice.",
    "Explain Big-O notation to a beginner in a short paragraph.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "What is the difference between == and === in JavaScript?",
    "Write a shell script that backs up a directory into a dated tar.gz archive.",
    "How does a hash table handle collisions? Name two strategies.",
    "Write a TypeScript interface for a user with an id, a name and an optional email.",
    "Write a Python function that flattens a nested list of arbitrary depth.",
    "What is a closure in JavaScript? Give a small example.",
    "Write a C++ function that returns the largest element of a std::vector<int>.",
    "Explain what REST means for a web API in a few sentences.",
    "Write a Python script that prints the ten most common words in a text file.",
    "How do I make an HTTP GET request in Python and parse the JSON response?",
    "Write a function in Python that checks whether two strings are anagrams.",
    "What is the difference between a left join and an inner join in SQL?",
    "Write a Dockerfile for a small Python web application that listens on port 8000.",
    "Explain recursion with a factorial example in Python.",
    "Write a Python function that validates an email address with a regular expression.",
    "What are Python's *args and **kwargs used for?",
    "Write a Java method that checks whether a number is prime.",
    "How can I remove duplicate items from a list in Python while keeping their order?",
    "Write a Python context manager that changes the working directory and restores it afterwards.",
    "Explain the difference between a stack and a queue, with one use of each.",
    "Write a binary search function in Python that returns the index of a target or -1.",
    "What does 'async' and 'await' do in Python?",
    "Write a unit test with pytest for a function add(a, b) that returns their sum.",
    "Write a Python function that converts a Roman numeral to an integer.",
    "How do I sort a list of dictionaries by the value of one key in Python?",
]


def atc_graph(fmt: str, source: Path, root: Path = REPO / "output") -> Path:
    """`source` as the emulated atc compiles it in the format's precision mode (the graph its .om holds),
    written under root/<format>/<source folder>/ and reused while newer than the source and the mixlist."""
    emu_precision = _emulator_module("emu_precision")

    mode, with_mixlist = ATC_FORMATS[fmt]
    folder = root / fmt / source.parent.name
    dst = folder / source.name
    inputs = [source, MIXLIST] if with_mixlist else [source]
    if dst.is_file() and dst.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return dst
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{fmt}: rewriting {source} as atc's {mode} computes it", flush=True)
    mixlist = json.loads(MIXLIST.read_text()) if with_mixlist else None
    path, _ = emu_precision.convert_file(source, folder, mode, mixlist)
    return path


def _emulator_module(name: str):
    """A module of the test-only NPU emulator, loaded from its file (the emulator is never installed)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tests/emulator" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def model_session(path: Path, threads: int) -> Session:
    meta = read_meta(path)
    kv_len = int(meta["kv_cache_length"])
    # Only the filled cache slots: the cpu graph does so by itself, the npu graph is asked to.
    method = None if meta.get("target") == "cpu" else "basic"
    cfg = InferenceConfig.create(HF_DIR, onnx_model_path=str(path), kv_cache_length=kv_len,
                                 max_input_length=min(512, kv_len - 1), max_prefill_length=64,
                                 kv_cache_method=method, cpu_thread=threads)
    return open_session(cfg)


class LlamaCppSession:
    """A GGUF through llama-cpp-python, seen as the two calls quality.py makes of a Session: reset, and
    run(ids [1, n]) -> the float32 logits of the last token."""

    def __init__(self, path: Path, threads: int):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, logits_all=True, verbose=False)
        self.vocab = self.llm.n_vocab()

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        """The logits after every token of ids [n], [n, vocab], from an empty cache in one eval: how
        llama.cpp reads a prompt (logits_all keeps every position's row)."""
        self.reset()
        self.llm.eval([int(t) for t in ids])
        return np.array(self.llm.scores[:len(ids)], np.float64)

    def reset(self) -> None:
        self.llm.reset()  # eval() then drops every cached entry past the (now empty) prefix

    def run(self, ids: np.ndarray) -> np.ndarray:
        self.llm.eval([int(t) for t in ids[0]])
        row = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.vocab,)).astype(np.float32)


def window_logprobs(session: Session, ids: np.ndarray) -> Iterator[np.ndarray]:
    """The next-token log-probabilities after each of ids[:-1], float64 [vocab] each, from a fresh cache.
    One token per step through our sessions, so every graph is measured as it runs (the cpu graph only
    returns the last position's logits); llama.cpp reads the window in one eval, as it reads a prompt."""
    if isinstance(session, LlamaCppSession):
        for row in session.window_logits(ids[:-1]):
            yield _log_softmax(row)
        return
    session.reset()
    for i in range(len(ids) - 1):
        yield _log_softmax(session.run(ids[None, i:i + 1]).astype(np.float64))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


@dataclass
class TextScores:
    """One model's next-token predictions over the held-out text, and how they compare with the float
    model's: perplexity, the share of positions whose most likely token is the float model's (top-1
    agreement) and the mean KL(float || model) of the next-token distributions."""
    nll: float = 0.0
    count: int = 0
    top1: list[int] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)  # the float model's log-probs, kept as the reference

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll / self.count))


def text_scores(session: Session, ids: np.ndarray, reference: TextScores | None) -> TextScores:
    """Score ids in windows of WINDOW tokens; without a reference the log-probs are kept (float32) so the
    other formats can be compared with them position by position."""
    scores = TextScores()
    for start in range(0, len(ids), WINDOW):
        window = ids[start:start + WINDOW]
        for i, logp in enumerate(window_logprobs(session, window)):
            scores.nll -= float(logp[window[i + 1]])
            scores.top1.append(int(np.argmax(logp)))
            if reference is None:
                scores.rows.append(logp.astype(np.float32))
            else:
                ref = reference.rows[scores.count].astype(np.float64)
                scores.kl.append(float(np.sum(np.exp(ref) * (ref - logp))))
            scores.count += 1
    return scores


def nll_of_window(session: Session, ids: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of ids[1:] given what precedes them, from a fresh cache."""
    return -sum(float(logp[ids[i + 1]]) for i, logp in enumerate(window_logprobs(session, ids))), len(ids) - 1


def perplexity(session: Session, ids: np.ndarray) -> float:
    total, count = 0.0, 0
    for start in range(0, len(ids), WINDOW):
        t, c = nll_of_window(session, ids[start:start + WINDOW])
        total, count = total + t, count + c
    return float(np.exp(total / count))


def greedy(session: Session, prompt: list[int], n: int) -> list[int]:
    session.reset()
    out = [int(np.argmax(session.run(np.array([prompt], np.int64))))]
    while len(out) < n:
        out.append(int(np.argmax(session.run(np.array([[out[-1]]], np.int64)))))
    return out


@dataclass
class Measured:
    """What one format predicted: its scores over the held-out text and its greedy answers to PROMPTS."""
    text: TextScores
    greedy: list[list[int]]


def measure(session: Session, text_ids: np.ndarray, prompts: list[list[int]], tokens: int,
            reference: Measured | None) -> Measured:
    return Measured(text_scores(session, text_ids, None if reference is None else reference.text),
                    [greedy(session, ids, tokens) for ids in prompts])


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def summary(m: Measured, reference: Measured | None) -> dict:
    """The faithfulness numbers of one format against the float model (None: the float model itself)."""
    r: dict = {"perplexity": round(m.text.perplexity, 4)}
    if reference is None or m is reference:
        return r
    r["perplexity_vs_fp32"] = round(m.text.perplexity / reference.text.perplexity - 1, 4)
    pairs = list(zip(m.greedy, reference.greedy))
    prefixes = [common_prefix(g, f) for g, f in pairs]
    # Overall: the share of positions with the float model's token, divergent continuations included;
    # to the first divergence: the share of tokens before the answers part.
    r["greedy_agreement"] = round(float(np.mean([np.mean(np.equal(g, f)) for g, f in pairs])), 4)
    r["greedy_prefix_share"] = round(sum(prefixes) / sum(len(f) for _, f in pairs), 4)
    r["greedy_common_prefix"] = prefixes
    r["top1_agreement"] = round(float(np.mean(np.equal(m.text.top1, reference.text.top1))), 4)
    r["kl_divergence"] = round(float(np.mean(m.text.kl)), 5)
    return r


COLUMNS = (("perplexity", "ppl"), ("greedy_agreement", "greedy agree"), ("greedy_prefix_share", "to 1st diverg."),
           ("top1_agreement", "top-1 agree"), ("kl_divergence", "KL"), ("code_pass", "code pass@1"))


def table(results: dict[str, dict]) -> str:
    """The faithfulness table, one row per format, as markdown."""
    present = [(k, t) for k, t in COLUMNS if any(k in r for r in results.values())]
    lines = ["| format | " + " | ".join(t for _, t in present) + " |", "|---" * (len(present) + 1) + "|"]
    for fmt, r in results.items():
        lines.append(f"| {fmt} | " + " | ".join(str(r.get(k, "")) for k, _ in present) + " |")
    return "\n".join(lines)


def add_code_pass(results: dict[str, dict], problems: int, threads: int) -> None:
    """pass@1 of each format's server on HumanEval (our cpu graphs through api.py, llama.cpp's through
    llama-server when bench/llama_server.py has built it)."""
    if __package__:
        from bench import code_eval
        from bench.llama_server import SERVER
    else:
        import code_eval
        from llama_server import SERVER

    options = code_eval.CodeOptions(problems=problems, threads=threads)
    tasks = code_eval.load_problems(problems)
    for fmt, r in results.items():
        if fmt in ATC_FORMATS or (fmt in GGUF_FORMATS and not SERVER.is_file()):
            print(f"{fmt}: no code benchmark (atc formats have no server; llama-server: python "
                  "bench/llama_server.py)", flush=True)
            continue
        done = code_eval.measure_format(fmt, tasks, options)
        r["code_pass"] = f"{done['passed']}/{done['problems']}"
        print(f"{fmt}: code pass@1 {r['code_pass']}", flush=True)


def quality_text_ids(tokenizer) -> np.ndarray:
    """The perplexity text (bench/quality_text.txt) as the model's token ids [n]."""
    return np.array(tokenizer((REPO / "bench/quality_text.txt").read_text())["input_ids"], np.int64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Perplexity and greedy agreement of quantized models vs fp32.")
    p.add_argument("--formats", nargs="+", default=None, choices=[*FORMATS, *ATC_FORMATS, *GGUF_FORMATS],
                   help="default: fp32 int8 int4, and llama.cpp's formats whose GGUF exists when llama-cpp-python "
                        "is installed")
    p.add_argument("--graph", choices=["cpu", "npu"], default="cpu",
                   help="which export to measure: the --target cpu graph (default) or the npu graph")
    p.add_argument("--atc_source", default=str(REPO / "output/onnx2_fp16" / ONNX_NAME),
                   help="npu graph the atc_* formats start from (default: the float16 export after change_node.py)")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt (default 64)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--code_problems", type=int, default=0,
                   help="also run the first N HumanEval problems through each format's server (bench/code_eval.py; "
                        "164 is all of them; default 0: none)")
    p.add_argument("--output", default=str(REPO / "bench/quality.json"))
    a = p.parse_args(argv)
    if a.formats is None:
        have_llama = importlib.util.find_spec("llama_cpp") is not None
        a.formats = [*FORMATS, *(f for f in GGUF_FORMATS if have_llama and gguf_path(f.split(":")[1]).is_file())]
    atc = [f for f in a.formats if f in ATC_FORMATS]
    if atc and a.graph != "npu":
        print(f"quality.py: error: {', '.join(atc)} need --graph npu (atc compiles the npu graph)", file=sys.stderr)
        return 2
    models = {f: gguf_path(f.split(":")[1]) if f in GGUF_FORMATS else model_path(a.graph, f)
              for f in a.formats if f not in ATC_FORMATS}
    sources = [Path(a.atc_source)] if atc else []
    missing = [str(m) for m in [*models.values(), *sources] if not m.is_file()]
    if missing:
        print(f"quality.py: error: missing {', '.join(missing)} (run bench/bench.py or export/quantize_onnx.py; "
              "for atc_* formats export with --dtype float16 and run export/change_node.py)", file=sys.stderr)
        return 2
    models.update({f: atc_graph(f, Path(a.atc_source)) for f in atc})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(HF_DIR)
    text_ids = quality_text_ids(tok)
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)) for q in PROMPTS]
    # The float model goes first: every other format is compared with its predictions as they are made.
    order = sorted(a.formats, key=lambda f: f != "fp32")
    results, reference = {}, None
    for fmt in order:
        session = (LlamaCppSession(models[fmt], a.threads) if fmt in GGUF_FORMATS
                   else model_session(models[fmt], a.threads))
        measured = measure(session, text_ids, prompts, a.tokens, reference)
        del session
        if fmt == "fp32":
            reference = measured
        results[fmt] = summary(measured, reference)
        print(f"{fmt}: {results[fmt]}", flush=True)
    if a.code_problems and a.graph == "cpu":
        add_code_pass(results, a.code_problems, a.threads)
    report = {"graph": a.graph, "text_tokens": len(text_ids), "window": WINDOW, "prompts": len(prompts),
              "greedy_tokens": a.tokens, "results": results}
    if atc:
        report["atc_source"] = os.path.relpath(a.atc_source, REPO)
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
