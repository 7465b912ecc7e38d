"""The torch reference model (backends/qwen_torch.py) traced by torch's TorchScript exporter into the npu
graph, as export_onnx.py made it before it wrote graphs directly: what the tests compare
export/npu_graph.py's graph against. It holds the whole model (and the exporter's copies) in memory."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from backends.qwen_torch import load_model
from core.contract import NPU_INPUTS, NPU_OUTPUTS, write_meta
from export.export_onnx import model_meta, save


def export_traced(hf_model_dir: str | Path, onnx_path: str | Path, kv_cache_length: int,
                  dtype: torch.dtype = torch.float32) -> None:
    hf_model_dir, onnx_path = Path(hf_model_dir), Path(onnx_path)
    model = load_model(hf_model_dir, dtype)
    a = model.args
    seq, kv = 2, 4
    example = (torch.zeros(1, seq, dtype=torch.long), torch.ones(1, kv + seq, dtype=torch.long),
               torch.arange(seq).unsqueeze(0) + kv,
               torch.zeros(1, kv, a.cache_width, a.head_dim, dtype=dtype))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "kv_len_plus_seq"},
            "position_ids": {0: "batch", 1: "seq"}, "past_key_values": {0: "batch", 1: "kv_len"},
            "logits": {0: "batch", 1: "seq"}, "out_key_values": {0: "batch", 1: "seq"}}
    with tempfile.TemporaryDirectory(prefix="qwen_trace_") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(model, example, str(raw), dynamo=False, input_names=list(NPU_INPUTS),
                          output_names=list(NPU_OUTPUTS), dynamic_axes=axes, opset_version=17,
                          do_constant_folding=True)
        del model
        proto = onnx.load(str(raw))
    dtype_name = "float16" if dtype == torch.float16 else "float32"
    write_meta(proto, model_meta(a, hf_model_dir, kv_cache_length, dtype_name, "npu"))
    save(proto, onnx_path)
