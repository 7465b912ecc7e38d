"""Where a prefill of the cpu graph spends its time, and which settings make it faster: one process,
every variant side by side in interleaved rounds (a shared machine's slow spells hit them alike).

    python bench/experiments/prefill_profile.py [--model output/onnx_cpu_int4/<name>.onnx] [--tokens 256] [--rounds 5]
        [--profile] [--variants chunk256 chunk64 ...] [--extra_model label=path ...]

A variant is a model (the int4 graph, or one given with --extra_model), a chunk split of the prompt and
onnxruntime session settings. Each prefill starts from an empty cache; the cache is bound in place as
OnnxCpuGraphSession binds it, and only the last position's logits are asked for. --profile also runs the
first variant once with onnxruntime's profiler and prints the time per operator type and per weight
(qkv, o, gate_up, down, lm_head). Results are printed as a table and, with --output, written as JSON.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.flags import ArgumentParser, add_flags, from_args, option

REPO = Path(__file__).resolve().parents[2]
ONNX_NAME = "qwen2.5_coder_0.5b_instruct.onnx"
DEFAULT_MODEL = REPO / "output/onnx_cpu_int4" / ONNX_NAME


@dataclass
class Variant:
    name: str
    chunk: int = 256                    # longest chunk; the prompt is cut into chunks of this length
    model: str = "int4"                 # a label of --extra_model, or int4 (--model)
    config: dict[str, str] = field(default_factory=lambda: {"session.intra_op.dynamic_block_base": "1"})
    spin: bool = True
    power_of_two: bool = False          # the session's split (backends/base.py prefill_chunks)
    kv_len: int | None = None           # bind a shorter cache than the export's (its dims are symbolic)


VARIANTS = {
    "chunk256": Variant("chunk256"),
    "chunk128": Variant("chunk128", chunk=128),
    "chunk64": Variant("chunk64", chunk=64),
    "chunk32": Variant("chunk32", chunk=32),
    "chunk256_default_blocks": Variant("chunk256_default_blocks", config={}),
    "chunk256_nospin": Variant("chunk256_nospin", spin=False),
    "chunk256_pow2": Variant("chunk256_pow2", power_of_two=True),
    "chunk64_pow2": Variant("chunk64_pow2", chunk=64, power_of_two=True),
    "chunk256_kv512": Variant("chunk256_kv512", kv_len=512),
    "chunk64_kv512": Variant("chunk64_kv512", chunk=64, kv_len=512),
}


def prompt_ids(n: int) -> np.ndarray:
    """The bench prompt through the chat template, repeated to n tokens (speed does not depend on which
    tokens, but a real prompt keeps the attention pattern realistic)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(REPO / "download/Qwen2.5-Coder-0.5B-Instruct")
    text = (REPO / "bench/prompt.txt").read_text()
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    return np.array([(list(ids) * (n // len(ids) + 1))[:n]], np.int64)


def chunks(n: int, size: int, power_of_two: bool) -> list[int]:
    from backends.base import even_chunks, prefill_chunks

    return prefill_chunks(n, size) if power_of_two else even_chunks(n, size)


class Runner:
    """One onnxruntime session on the model's saved optimized graph, with the cache bound in place."""

    def __init__(self, model: Path, v: Variant, threads: int, profile_dir: str | None = None):
        import onnxruntime as ort

        from backends.ort_cache import bind, cpu_session, optimized_path
        from core.contract import read_meta

        cpu_session(model, threads)  # writes <name>.opt.onnx once, as the chat session does
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for k, val in v.config.items():
            opts.add_session_config_entry(k, val)
        if not v.spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_dir:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(profile_dir) / "prefill")
        self.sess = ort.InferenceSession(str(optimized_path(model)), opts, providers=["CPUExecutionProvider"])
        self.bind = bind
        meta = read_meta(model)
        layers, kvh, d = (int(meta[k]) for k in ("num_hidden_layers", "num_key_value_heads", "head_dim"))
        self.vocab = int(meta["vocab_size"])
        self.cache = np.zeros((layers, 2, 1, kvh, v.kv_len or int(meta["kv_cache_length"]), d),
                              np.float32)
        self.binding = self.sess.io_binding()
        for i in range(layers):
            for j, kind in enumerate(("key", "value")):
                bind(self.binding, f"past_{kind}_{i}", self.cache[i, j])
                bind(self.binding, f"present_{kind}_{i}", self.cache[i, j], output=True)
        self.seqlens = np.zeros(1, np.int32)
        self.total = np.zeros((), np.int32)
        self.num_logits = np.ones(1, np.int64)
        self.logits = np.zeros((1, 1, self.vocab), np.float32)
        for name, arr in (("seqlens_k", self.seqlens), ("total_sequence_length", self.total),
                          ("num_logits", self.num_logits)):
            bind(self.binding, name, arr)
        bind(self.binding, "logits", self.logits, output=True)

    def prefill(self, ids: np.ndarray, plan: list[int]) -> float:
        """Seconds to feed ids in chunks of plan from an empty cache (old entries are masked by the lengths)."""
        start, length = time.perf_counter(), 0
        for size in plan:
            chunk = np.ascontiguousarray(ids[:, length:length + size])
            self.bind(self.binding, "input_ids", chunk)
            length += size
            self.total[...] = length
            self.seqlens[0] = length - 1
            self.sess.run_with_iobinding(self.binding)
        return time.perf_counter() - start


def weight_group(node: str) -> str:
    for key in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head", "gqa", "embed"):
        if key in node:
            return key
    return "other"


def kernel_times(trace: Path, runs: int) -> tuple[float, dict[str, float], dict[str, float]]:
    """From an onnxruntime profile, the milliseconds of its last `runs` runs: in all, per operator type
    and per weight group."""
    events = json.loads(trace.read_text())
    last = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-runs:]
    t0 = min(e["ts"] for e in last)
    by_op, by_group = defaultdict(float), defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3
            by_group[weight_group(e["name"])] += e["dur"] / 1e3
    return sum(e["dur"] for e in last) / 1e3, dict(by_op), dict(by_group)


def profile(runner: Runner, ids: np.ndarray, plan: list[int]) -> dict:
    """Time per operator type and per weight group from onnxruntime's profile of one prefill."""
    runner.prefill(ids, plan)  # the profiled run follows a warm one
    path = runner.sess.end_profiling()
    total_run, by_op, by_group = kernel_times(Path(path), len(plan))
    return {"run_ms": round(total_run, 1),
            "by_op_ms": {k: round(v, 1) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "by_weight_ms": {k: round(v, 1) for k, v in sorted(by_group.items(), key=lambda kv: -kv[1])}}


@dataclass
class ProfileOptions:
    model: str = option(str(DEFAULT_MODEL), help="the int4 cpu graph (label int4)")
    extra_model: list[str] = option([], help="label=path of further cpu graphs to compare")
    variants: list[str] = option(["chunk256", "chunk64"],
                                 help=f"from {', '.join(VARIANTS)}, or label:chunk to run another model (e.g. "
                                      "acc0:256)")
    tokens: int = option(256, help="prompt tokens prefilled")
    rounds: int = option(5, help="interleaved rounds; the median is reported")
    threads: int = option(2, help="onnxruntime threads")
    power_of_two: bool = option(False, help="split as the session does (power-of-two chunks)")
    profile: bool = option(False, help="also profile the first variant's prefill per operator")
    output: str | None = option(None, help="write the results as JSON here")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Profile and compare prefill settings of the cpu graph side by side.")
    add_flags(p, ProfileOptions)
    a = from_args(ProfileOptions, p.parse_args(argv))
    models = {"int4": Path(a.model)}
    for item in a.extra_model:
        label, _, path = item.partition("=")
        models[label] = Path(path)
    for label, path in models.items():
        if not path.is_file():
            print(f"prefill_profile.py: error: {label}: {path}: no such file", file=sys.stderr)
            return 2
    variants = []
    for name in a.variants:
        if name in VARIANTS:
            v = VARIANTS[name]
        else:
            label, _, size = name.partition(":")
            if label not in models or not size.isdigit():
                print(f"prefill_profile.py: error: unknown variant {name}", file=sys.stderr)
                return 2
            v = Variant(name, chunk=int(size), model=label)
        variants.append(Variant(v.name, v.chunk, v.model, v.config, v.spin, a.power_of_two or v.power_of_two,
                                v.kv_len))
    ids = prompt_ids(a.tokens)
    report: dict = {"tokens": a.tokens, "threads": a.threads, "rounds": a.rounds, "variants": {}}
    if a.profile:
        v = variants[0]
        with tempfile.TemporaryDirectory() as tmp:
            runner = Runner(models[v.model], v, a.threads, tmp)
            report["profile"] = {"variant": v.name, **profile(runner, ids, chunks(a.tokens, v.chunk, v.power_of_two))}
            del runner
        print(json.dumps(report["profile"], indent=2), flush=True)
    runners = [Runner(models[v.model], v, a.threads) for v in variants]
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for v, r in zip(variants, runners):
        r.prefill(ids, chunks(a.tokens, v.chunk, v.power_of_two))  # first run: allocations, thread start
    for rnd in range(a.rounds):
        for v, r in zip(variants, runners):
            times[v.name].append(r.prefill(ids, chunks(a.tokens, v.chunk, v.power_of_two)))
        print(f"round {rnd + 1}: " + "  ".join(f"{v.name} {a.tokens / times[v.name][-1]:.0f}" for v in variants),
              flush=True)
    print("| variant | model | chunks | prefill tok/s (median) | min..max |\n|---|---|---|---|---|")
    for v in variants:
        rates = [a.tokens / t for t in times[v.name]]
        med = statistics.median(rates)
        report["variants"][v.name] = {"model": str(models[v.model]),
                                      "chunks": chunks(a.tokens, v.chunk, v.power_of_two),
                                      "prefill_tok_s": round(med, 1), "all": [round(x, 1) for x in rates]}
        print(f"| {v.name} | {v.model} | {v.chunk} | {med:.1f} | {min(rates):.0f}..{max(rates):.0f} |")
    if a.output:
        Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
