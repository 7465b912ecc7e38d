"""Which int4 recipe keeps the float model's answers: bench/quality.py's faithfulness numbers (greedy
agreement on its prompts, top-1 agreement and KL divergence on its held-out text, perplexity) for int4
recipes of the cpu graph, each against our float export, beside llama.cpp's Q4_0, in one run.

    python bench/experiments/int4_faithfulness.py [--recipes b128-emb4 b32 ...] [--tokens 64]

Block sizes, the embedding table's format and a class of tensors kept at int8 (attention, FFN down, FFN
gate/up: the inverse of quantizing one class at a time) show which part of the recipe costs agreement.
Each recipe is quantize_onnx.py with explicit flags, written once under output/recipes/<name>/.
Writes bench/experiments/int4_faithfulness.json.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.bench import HF_DIR, ONNX_NAME, PY, REPO, check, gguf_path, model_path, size_mb
from bench.quality import PROMPTS, LlamaCppSession, measure, model_session, quality_text_ids, summary, table
from core.flags import ArgumentParser, add_flags, from_args, option

# The layers whose FFN down projection llama.cpp's k-quant mixes give more bits, for this model's 24 layers:
# the first and last eighth and every third layer between (its use_more_bits rule).
MORE_BITS = "(0|1|2|5|8|11|14|17|20|21|22|23)"
RECIPES = {
    "b128-emb4": ["--block_size", "128", "--embedding", "quantize"],
    "b128": ["--block_size", "128", "--embedding", "float"],
    "b64": ["--block_size", "64", "--embedding", "float"],
    "b32": ["--block_size", "32", "--embedding", "float"],
    "b32-sym": ["--block_size", "32", "--embedding", "float", "--symmetric"],
    "b128-attn8": ["--block_size", "128", "--embedding", "float", "--int8_nodes", "self_attn"],
    "b128-down8": ["--block_size", "128", "--embedding", "float", "--int8_nodes", "down_proj"],
    "b128-gateup8": ["--block_size", "128", "--embedding", "float", "--int8_nodes", "gate_up_proj"],
    "b32-attn8": ["--block_size", "32", "--embedding", "float", "--int8_nodes", "self_attn"],
    "b128-attn8-emb4": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes", "self_attn"],
    "b128-qkv8-emb4": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes", "qkv_proj"],
    "b128-attn8-head4": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes", "self_attn",
                         "--lm_head_bits", "4"],
    "b128-attn8-emb4-kq": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes", "self_attn",
                           "--method", "k_quant"],
    "b128-attn8-head4b32-emb4": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes", "self_attn",
                                 "--lm_head_bits", "4", "--lm_head_block_size", "32"],
    "b128-attn8-head4b32-emb4-kq": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes", "self_attn",
                                    "--lm_head_bits", "4", "--lm_head_block_size", "32", "--method", "k_quant"],
    "b128-attn8-head4b32-down8kq-emb4": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes",
                                         rf"self_attn|layers\.{MORE_BITS}\.mlp\.down_proj", "--lm_head_bits", "4",
                                         "--lm_head_block_size", "32"],
    "b128-attn8-head4b32-down8ends-emb4": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes",
                                           r"self_attn|layers\.(0|1|2|21|22|23)\.mlp\.down_proj", "--lm_head_bits",
                                           "4", "--lm_head_block_size", "32"],
    "b128-attn8-head4b64-emb4": ["--block_size", "128", "--embedding", "quantize", "--int8_nodes", "self_attn",
                                 "--lm_head_bits", "4", "--lm_head_block_size", "64"],
}
PEER = "llama.cpp:Q4_0"


def recipe_path(name: str) -> Path:
    return REPO / "output/recipes" / name / ONNX_NAME


@dataclass
class FaithOptions:
    recipes: list[str] = option(list(RECIPES), choices=tuple(sorted(RECIPES)), help="the recipes to measure")
    tokens: int = option(64, help="greedy tokens per prompt")
    threads: int = option(2, help="CPU threads")
    output: str = option(str(REPO / "bench/experiments/int4_faithfulness.json"), help="results")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Faithfulness of int4 recipes to the float model, beside llama.cpp Q4_0.")
    add_flags(p, FaithOptions)
    a = from_args(FaithOptions, p.parse_args(argv))
    source = model_path("cpu", "fp32")
    if not source.is_file():
        print(f"int4_faithfulness.py: error: {source}: no such file (run `make onnx`)", file=sys.stderr)
        return 2
    for name in a.recipes:
        if not recipe_path(name).is_file():
            check([PY, "export/quantize_onnx.py", "--input_model_path", str(source), "--output_model_path",
                   str(recipe_path(name)), "--bits", "4", *RECIPES[name]])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(HF_DIR)
    text_ids = quality_text_ids(tok)
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)) for q in PROMPTS]
    names = ["fp32", *a.recipes]
    if importlib.util.find_spec("llama_cpp") and gguf_path("Q4_0").is_file():
        names.append(PEER)
    results, reference = {}, None
    for name in names:
        if name == PEER:
            session = LlamaCppSession(gguf_path("Q4_0"), a.threads)
        else:
            session = model_session(source if name == "fp32" else recipe_path(name), a.threads)
        measured = measure(session, text_ids, prompts, a.tokens, reference)
        del session
        reference = reference or measured
        results[name] = summary(measured, reference)
        if name in RECIPES:
            results[name]["flags"] = " ".join(RECIPES[name])
            results[name]["size_mb"] = round(size_mb(recipe_path(name)))
        print(f"{name}: {results[name]}", flush=True)
    report = {"text_tokens": len(text_ids), "prompts": len(prompts), "greedy_tokens": a.tokens, "results": results}
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
