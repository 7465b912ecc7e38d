"""Peak RSS and time of exporting 0.5B- to 7B-shaped Qwen2.5 models (random bf16 weights, real shapes),
beside the traced exporter export_onnx.py had before it streamed, and a 7B int4 cpu graph run by our
session.

    python bench/experiments/export_memory.py [--sizes 0.5b 1.5b 3b 7b] [--baseline_sizes 0.5b 1.5b]
        [--work_dir output/export_memory] [--output bench/experiments/export_memory.json]

For each size: a subprocess writes the random checkpoint as bf16 safetensors shards with an index, like
a hub download, tensor by tensor; then each export runs in its own subprocess and its peak RSS is that
process's own (os.wait4). Measured: the npu graph at float16 and the cpu graph at int4 in one pass; the
baseline (the exporter of --baseline_rev, unpacked with `git archive`) does the npu graph by tracing and
the int4 cpu graph as float export + quantize_onnx.py. Each output is deleted once measured, and each
checkpoint after its size is done; the 7B-shaped one needs ~15 GB of disk, its npu graph another 15.
Not part of the test suite: it takes about half an hour and that disk.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.flags import ArgumentParser, add_flags, from_args, option

REPO = Path(__file__).resolve().parents[2]
# The published Qwen2.5 shapes; only the weights are random.
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
# The last commit whose export_onnx.py traced the model with torch (and quantized in a second step).
BASELINE_REV = "5c866b4"
SHARD_BYTES = 4 * 2 ** 30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
GENERATED = 16


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, inter, kvh = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"]
    d = h // cfg["num_attention_heads"]
    out = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out.update({f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
                    f"{p}.self_attn.q_proj.weight": (h, h), f"{p}.self_attn.q_proj.bias": (h,),
                    f"{p}.self_attn.k_proj.weight": (kvh * d, h), f"{p}.self_attn.k_proj.bias": (kvh * d,),
                    f"{p}.self_attn.v_proj.weight": (kvh * d, h), f"{p}.self_attn.v_proj.bias": (kvh * d,),
                    f"{p}.self_attn.o_proj.weight": (h, h), f"{p}.mlp.gate_proj.weight": (inter, h),
                    f"{p}.mlp.up_proj.weight": (inter, h), f"{p}.mlp.down_proj.weight": (h, inter)})
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = (cfg["vocab_size"], h)
    return out


def random_bf16(rng: np.random.Generator, n: int) -> np.ndarray:
    """bf16 bit patterns of random sign and magnitude in [1/128, 1/64): weights of a plausible scale,
    made at memory speed."""
    bits = rng.integers(0, 2 ** 16, n, dtype=np.uint16)
    return (bits & np.uint16(0x807F)) | np.uint16(0x3C00)


def build_random_model(size: str, out: Path, tokenizer_dir: Path) -> None:
    """config.json, tokenizer files and bf16 shards of at most SHARD_BYTES, written a slice at a time."""
    from export.safetensors_io import INDEX_NAME, SafetensorsWriter

    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
           "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
           "torch_dtype": "bfloat16", "use_sliding_window": False, "bos_token_id": 151643,
           "eos_token_id": 151645, **SHAPES[size]}
    out.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(cfg)
    shards, current, used = [], [], 0
    for name, shape in shapes.items():
        size_bytes = int(np.prod(shape)) * 2
        if current and used + size_bytes > SHARD_BYTES:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size_bytes
    shards.append(current)
    rng = np.random.default_rng(0)
    weight_map = {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        writer = SafetensorsWriter(out / file, [(n, "BF16", shapes[n]) for n in names])
        for n in names:
            shape = shapes[n]
            if n.endswith("norm.weight"):
                writer.write(n, np.full(shape, 0x3F80, np.uint16))  # 1.0
                continue
            row = int(np.prod(shape[1:]))
            step = max(1, 2 ** 24 // row)
            for r in range(0, shape[0], step):
                writer.write(n, random_bf16(rng, min(step, shape[0] - r) * row))
        for n in names:
            weight_map[n] = file
        writer.close()
    (out / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)


class StepFailed(RuntimeError):
    pass


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak RSS (MB) of one child process; StepFailed when it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise StepFailed(f"{' '.join(cmd[1:3])} ... failed with exit code {code} after "
                         f"{time.perf_counter() - start:.0f}s, peak RSS {usage.ru_maxrss / 1024:.0f} MB:\n"
                         f"{output[-2000:]}")
    return {"s": round(time.perf_counter() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2 ** 20


def remove_outputs(onnx_path: Path) -> None:
    for p in onnx_path.parent.glob(onnx_path.name + "*"):
        p.unlink()  # the .onnx, its .data and the session's .opt.onnx: all made by this script
    for p in onnx_path.parent.glob(onnx_path.stem + ".opt.onnx*"):
        p.unlink()


def check_free(path: Path, need_gb: float) -> None:
    free = shutil.disk_usage(path).free / 2 ** 30
    if free < need_gb + 3:
        raise RuntimeError(f"{free:.0f} GB free under {path}, this step needs ~{need_gb:.0f} GB (+3 spare)")


def export_cmd(tree: Path, hf_dir: Path, out: Path, kv: int, *flags: str) -> tuple[list[str], dict]:
    """export_onnx.py of a source tree (this one, or the baseline's), importing that tree's modules."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return ([sys.executable, str(tree / "export/export_onnx.py"), "--hf_model_dir", str(hf_dir),
             "--onnx_model_path", str(out), "--kv_cache_length", str(kv), *flags], env)


@dataclass
class MemoryOptions:
    sizes: list[str] = option(["0.5b", "1.5b", "3b", "7b"], choices=tuple(sorted(SHAPES)), help="shapes exported")
    baseline_sizes: list[str] = option(
        ["0.5b", "1.5b"], choices=tuple(sorted(SHAPES)),
        help="sizes also exported by the traced exporter of --baseline_rev (it needs ~2.2x the weights in RAM)")
    baseline_rev: str = option(BASELINE_REV, help="the commit whose exporter is the baseline")
    session_sizes: list[str] = option(["7b"], choices=tuple(sorted(SHAPES)),
                                      help="sizes whose int4 cpu graph is run by our session for 16 tokens")
    tokenizer_dir: str = option(str(REPO / "download/Qwen2.5-Coder-0.5B-Instruct"),
                                help="tokenizer files copied into each random model (Qwen2.5's vocabulary)")
    work_dir: str = option(str(REPO / "output/export_memory"), help="checkpoints and graphs, each deleted once "
                                                                    "measured")
    kv_cache_length: int = option(1024, help="the exports' cache length")
    output: str = option(str(REPO / "bench/experiments/export_memory.json"), help="results")


def measure_size(size: str, a: MemoryOptions, baseline: Path | None) -> dict:
    work = Path(a.work_dir)
    hf_dir = work / f"qwen2.5-{size}-random"
    weights_gb = sum(int(np.prod(s)) for s in tensor_shapes({**SHAPES[size]}).values()) * 2 / 2 ** 30
    check_free(work, weights_gb)
    try:
        return measure_exports(size, a, baseline, hf_dir)
    finally:
        if hf_dir.exists():
            shutil.rmtree(hf_dir)  # made by this script, kept by nothing


def measure_exports(size: str, a: MemoryOptions, baseline: Path | None, hf_dir: Path) -> dict:
    work = Path(a.work_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    build = run_measured([sys.executable, __file__, "--_build", size, str(hf_dir), a.tokenizer_dir], env)
    row: dict = {"size": size, "weights_mb": round(disk_mb(hf_dir)), "write_checkpoint": build}
    row["write_checkpoint"]["mb_per_s"] = round(row["weights_mb"] / build["s"])
    kv = a.kv_cache_length
    runs = {"npu_fp16": ["--dtype", "float16"], "cpu_int4": ["--target", "cpu", "--bits", "4"]}
    for label, flags in runs.items():
        out = work / "onnx" / f"{size}_{label}.onnx"
        try:
            row[label] = measure_export(size, label, flags, a, hf_dir, out, row["weights_mb"] / 1024)
            if label == "cpu_int4" and size in a.session_sizes:
                row["session_int4"] = run_measured([sys.executable, __file__, "--_session", str(hf_dir), str(out),
                                                    str(kv)], env)
                row["session_int4"].update(json.loads((work / "session.json").read_text()))
                (work / "session.json").unlink()
                print(f"{size} session: {row['session_int4']}", flush=True)
        finally:
            remove_outputs(out)
    if baseline is not None and size in a.baseline_sizes:
        row.update(measure_baseline(size, baseline, hf_dir, work, kv))
    return row


def measure_export(size: str, label: str, flags: list[str], a: MemoryOptions, hf_dir: Path, out: Path,
                   weights_gb: float) -> dict:
    check_free(Path(a.work_dir), weights_gb * (1.1 if label == "npu_fp16" else 0.4))
    cmd, env = export_cmd(REPO, hf_dir, out, a.kv_cache_length, *flags)
    result = run_measured(cmd, env)
    result["onnx_mb"] = round(disk_mb(out) + disk_mb(out.with_name(out.name + ".data")))
    # Bytes moved: the checkpoint read once, the graph written once.
    result["mb_per_s"] = round((weights_gb * 1024 + result["onnx_mb"]) / result["s"])
    print(f"{size} {label}: {result}", flush=True)
    return result


def measure_baseline(size: str, baseline: Path, hf_dir: Path, work: Path, kv: int) -> dict:
    """The previous exporter on the same checkpoint; a failure (e.g. out of memory) is recorded, not fatal."""
    out: dict = {}
    traced = work / "onnx" / f"{size}_baseline_npu_fp16.onnx"
    fp32 = work / "onnx" / f"{size}_baseline_cpu_fp32.onnx"
    int4 = work / "onnx" / f"{size}_baseline_cpu_int4.onnx"
    try:
        cmd, env = export_cmd(baseline, hf_dir, traced, kv, "--dtype", "float16")
        out["baseline_npu_fp16"] = run_measured(cmd, env)
    except StepFailed as e:
        out["baseline_npu_fp16"] = {"error": str(e).splitlines()[0]}
    remove_outputs(traced)
    try:
        cmd, env = export_cmd(baseline, hf_dir, fp32, kv, "--target", "cpu")
        first = run_measured(cmd, env)
        second = run_measured([sys.executable, str(baseline / "export/quantize_onnx.py"), "--input_model_path",
                               str(fp32), "--output_model_path", str(int4), "--bits", "4"], env)
        out["baseline_cpu_int4"] = {"s": round(first["s"] + second["s"], 1),
                                    "peak_rss_mb": max(first["peak_rss_mb"], second["peak_rss_mb"]),
                                    "export_fp32": first, "quantize": second}
    except StepFailed as e:
        out["baseline_cpu_int4"] = {"error": str(e).splitlines()[0]}
    remove_outputs(fp32)
    remove_outputs(int4)
    print(f"{size} baseline: {out}", flush=True)
    return out


def session_check(hf_dir: Path, onnx_path: Path, kv_cache_length: int, report: Path) -> None:
    """Open the int4 cpu graph in our session, prefill 8 tokens and greedily generate GENERATED more:
    logits of the vocabulary's size and finite, the cache filled exactly up to the session's length."""
    from config import InferenceConfig
    from session import open_session

    cfg = InferenceConfig.create(hf_dir, session_type="onnx", onnx_model_path=str(onnx_path),
                                 kv_cache_length=kv_cache_length, max_prefill_length=8)
    start = time.perf_counter()
    session = open_session(cfg)
    opened = time.perf_counter()
    vocab = cfg.shape.vocab_size
    logits = session.run(np.arange(100, 108, dtype=np.int64)[None])
    tokens = []
    for _ in range(GENERATED):
        assert logits.shape[-1] == vocab and np.isfinite(logits).all(), logits.shape
        tokens.append(int(np.argmax(logits)))
        logits = session.run(np.array([[tokens[-1]]], np.int64))
    assert np.isfinite(logits).all() and session.length == 8 + GENERATED
    filled = session.cache[:, :, 0, :, :session.length]
    assert np.isfinite(filled).all() and (np.abs(filled).max(axis=-1) > 0).all()
    assert not session.cache[:, :, 0, :, session.length:].any()
    done = time.perf_counter()
    report.write_text(json.dumps({"open_s": round(opened - start, 1),
                                  "decode_tok_per_s": round(GENERATED / (done - opened), 2),
                                  "tokens": len(tokens), "cache_slots_filled": session.length}))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Peak RSS and time of streaming exports of 0.5B-7B-shaped models.")
    add_flags(p, MemoryOptions)
    a = from_args(MemoryOptions, p.parse_args(argv))
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    baseline = None
    if a.baseline_sizes:
        baseline = work / "baseline"
        if not baseline.is_dir():
            baseline.mkdir()
            archive = subprocess.run(["git", "archive", a.baseline_rev], cwd=REPO, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
    report = {"machine": f"{os.cpu_count()} cores (shared), "
                         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GB RAM",
              "kv_cache_length": a.kv_cache_length, "baseline_rev": a.baseline_rev, "sizes": []}
    try:
        for size in a.sizes:
            report["sizes"].append(measure_size(size, a, baseline))
            Path(a.output).write_text(json.dumps(report, indent=2) + "\n")  # what is done so far survives
    except (RuntimeError, StepFailed) as e:
        print(f"export_memory.py: error: {e}", file=sys.stderr)
        return 1
    finally:
        if baseline is not None:
            shutil.rmtree(baseline)  # unpacked by this script
        if (work / "onnx").is_dir() and not any((work / "onnx").iterdir()):
            (work / "onnx").rmdir()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_build":
        build_random_model(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        sys.exit(0)
    if len(sys.argv) == 5 and sys.argv[1] == "--_session":
        session_check(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]),
                      Path(sys.argv[3]).parents[1] / "session.json")
        sys.exit(0)
    sys.exit(main())
