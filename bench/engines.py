"""One measured generation in this process, printed as one JSON line (bench.py runs each in a fresh
process so peak RSS belongs to one engine alone).

    python bench/engines.py --engine ours --model output/onnx_int4/x.onnx --hf_model_dir DIR \
        --ids_file prompt_ids.json --new_tokens 128 --threads 2

Every engine gets the same prompt token ids and generates exactly --new_tokens greedy tokens (an end of
sequence does not stop it), so the timings compare the same work. ttft is prompt in -> first token out;
decode is the remaining tokens, one forward pass each.

Each engine generates twice in the one process: cold (the first generation after loading, with its
one-time costs: first allocations, thread start, lazy weight packing) and warm (the same prompt again
after the cache is reset, no prefix reused), as a server runs. Both are reported; the warm one at the
top level.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Our prefill chunks. The cpu graph returns the last position's logits only, so a long chunk costs no
# [seq, vocab] buffer, and a 256-token prompt read in one call beat four 64-token calls in
# bench/experiments/prefill_profile.py's side-by-side rounds (see bench/README.md). The npu graph returns every
# position's logits: 64 keeps that buffer at 39 MB.
PREFILL_CHUNK = {"cpu": 256, "npu": 64}

# One generation from an empty cache: prompt ids -> (generated ids, ttft seconds, decode seconds).
Generate = Callable[[list[int]], tuple[list[int], float, float]]
# engine name -> function(args) -> the engine loaded, as a Generate
Loader = Callable[[argparse.Namespace], Generate]


def load_transformers(a: argparse.Namespace) -> Generate:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    return lambda ids: transformers_greedy(a, model, ids)


def transformers_greedy(a: argparse.Namespace, model, ids: list[int]) -> tuple[list[int], float, float]:
    import torch

    out: list[int] = []
    with torch.inference_mode():
        start = time.perf_counter()
        res = model(torch.tensor([ids]), use_cache=True)
        out.append(int(res.logits[0, -1].argmax()))
        first = time.perf_counter()
        past = res.past_key_values
        for _ in range(a.new_tokens - 1):
            res = model(torch.tensor([[out[-1]]]), past_key_values=past, use_cache=True)
            past = res.past_key_values
            out.append(int(res.logits[0, -1].argmax()))
    return out, first - start, time.perf_counter() - first


def load_ours(a: argparse.Namespace) -> Generate:
    from config import InferenceConfig
    from core.contract import read_meta
    from engine.speculative import Drafter
    from session import open_session

    meta = read_meta(a.model)
    kv_len = int(meta["kv_cache_length"])
    # The CPU settings the chat uses: only filled cache slots (the cpu graph's own way; the npu graph is
    # asked to) and --max_prefill_length chunks.
    graph = "cpu" if meta.get("target") == "cpu" else "npu"
    method = None if graph == "cpu" else "basic"
    cfg = InferenceConfig.create(a.hf_model_dir, onnx_model_path=a.model, kv_cache_length=kv_len,
                                 max_input_length=min(512, kv_len - 1),
                                 max_prefill_length=a.max_prefill_length or PREFILL_CHUNK[graph],
                                 kv_cache_method=method, cpu_thread=a.threads, draft_onnx_model_path=a.draft_model)
    session = open_session(cfg)
    if a.draft_model:
        drafter = Drafter.from_config(cfg)
        return lambda ids: speculative_greedy(a, session, drafter, ids)
    return lambda ids: ours_greedy(a, session, ids)


def ours_greedy(a: argparse.Namespace, session, ids: list[int]) -> tuple[list[int], float, float]:
    session.reset()
    out: list[int] = []
    start = time.perf_counter()
    out.append(int(np.argmax(session.run(np.array([ids], np.int64)))))
    first = time.perf_counter()
    for _ in range(a.new_tokens - 1):
        out.append(int(np.argmax(session.run(np.array([[out[-1]]], np.int64)))))
    return out, first - start, time.perf_counter() - first


def speculative_greedy(a: argparse.Namespace, session, drafter, ids: list[int]) -> tuple[list[int], float, float]:
    """Our session with a draft model: the first token comes from the prompt alone, as without one; the
    draft reads the prompt in the first round, so its prefill counts as decode time."""
    from engine.sampling import SamplingParams
    from engine.speculative import speculative_tokens

    session.reset()
    drafter.reset()
    greedy = SamplingParams(a.new_tokens, method="greedy", temperature=0.0)
    out: list[int] = []
    start = time.perf_counter()
    logits = session.run(np.array([ids], np.int64))
    first = 0.0
    for token in speculative_tokens(session, drafter, list(ids), logits, greedy, np.random.default_rng(0)):
        if not out:
            first = time.perf_counter()
        out.append(token)
        if len(out) == a.new_tokens:
            break
    return out, first - start, time.perf_counter() - first


def load_llama_cpp(a: argparse.Namespace) -> Generate:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=a.model, n_ctx=1024, n_threads=a.threads, n_threads_batch=a.threads,
                          n_batch=512, verbose=False)
    return lambda ids: llama_cpp_greedy(a, llm, ids)


def llama_cpp_greedy(a: argparse.Namespace, llm, ids: list[int]) -> tuple[list[int], float, float]:
    import llama_cpp

    vocab = llm.n_vocab()

    def last_token() -> int:
        # Llama.eval keeps no logits unless every position's are kept; read the last row from the C API.
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
        return int(np.argmax(row))

    # reset() rewinds to no tokens; eval() then drops every cache entry from there on and reads the
    # whole prompt again (only generate() looks for a common prefix).
    llm.reset()
    out: list[int] = []
    start = time.perf_counter()
    llm.eval(ids)
    out.append(last_token())
    first = time.perf_counter()
    for _ in range(a.new_tokens - 1):
        llm.eval([out[-1]])
        out.append(last_token())
    return out, first - start, time.perf_counter() - first


def load_genai(a: argparse.Namespace) -> Generate:
    import onnxruntime_genai as og

    config = og.Config(a.model)
    config.clear_providers()  # the CPU provider
    model = og.Model(config)
    return lambda ids: genai_greedy(a, model, ids)


def genai_greedy(a: argparse.Namespace, model, ids: list[int]) -> tuple[list[int], float, float]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(ids) + a.new_tokens
    # min_length == max_length: the end-of-sequence token must not end the run early.
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    gen = og.Generator(model, params)
    out: list[int] = []
    start = time.perf_counter()
    gen.append_tokens(np.array(ids, dtype=np.int32))
    gen.generate_next_token()
    out.append(int(gen.get_next_tokens()[0]))
    first = time.perf_counter()
    for _ in range(a.new_tokens - 1):
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out, first - start, time.perf_counter() - first


LOADERS: dict[str, Loader] = {"transformers": load_transformers, "ours": load_ours,
                              "llama.cpp": load_llama_cpp, "onnxruntime-genai": load_genai}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure one engine generating greedy tokens for one prompt.")
    p.add_argument("--engine", choices=sorted(LOADERS), required=True)
    p.add_argument("--model", required=True, help="model file or directory the engine loads")
    p.add_argument("--hf_model_dir", required=True, help="for our session's config")
    p.add_argument("--ids_file", required=True, help="JSON list of prompt token ids")
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--draft_model", help="ours: a draft model for speculative decoding (same model, e.g. int4)")
    p.add_argument("--max_prefill_length", type=int, default=None,
                   help=f"ours: longest prefill chunk (default {PREFILL_CHUNK['cpu']} on the cpu graph, "
                        f"{PREFILL_CHUNK['npu']} on the npu graph)")
    a = p.parse_args(argv)
    ids = json.loads(Path(a.ids_file).read_text())
    generate = LOADERS[a.engine](a)
    _, cold_ttft, cold_decode = generate(ids)
    tokens, ttft, decode = generate(ids)
    # ru_maxrss is in KiB on Linux: the high-water mark of this whole process, loading included.
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"prompt_tokens": len(ids), "ttft_s": ttft, "decode_s": decode, "tokens": tokens,
                      "cold": {"ttft_s": cold_ttft, "decode_s": cold_decode}, "peak_rss_mb": rss_mb}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
