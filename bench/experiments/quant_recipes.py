"""How the int4 recipe was chosen: perplexity and warm speed of a few int4 quantizations of the cpu graph,
beside llama.cpp's Q4_0 of the same model, in one run.

    python bench/experiments/quant_recipes.py [--rounds 4] [--recipes b64 b128-head8 ...]

Each recipe is quantize_onnx.py with explicit flags (so a change of its defaults does not change what a
row means), written once under output/recipes/<name>/. Perplexity is bench/quality.py's, on the same
text and windows; speed is bench/engines.py's warm generation on bench.py's prompt, every engine in its
own process, rounds interleaved so a slow spell hits all of them alike; medians are reported.
Writes bench/experiments/quant_recipes.json.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.bench import (HF_DIR, ONNX_NAME, PY, REPO, Target, check, gguf_path, measure, model_path, prompt_ids,
                         size_mb)
from bench.quality import LlamaCppSession, model_session, perplexity, quality_text_ids
from core.flags import ArgumentParser, add_flags, from_args, option

RECIPES = {
    "b64-head4": ["--block_size", "64", "--lm_head_bits", "4"],
    "b64-head8": ["--block_size", "64", "--lm_head_bits", "8"],
    "b64-sym-head8": ["--block_size", "64", "--lm_head_bits", "8", "--symmetric"],
    "b128-head4": ["--block_size", "128", "--lm_head_bits", "4"],
    "b128-head8": ["--block_size", "128", "--lm_head_bits", "8"],
    "b256-head8": ["--block_size", "256", "--lm_head_bits", "8"],
}
PEER = "llama.cpp:Q4_0"


def recipe_path(name: str) -> Path:
    return REPO / "output/recipes" / name / ONNX_NAME


@dataclass
class RecipeOptions:
    recipes: list[str] = option(list(RECIPES), choices=tuple(sorted(RECIPES)), help="the recipes to measure")
    rounds: int = option(4, help="speed rounds, engines interleaved")
    new_tokens: int = option(128, help="tokens generated per speed run")
    threads: int = option(2, help="CPU threads")
    output: str = option(str(REPO / "bench/experiments/quant_recipes.json"), help="results")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Perplexity and warm speed of int4 recipes against llama.cpp Q4_0.")
    add_flags(p, RecipeOptions)
    a = from_args(RecipeOptions, p.parse_args(argv))
    source, peer = model_path("cpu", "fp32"), gguf_path("Q4_0")
    for needed in (source, peer):
        if not needed.is_file():
            print(f"quant_recipes.py: error: {needed}: no such file (run `make onnx` and bench/bench.py first)",
                  file=sys.stderr)
            return 2
    for name in a.recipes:
        if not recipe_path(name).is_file():
            check([PY, "export/quantize_onnx.py", "--input_model_path", str(source), "--output_model_path",
                   str(recipe_path(name)), "--bits", "4", *RECIPES[name]])
    from transformers import AutoTokenizer

    text_ids = quality_text_ids(AutoTokenizer.from_pretrained(HF_DIR))
    results: dict[str, dict] = {}
    for name in [*a.recipes, PEER]:
        session = LlamaCppSession(peer, a.threads) if name == PEER else model_session(recipe_path(name), a.threads)
        results[name] = {"perplexity": round(perplexity(session, text_ids), 4)}
        del session
        print(f"{name}: perplexity {results[name]['perplexity']}", flush=True)

    targets = {name: Target("ours", "int4", recipe_path(name), graph="cpu") for name in a.recipes}
    targets[PEER] = Target("llama.cpp", "Q4_0", peer, "llama_cpp")
    speeds: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    with tempfile.TemporaryDirectory() as tmp:
        ids_file = Path(tmp) / "ids.json"
        ids_file.write_text(json.dumps(prompt_ids()))
        for rnd in range(a.rounds):
            for name, t in targets.items():
                r = measure(t, ids_file, a.new_tokens, a.threads)
                speeds[name].append((r["prompt_tokens"] / r["ttft_s"], (a.new_tokens - 1) / r["decode_s"]))
                print(f"round {rnd + 1}: {name:14} prefill {speeds[name][-1][0]:.1f} decode "
                      f"{speeds[name][-1][1]:.1f} tok/s", flush=True)
    for name, runs in speeds.items():
        results[name]["prefill_tok_s"] = round(statistics.median(s[0] for s in runs), 1)
        results[name]["decode_tok_s"] = round(statistics.median(s[1] for s in runs), 1)
    base = results[PEER]
    for name in a.recipes:
        r = results[name]
        r["flags"] = " ".join(RECIPES[name])
        r["size_mb"] = round(size_mb(recipe_path(name)))
        r["vs_q4_0"] = {"prefill": round(r["prefill_tok_s"] / base["prefill_tok_s"], 2),
                        "decode": round(r["decode_tok_s"] / base["decode_tok_s"], 2),
                        "perplexity": round(r["perplexity"] / base["perplexity"] - 1, 4)}
    report = {"prompt_tokens": len(prompt_ids()), "new_tokens": a.new_tokens, "threads": a.threads,
              "rounds": a.rounds, "text_tokens": len(text_ids), "results": results}
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
