"""Second-turn first-token latency with and without KV-cache reuse, measured side by side.

    python bench/turn2_latency.py --hf_model_dir download/Qwen2.5-Coder-0.5B-Instruct \
        --onnx_model_path output/onnx2/qwen2.5_coder_0.5b_instruct.onnx

Both variants run in this process on the same session, alternating, so machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


from config import InferenceConfig
from inference import Inference, SamplingParams

TURN1 = "Write a Python function that merges two sorted lists into one sorted list, with a docstring."
TURN2 = "Now add type hints and a short example of calling it."


def first_token(engine: Inference, messages: list[dict], params: SamplingParams) -> tuple[str, float, int]:
    deltas = list(engine.chat(messages, params))
    return "".join(d.text for d in deltas), deltas[-1].stats.first_token_s, deltas[-1].stats.reused_tokens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hf_model_dir", default="download/Qwen2.5-Coder-0.5B-Instruct")
    p.add_argument("--onnx_model_path", default="output/onnx2/qwen2.5_coder_0.5b_instruct.onnx")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max_prefill_length", type=int, default=64)
    a = p.parse_args()
    cfg = InferenceConfig.create(hf_model_dir=a.hf_model_dir, onnx_model_path=a.onnx_model_path,
                          max_prefill_length=a.max_prefill_length, kv_cache_method="basic")
    engine = Inference(cfg)
    params = SamplingParams(96, method="greedy", temperature=0)
    turn1 = [{"role": "user", "content": TURN1}]
    answer, _, _ = first_token(engine, turn1, params)
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": TURN2}]
    one_token = SamplingParams(1, method="greedy", temperature=0)
    prompt_tokens = len(engine.apply_chat_template(turn2))
    reuse, fresh, reused = [], [], 0
    for _ in range(a.repeats):
        engine.reset()
        first_token(engine, turn1, params)
        _, t, reused = first_token(engine, turn2, one_token)
        reuse.append(t)
        engine.reset()
        _, t, _ = first_token(engine, turn2, one_token)
        fresh.append(t)
    result = {"turn2_prompt_tokens": prompt_tokens, "reused_tokens": reused,
              "ttft_with_reuse_s": statistics.median(reuse), "ttft_without_reuse_s": statistics.median(fresh)}
    result["speedup"] = result["ttft_without_reuse_s"] / result["ttft_with_reuse_s"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
