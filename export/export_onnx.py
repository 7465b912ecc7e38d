"""Export a HuggingFace Qwen directory to ONNX with static KV-cache inputs and outputs.

    python export/export_onnx.py --hf_model_dir download/Qwen2.5-Coder-0.5B-Instruct \
        --onnx_model_path output/onnx/qwen2.5_coder_0.5b_instruct.onnx --dtype float32

Both graphs are written directly from the safetensors files, one weight (or a few rows of one) at a
time: read, cast or quantized, appended to <name>.onnx.data, dropped. Nothing is traced and torch is not
needed, so the memory an export takes does not grow with the model.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from core.contract import ModelShape, write_meta
from core.errors import UserError, run_main
from core.flags import ArgumentParser, add_flags, from_args, option
from export.block_quant import DEFAULT_ACCURACY_LEVEL, DEFAULT_BLOCK, DEFAULT_INT8_NODES, QuantSpec
from export.safetensors_io import Checkpoint

PROG = "export_onnx.py"
DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class ExportOptions:
    hf_model_dir: str = option(help="HuggingFace model directory (config.json + *.safetensors)")
    onnx_model_path: str = option(help="where to write the .onnx file (its weights go to <name>.onnx.data beside it)")
    kv_cache_length: int = option(1024, help="KV cache length in tokens that the runtime will use; recorded in the "
                                             "model")
    dtype: str = option("float32", choices=tuple(sorted(DTYPES)),
                        help="weight and cache dtype: float16 for the NPU, float32 for CPU runs")
    target: str = option("npu", choices=("npu", "cpu"),
                         help="npu: the plain-ONNX graph with the fixed KV-cache contract that atc compiles (it also "
                              "runs on a CPU); cpu: a graph for onnxruntime only, with fused attention and an "
                              "in-place KV cache, much faster on a CPU, float32 only")
    bits: int | None = option(None, choices=(4, 8),
                              help="--target cpu only: write the weights quantized to 4 or 8 bits (MatMulNBits, and "
                                   "at 4 bits the embedding as GatherBlockQuantized) in the same pass, as "
                                   "quantize_onnx.py would make them; the float graph is never written (default: "
                                   "float32 weights)")
    block_size: int | None = option(None, help="with --bits: weights per quantization block, a power of two >= 16 "
                                               "(default 128 at 4 bits, 32 at 8 bits; the output projection is "
                                               "int8 at either)")
    accuracy_level: int = option(DEFAULT_ACCURACY_LEVEL, choices=(0, 1, 2, 3, 4),
                                 help="with --bits: MatMulNBits compute type, 4 = int8 activations")
    device_str: str = option("cpu", choices=("cpu", "cuda", "npu"),
                             help="accepted for older commands and ignored: nothing is traced, the graph is "
                                  "written directly on the CPU", show_default=False)


def parse_args(argv: list[str] | None = None) -> ExportOptions:
    p = ArgumentParser(
        description="Export a HuggingFace Qwen1.5/Qwen2/Qwen2.5/Qwen3 model directory to an ONNX graph "
                    "whose inputs and outputs carry a static KV cache (the graph atc and our sessions use).")
    add_flags(p, ExportOptions)
    return from_args(ExportOptions, p.parse_args(argv))


def save(model_proto: onnx.ModelProto, out: Path) -> None:
    """The graph in <name>.onnx and every weight in <name>.onnx.data beside it: reading the graph or its
    metadata then never parses the weights, and no model hits protobuf's 2 GB limit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    data_name = out.name + ".data"
    (out.parent / data_name).unlink(missing_ok=True)  # the sidecar of the named output; onnx appends otherwise
    onnx.save_model(model_proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)


def model_meta(args: ModelShape, hf_model_dir: Path, kv_cache_length: int, dtype_name: str, target: str) -> dict:
    return {"kv_cache_length": kv_cache_length, "dtype": dtype_name, "target": target, **args.as_meta(),
            "model_name": hf_model_dir.resolve().name}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def export(hf_model_dir: Path, onnx_path: Path, kv_cache_length: int, dtype_name: str, target: str,
           quant: QuantSpec | None = None) -> dict:
    """Write <onnx_path> and <onnx_path>.data; returns the recorded metadata."""
    from export import cpu_graph, npu_graph

    args = ModelShape.from_dir(hf_model_dir)
    try:
        ckpt = Checkpoint(hf_model_dir)
        npu_graph.check_weights(ckpt, args)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--hf_model_dir {hf_model_dir}: {e}") from None
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    data_path = onnx_path.with_name(onnx_path.name + ".data")
    layers = tqdm(total=args.num_hidden_layers + 1, desc=f"export {target}", unit="layer", file=sys.stderr)
    try:
        if target == "cpu":
            proto = cpu_graph.build(ckpt, args, kv_cache_length, data_path, quant, progress=layers)
        else:
            proto = npu_graph.build(ckpt, args, DTYPES[dtype_name], data_path, progress=layers)
    except BaseException:
        data_path.unlink(missing_ok=True)  # a partial sidecar of our own output is useless
        raise
    finally:
        layers.close()
    meta = model_meta(args, hf_model_dir, kv_cache_length, dtype_name, target)
    if quant:
        meta["quantization"] = quant.describe()
    write_meta(proto, meta)
    onnx.save_model(proto, str(onnx_path))
    return meta


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_main(PROG, lambda: run(a))


def run(a: ExportOptions) -> int:
    hf_dir, out = Path(a.hf_model_dir), Path(a.onnx_model_path)
    ModelShape.from_dir(hf_dir)  # a missing or unusable config.json is a UserError before any work
    if out.suffix != ".onnx":
        raise UserError(f"--onnx_model_path {out}: the file name must end in .onnx")
    if a.kv_cache_length < 2:
        raise UserError(f"--kv_cache_length {a.kv_cache_length}: must be at least 2")
    if a.target == "cpu" and a.dtype != "float32":
        raise UserError(f"--target cpu --dtype {a.dtype}: the CPU graph is float32 (use --bits 4 or 8 for "
                        "smaller weights)")
    quant = None
    if a.bits is not None:
        if a.target != "cpu":
            raise UserError(f"--bits {a.bits} needs --target cpu (quantize an npu graph with quantize_onnx.py)")
        block = DEFAULT_BLOCK[a.bits] if a.block_size is None else a.block_size
        if block < 16 or block & (block - 1):
            raise UserError(f"--block_size {block}: must be a power of two, at least 16")
        quant = QuantSpec(bits=a.bits, block_size=block, accuracy_level=a.accuracy_level, embedding=a.bits == 4,
                          int8_nodes=DEFAULT_INT8_NODES[a.bits])
    elif a.block_size is not None:
        raise UserError("--block_size needs --bits")
    start = time.perf_counter()
    meta = export(hf_dir, out, a.kv_cache_length, a.dtype, a.target, quant)
    weights = f"int{a.bits}" if a.bits else a.dtype
    print(f"exported {meta['model_name']} ({weights}, {a.target} graph, kv_cache_length {a.kv_cache_length}) "
          f"to {out} in {time.perf_counter() - start:.1f}s, peak memory {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
