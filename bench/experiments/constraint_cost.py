"""The cost of constrained decoding: decode tokens/s on one model with and without a json_schema
constraint, side by side in one run (alternating rounds, same prompt, greedy), median of each.
The whole engine path runs (scheduler, logits processors, sampling), as the server runs it. On shared
cores the tokens/s of single runs swing by more than the constraint costs, so the time spent inside the
constraint (mask and bookkeeping) is also measured per token and set against a free token's time.

    python bench/experiments/constraint_cost.py --onnx_model_path output/onnx_cpu_int4/qwen2.5_coder_0.5b_instruct.onnx
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from core.flags import ArgumentParser, add_flags, from_args, option

PROMPT = ("List ten famous scientists as JSON: for each their name, field, birth year and one sentence "
          "about their best known work.")
SCHEMA = {"type": "object", "properties": {"scientists": {"type": "array", "minItems": 10, "maxItems": 10, "items": {
    "type": "object", "properties": {"name": {"type": "string"}, "field": {"type": "string"},
                                     "born": {"type": "integer", "minimum": 1000, "maximum": 2025},
                                     "known_for": {"type": "string"}},
    "required": ["name", "field", "born", "known_for"], "additionalProperties": False}}},
    "required": ["scientists"], "additionalProperties": False}


class Timed:
    """A LogitsProcessor that times another one."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds, self.tokens = inner, 0.0, 0

    def process(self, logits, generated):
        start = time.perf_counter()
        out = self.inner.process(logits, generated)
        self.seconds += time.perf_counter() - start
        return out

    def accept(self, token: int) -> None:
        start = time.perf_counter()
        self.inner.accept(token)
        self.seconds += time.perf_counter() - start
        self.tokens += 1


def run(inference, ids: list[int], params) -> dict:
    start = time.perf_counter()
    last = None
    text = []
    for delta in inference.stream(ids, params):
        text.append(delta.text)
        last = delta
    out = {"decode_tok_s": last.stats.decode_tok_s, "tokens": last.stats.completion_tokens,
           "seconds": time.perf_counter() - start, "text": "".join(text)}
    for p in params.processors:
        out["constraint_ms_per_token"] = 1e3 * p.seconds / max(1, p.tokens)
    return out


@dataclass
class CostOptions:
    hf_model_dir: str = option("download/Qwen2.5-Coder-0.5B-Instruct", help="the model directory")
    onnx_model_path: str = option("output/onnx_cpu_int4/qwen2.5_coder_0.5b_instruct.onnx", help="the cpu graph")
    rounds: int = option(5, help="alternating rounds; the median is reported")
    new_tokens: int = option(160, help="tokens decoded per run")
    cpu_thread: int = option(2, help="CPU threads")
    out: str = option("bench/experiments/constraint_cost.json", help="results")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(ap, CostOptions)
    a = from_args(CostOptions, ap.parse_args(argv))

    from config import InferenceConfig
    from engine.constraint import Grammars, json_grammar
    from inference import Inference, SamplingParams

    config = InferenceConfig.create(a.hf_model_dir, onnx_model_path=a.onnx_model_path, max_prefill_length=64,
                                    cpu_thread=a.cpu_thread, max_output_length=a.new_tokens)
    inference = Inference(config)
    grammars = Grammars(inference.tokenizer, inference.eos_token_ids)
    grammar = json_grammar(SCHEMA)
    ids = inference.apply_chat_template([{"role": "user", "content": PROMPT}])

    def params(constrained: bool) -> SamplingParams:
        return SamplingParams(max_new_tokens=a.new_tokens, method="greedy",
                              processors=[Timed(grammars.constraint(grammar))] if constrained else [])

    grammars.tokenizer()  # built once per server, not per request: kept out of the rounds
    run(inference, ids, params(False))  # warm-up: graph optimisation, caches
    rounds: dict[str, list[dict]] = {"free": [], "json_schema": []}
    for i in range(a.rounds):
        order = [False, True] if i % 2 == 0 else [True, False]
        for constrained in order:
            rounds["json_schema" if constrained else "free"].append(run(inference, ids, params(constrained)))
    med = {k: statistics.median(r["decode_tok_s"] for r in v) for k, v in rounds.items()}
    mask_ms = statistics.median(r["constraint_ms_per_token"] for r in rounds["json_schema"])
    result = {
        "model": a.onnx_model_path, "rounds": a.rounds, "new_tokens": a.new_tokens, "cpu_thread": a.cpu_thread,
        "free_decode_tok_s": round(med["free"], 2), "json_schema_decode_tok_s": round(med["json_schema"], 2),
        "slowdown": round(1 - med["json_schema"] / med["free"], 4),
        "constraint_ms_per_token": round(mask_ms, 3),
        "constraint_share_of_free_token": round(mask_ms / (1e3 / med["free"]), 4),
        "runs": {k: [{key: round(r[key], 3) for key in r if key != "text"} for r in v] for k, v in rounds.items()},
        "constrained_answer": rounds["json_schema"][-1]["text"],
    }
    Path(a.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"decode tok/s: free {result['free_decode_tok_s']}, json_schema {result['json_schema_decode_tok_s']}, "
          f"slowdown {100 * result['slowdown']:.1f} % (median of {a.rounds}); constraint {mask_ms:.2f} ms/token = "
          f"{100 * result['constraint_share_of_free_token']:.1f} % of a free token's time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
