"""Where one decode step of a cpu graph spends its time: onnxruntime's profile of decode steps after the
bench prompt, per weight group (qkv, o, gate_up, down, lm_head) and per operator type, each weight group's
bytes and the read bandwidth it reaches, against the numpy read probe measured in the same process.

    python bench/experiments/decode_profile.py [--models output/onnx_cpu_int4/<name>.onnx ...] [--steps 64]

Each step reads the weights once, so a group's bytes / its time is the bandwidth its kernels reach; the
time outside the weight groups (norms, attention over the cache, the run's own overhead) is what no
weight format can make faster. Results are printed as JSON and, with --output, written there.
"""
from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.bandwidth import read_bandwidth_gbs
from bench.bandwidth import initializer_bytes
from bench.experiments.prefill_profile import (DEFAULT_MODEL, VARIANTS, Runner, kernel_times, prompt_ids,
                                                 weight_group)
from core.flags import ArgumentParser, add_flags, from_args, option


def group_bytes(path: Path) -> dict[str, int]:
    """Bytes of each weight group's MatMulNBits / MatMul initializers (what a decode step reads of it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    sizes = initializer_bytes(model)
    out: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "MatMul"):
            out[weight_group(node.name)] += sum(sizes.get(name, 0) for name in node.input[1:])
    return dict(out)


def decode_profile(model: Path, steps: int, threads: int) -> dict:
    """Milliseconds per decode step by weight group and operator type, from a profiled run of steps."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(model, VARIANTS["chunk256"], threads, profile_dir=tmp)
        ids = prompt_ids(221)
        runner.prefill(ids, [ids.shape[1]])
        token = np.zeros((1, 1), np.int64)
        length = ids.shape[1]
        for _ in range(steps):
            token[0, 0] = int(np.argmax(runner.logits))
            runner.bind(runner.binding, "input_ids", token)
            length += 1
            runner.total[...] = length
            runner.seqlens[0] = length - 1
            runner.sess.run_with_iobinding(runner.binding)
        total, by_op, by_group = kernel_times(Path(runner.sess.end_profiling()), steps)
    step_ms = total / steps
    by_op = {k: v / steps for k, v in by_op.items()}
    by_group = {k: v / steps for k, v in by_group.items()}
    sizes = group_bytes(model)
    groups = {g: {"ms": round(ms, 3), "mb": round(sizes[g] / 1e6, 1) if g in sizes else None,
                  "gb_s": round(sizes[g] / ms / 1e6, 1) if g in sizes and ms else None}
              for g, ms in sorted(by_group.items(), key=lambda kv: -kv[1])}
    return {"step_ms": round(step_ms, 3), "kernels_ms": round(sum(by_op.values()), 3),
            "weights_mb": round(sum(sizes.values()) / 1e6, 1),
            "weights_gb_s": round(sum(sizes.values()) / step_ms / 1e6, 1),
            "by_weight": groups, "by_op_ms": {k: round(v, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}


@dataclass
class DecodeProfileOptions:
    models: list[str] = option([str(DEFAULT_MODEL)], help="cpu graphs to profile, one after another")
    steps: int = option(64, help="decode steps profiled after the prompt")
    threads: int = option(2, help="onnxruntime threads")
    output: str | None = option(None, help="write the results as JSON here")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Profile a cpu graph's decode step per weight group and operator.")
    add_flags(p, DecodeProfileOptions)
    a = from_args(DecodeProfileOptions, p.parse_args(argv))
    missing = [m for m in a.models if not Path(m).is_file()]
    if missing:
        print(f"decode_profile.py: error: {missing[0]}: no such file (run `make onnx`)", file=sys.stderr)
        return 2
    report = {"read_probe_gb_s": round(read_bandwidth_gbs(a.threads), 1), "models": {}}
    for m in a.models:
        report["models"][m] = decode_profile(Path(m), a.steps, a.threads)
    report["read_probe_gb_s_after"] = round(read_bandwidth_gbs(a.threads), 1)
    text = json.dumps(report, indent=2)
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
