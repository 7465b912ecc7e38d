"""Export a HuggingFace Qwen directory to ONNX with static KV-cache inputs and outputs.

    python export/export_onnx.py --hf_model_dir download/Qwen2.5-Coder-0.5B-Instruct \
        --onnx_model_path output/onnx/qwen2.5_coder_0.5b_instruct.onnx --dtype float32
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path


import onnx
import torch
from tqdm import tqdm

from core.contract import NPU_INPUTS, NPU_OUTPUTS, write_meta
from core.errors import UserError, run_main
from core.flags import ArgumentParser
from export.qwen_model import ModelArgs, load_model

PROG = "export_onnx.py"
DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "seq"},
    "attention_mask": {0: "batch", 1: "kv_len_plus_seq"},
    "position_ids": {0: "batch", 1: "seq"},
    "past_key_values": {0: "batch", 1: "kv_len"},
    "logits": {0: "batch", 1: "seq"},
    "out_key_values": {0: "batch", 1: "seq"},
}
OPSET = 17
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        description="Export a HuggingFace Qwen1.5/Qwen2/Qwen2.5/Qwen3 model directory to an ONNX graph "
                    "whose inputs and outputs carry a static KV cache (the graph atc and our sessions use).")
    p.add_argument("--hf_model_dir", required=True, help="HuggingFace model directory (config.json + *.safetensors)")
    p.add_argument("--onnx_model_path", required=True,
                   help="where to write the .onnx file (weights go to <name>.data beside it when over 2 GB)")
    p.add_argument("--kv_cache_length", type=int, default=1024,
                   help="KV cache length in tokens that the runtime will use; recorded in the model (default 1024)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="weight and cache dtype: float16 for the NPU, float32 for CPU runs (default float32)")
    p.add_argument("--target", choices=["npu", "cpu"], default="npu",
                   help="npu: the plain-ONNX graph with the fixed KV-cache contract that atc compiles (it also "
                        "runs on a CPU); cpu: a graph for onnxruntime only, with fused attention and an "
                        "in-place KV cache, much faster on a CPU, float32 only (default npu)")
    p.add_argument("--device_str", choices=["cpu", "cuda", "npu"], default="cpu",
                   help="the device that traces the model; cpu works for every dtype (default cpu)")
    return p.parse_args(argv)



def trace_device(device_str: str) -> torch.device:
    if device_str == "cuda" and not torch.cuda.is_available():
        raise UserError("--device_str cuda: no CUDA device here; use --device_str cpu (it exports float16 "
                        "too)")
    if device_str == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the npu device)
        except ImportError:
            raise UserError("--device_str npu needs torch_npu; use --device_str cpu (the exported graph is the "
                            "same)")
    return torch.device(device_str)


def example_inputs(model, kv_len: int, dtype: torch.dtype, device: torch.device) -> tuple:
    a = model.args
    batch, seq = 1, 2
    input_ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
    mask = torch.ones(batch, kv_len + seq, dtype=torch.long, device=device)
    positions = torch.arange(seq, device=device).unsqueeze(0) + kv_len
    past = torch.zeros(batch, kv_len, a.num_hidden_layers * 2 * a.num_key_value_heads, a.head_dim,
                       dtype=dtype, device=device)
    return input_ids, mask, positions, past


def save(model_proto: onnx.ModelProto, out: Path) -> None:
    """The graph in <name>.onnx and every weight in <name>.onnx.data beside it: reading the graph or its
    metadata then never parses the weights, and no model hits protobuf's 2 GB limit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    data_name = out.name + ".data"
    (out.parent / data_name).unlink(missing_ok=True)  # the sidecar of the named output; onnx appends otherwise
    onnx.save_model(model_proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)


def model_meta(args: ModelArgs, hf_model_dir: Path, kv_cache_length: int, dtype_name: str, target: str) -> dict:
    return {
        "kv_cache_length": kv_cache_length, "dtype": dtype_name, "target": target,
        "num_hidden_layers": args.num_hidden_layers, "num_key_value_heads": args.num_key_value_heads,
        "head_dim": args.head_dim, "vocab_size": args.vocab_size,
        "model_name": hf_model_dir.resolve().name,
    }


def export_cpu(hf_model_dir: Path, onnx_path: Path, kv_cache_length: int) -> dict:
    """The --target cpu graph, written directly (no tracing); its weights stream into <name>.data."""
    from export.cpu_graph import build

    model = load_model(hf_model_dir, torch.float32)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    proto = build(model, kv_cache_length, onnx_path.with_name(onnx_path.name + ".data"))
    meta = model_meta(model.args, hf_model_dir, kv_cache_length, "float32", "cpu")
    del model
    write_meta(proto, meta)
    onnx.save_model(proto, str(onnx_path))
    return meta


def export(hf_model_dir: Path, onnx_path: Path, kv_cache_length: int, dtype_name: str, device_str: str) -> dict:
    dtype = DTYPES[dtype_name]
    device = trace_device(device_str)
    steps = tqdm(total=4, desc="export", unit="step", file=sys.stderr)
    steps.set_postfix_str("loading weights")
    model = load_model(hf_model_dir, dtype).to(device)
    args = model.args
    steps.update()
    steps.set_postfix_str("tracing")
    with tempfile.TemporaryDirectory(prefix="qwen_export_") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "model.onnx"
        # The TorchScript exporter: fast, deterministic names, and it keeps dynamic axes as given.
        torch.onnx.export(model, example_inputs(model, 4, dtype, device), str(raw), dynamo=False,
                          input_names=list(NPU_INPUTS), output_names=list(NPU_OUTPUTS), dynamic_axes=DYNAMIC_AXES,
                          opset_version=OPSET, do_constant_folding=True)
        del model
        steps.update()
        steps.set_postfix_str("writing")
        proto = onnx.load(str(raw))
    meta = model_meta(args, hf_model_dir, kv_cache_length, dtype_name, "npu")
    write_meta(proto, meta)
    steps.update()
    save(proto, onnx_path)
    steps.update()
    steps.close()
    return meta


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_main(PROG, lambda: run(a))


def run(a: argparse.Namespace) -> int:
    hf_dir, out = Path(a.hf_model_dir), Path(a.onnx_model_path)
    if not (hf_dir / "config.json").is_file():
        raise UserError(f"--hf_model_dir {hf_dir}: no config.json there (expected a HuggingFace model "
                        "directory)")
    if out.suffix != ".onnx":
        raise UserError(f"--onnx_model_path {out}: the file name must end in .onnx")
    if a.kv_cache_length < 2:
        raise UserError(f"--kv_cache_length {a.kv_cache_length}: must be at least 2")
    try:
        ModelArgs.from_dir(hf_dir)
    except (ValueError, KeyError) as e:
        raise UserError(f"{hf_dir}/config.json: {e}")
    if a.target == "cpu" and a.dtype != "float32":
        raise UserError(f"--target cpu --dtype {a.dtype}: the CPU graph is float32 (quantize it with "
                        "quantize_onnx.py)")
    start = time.perf_counter()
    if a.target == "cpu":
        meta = export_cpu(hf_dir, out, a.kv_cache_length)
    else:
        meta = export(hf_dir, out, a.kv_cache_length, a.dtype, a.device_str)
    print(f"exported {meta['model_name']} ({a.dtype}, {a.target} graph, kv_cache_length {a.kv_cache_length}) "
          f"to {out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
