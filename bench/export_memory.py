"""Peak memory of exporting a Qwen2-1.5B-shaped model (random fp16 weights, real shapes) to ONNX.

    python bench/export_memory.py [--work_dir output/export_memory] [--keep]

The random model is written by one subprocess and exported by another; the number reported is the
export process's own peak RSS (os.wait4), so building the stand-in model does not count. Not part of
the test suite: it takes minutes and several GB of disk.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The published Qwen2-1.5B(-Instruct) shape; only the weights are random.
QWEN2_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, torch_dtype="float16")


def build_random_model(out: Path) -> None:
    """config.json + one fp16 safetensors file, tensor names and shapes from transformers' Qwen2."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**QWEN2_1_5B)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen2ForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in shapes.items():
        if name == "lm_head.weight":
            continue  # tied to the embedding, as in the real checkpoint
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.float16)
        else:
            tensors[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    config.to_json_file(str(out / "config.json"))


def run_measured(cmd: list[str]) -> tuple[int, float, float]:
    """Exit code, wall seconds and peak RSS in MB of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure the peak RSS of exporting a Qwen2-1.5B-shaped fp16 model.")
    p.add_argument("--work_dir", default=str(REPO / "output/export_memory"))
    p.add_argument("--kv_cache_length", type=int, default=1024)
    p.add_argument("--keep", action="store_true", help="keep the random model and its ONNX afterwards")
    p.add_argument("--output", default=str(REPO / "bench/export_memory.json"))
    a = p.parse_args(argv)
    work = Path(a.work_dir)
    hf_dir, onnx_path = work / "qwen2-1.5b-random", work / "onnx" / "qwen2_1.5b_random.onnx"
    if not (hf_dir / "config.json").is_file():
        code = subprocess.run([sys.executable, __file__, "--_build", str(hf_dir)], cwd=REPO).returncode
        if code != 0:
            print("export_memory.py: error: building the random model failed", file=sys.stderr)
            return 1
    code, seconds, rss_mb = run_measured([sys.executable, "export/export_onnx.py", "--hf_model_dir", str(hf_dir),
                                          "--onnx_model_path", str(onnx_path), "--dtype", "float16",
                                          "--kv_cache_length", str(a.kv_cache_length)])
    if code != 0:
        print(f"export_memory.py: error: the export failed with exit code {code}", file=sys.stderr)
        return 1
    weights_mb = (hf_dir / "model.safetensors").stat().st_size / 2 ** 20
    onnx_mb = sum(f.stat().st_size for f in onnx_path.parent.iterdir()) / 2 ** 20
    report = {"model": "Qwen2-1.5B shape, random fp16 weights", "kv_cache_length": a.kv_cache_length,
              "weights_mb": round(weights_mb), "onnx_mb": round(onnx_mb), "export_s": round(seconds, 1),
              "export_peak_rss_mb": round(rss_mb), "peak_rss_over_weights": round(rss_mb / weights_mb, 2)}
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if not a.keep:
        shutil.rmtree(work)  # all of it was made by this script
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_build":
        build_random_model(Path(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
