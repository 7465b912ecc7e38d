"""Which grammar engine: llguidance against xgrammar on the default model's tokenizer. For each, the time
to load the tokenizer, to compile a few JSON schemas, and to compute one token mask (median over the
tokens of a valid answer, walked through the grammar), all on the host, one thread.

    pip install -r bench/experiments/requirements.txt   # xgrammar
    python bench/experiments/grammar_engines.py [--model_dir download/Qwen2.5-Coder-0.5B-Instruct]
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from core.flags import ArgumentParser, add_flags, from_args, option

SCHEMAS = {
    "flat": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}, {"name": "Ada Lovelace", "age": 36}),
    "nested": ({"type": "object", "properties": {
        "user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1},
                                                  "tags": {"type": "array", "items": {"type": "string"}}},
                 "required": ["id", "tags"]},
        "status": {"enum": ["active", "banned", "pending"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["user", "status", "score"]},
        {"user": {"id": 7, "tags": ["admin", "ops", "night shift"]}, "status": "pending", "score": 0.25}),
}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_llguidance(tokenizer, vocab: int) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.numpy as lln

    tok, load = timed(lambda: llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab))
    out = {"version": version("llguidance"), "tokenizer_load_s": load}
    for name, (schema, answer) in SCHEMAS.items():
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        matcher, compile_s = timed(lambda: llguidance.LLMatcher(tok, grammar))
        mask = lln.allocate_token_bitmask(1, vocab)
        ids = tokenizer.encode(json.dumps(answer), add_special_tokens=False)
        times = []
        for t in ids:
            _, s = timed(lambda: lln.fill_next_token_bitmask(matcher, mask))
            times.append(s)
            assert matcher.consume_token(t), matcher.get_error()
        out[name] = {"compile_s": compile_s, "mask_ms_median": 1e3 * statistics.median(times),
                     "mask_ms_max": 1e3 * max(times), "tokens": len(ids)}
    return out


def bench_xgrammar(tokenizer, vocab: int) -> dict:
    import xgrammar as xgr

    info, load = timed(lambda: xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab))
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    out = {"version": version("xgrammar"), "tokenizer_load_s": load}
    for name, (schema, answer) in SCHEMAS.items():
        compiled, compile_s = timed(lambda: compiler.compile_json_schema(json.dumps(schema)))
        matcher = xgr.GrammarMatcher(compiled)
        mask = xgr.allocate_token_bitmask(1, vocab)
        ids = tokenizer.encode(json.dumps(answer), add_special_tokens=False)
        times = []
        for t in ids:
            _, s = timed(lambda: matcher.fill_next_token_bitmask(mask))
            times.append(s)
            assert matcher.accept_token(t)
        out[name] = {"compile_s": compile_s, "mask_ms_median": 1e3 * statistics.median(times),
                     "mask_ms_max": 1e3 * max(times), "tokens": len(ids)}
    return out


@dataclass
class EngineOptions:
    model_dir: str = option("download/Qwen2.5-Coder-0.5B-Instruct", help="the model whose tokenizer is used")
    out: str = option("bench/experiments/grammar_engines.json", help="results")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(ap, EngineOptions)
    a = from_args(EngineOptions, ap.parse_args(argv))
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    vocab = json.loads((Path(a.model_dir) / "config.json").read_text())["vocab_size"]
    logits = np.random.default_rng(0).standard_normal(vocab).astype(np.float32)
    keep = np.random.default_rng(1).random(vocab) < 0.5
    _, apply_s = timed(lambda: np.where(keep, logits, -np.inf))
    result = {"vocab": vocab, "numpy_apply_mask_ms": 1e3 * apply_s,
              "llguidance": bench_llguidance(tokenizer, vocab), "xgrammar": bench_xgrammar(tokenizer, vocab)}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
