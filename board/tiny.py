"""Step 2: a tiny random Qwen through the whole NPU path, compared with onnxruntime call by call.

The model is random but fixed (seeded), a few hundred KB: whatever differs between the NPU and the CPU
here comes from our pyACL calls, atc or the runtime, not from a model. It is exported, patched, compiled
with onnx2om.py for the chip the runtime named, and run through AclSession and the onnxruntime session:
prefill chunks, decode steps, a second turn on the cache the first one left (after cutting it back, as the
server does when a conversation is edited), and one .om with --max_batch 2 whose rows decode together.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from board import pipeline
from board.compare import Comparison
from board.failures import StepError

KV_CACHE_LENGTH = 64          # the half-cache profile covers the first 32 tokens
MAX_PREFILL_LENGTH = 8
SHAPE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
# The tiny model's logits are O(1): float16 weights and activations move them by ~1e-3 (the emulator's and
# a chip's mixed_float16 alike); 0.05 leaves room for a chip's other summation order, not for a wrong call.
ATOL = 0.05
TIE_MARGIN = 0.05


@dataclass
class TinyResult:
    max_abs_diff: float
    tokens_match: bool
    batch1: dict
    batch2: dict

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "tokens_match": self.tokens_match, "atol": ATOL,
                "kv_cache_length": KV_CACHE_LENGTH, "max_prefill_length": MAX_PREFILL_LENGTH,
                "batch1": self.batch1, "batch2": self.batch2}


def make_model(folder: Path, seed: int = 0) -> Path:
    """A Qwen2 model directory (config.json, float32 safetensors) with seeded random weights. Biases and norm
    weights are far from 0 and 1, so a graph that dropped them would not pass."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, v, inter = SHAPE["hidden_size"], SHAPE["vocab_size"], SHAPE["intermediate_size"]
    d = h // SHAPE["num_attention_heads"]
    kv = SHAPE["num_key_value_heads"] * d

    def w(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + rng.uniform(-0.5, 0.5, n)).astype(np.float32)

    weights = {"model.embed_tokens.weight": w(v, h, scale=1.0), "model.norm.weight": norm(h),
               "lm_head.weight": w(v, h, scale=0.3)}
    for i in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{i}"
        weights.update({
            f"{p}.input_layernorm.weight": norm(h), f"{p}.post_attention_layernorm.weight": norm(h),
            f"{p}.self_attn.q_proj.weight": w(h, h), f"{p}.self_attn.q_proj.bias": w(h, scale=0.5),
            f"{p}.self_attn.k_proj.weight": w(kv, h), f"{p}.self_attn.k_proj.bias": w(kv, scale=0.5),
            f"{p}.self_attn.v_proj.weight": w(kv, h), f"{p}.self_attn.v_proj.bias": w(kv, scale=0.5),
            f"{p}.self_attn.o_proj.weight": w(h, h),
            f"{p}.mlp.gate_proj.weight": w(inter, h), f"{p}.mlp.up_proj.weight": w(inter, h),
            f"{p}.mlp.down_proj.weight": w(h, inter),
        })
    save_file(weights, str(folder / "model.safetensors"))
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **SHAPE,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 1}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def open_pair(model_dir: Path, onnx_path: Path, om_path: Path, rows: int):
    """The CPU reference (onnxruntime on the patched graph) and the AclSession on its .om."""
    from config import InferenceConfig
    from session import open_session

    common = dict(kv_cache_length=KV_CACHE_LENGTH, max_prefill_length=MAX_PREFILL_LENGTH, max_batch=rows)
    ref = open_session(InferenceConfig.create(model_dir, session_type="onnx", onnx_model_path=str(onnx_path),
                                              **common))
    npu = open_session(InferenceConfig.create(model_dir, session_type="acl", om_model_path=str(om_path), **common))
    return ref, npu


def ids(start: int, n: int) -> np.ndarray:
    return (np.arange(start, start + n, dtype=np.int64) % (SHAPE["vocab_size"] - 3) + 3)[None]


def one_row(model_dir: Path, onnx_path: Path, om_path: Path) -> Comparison:
    """20-token prompt (chunks 8+8+4, half cache), 12 decode steps, cut back to 30 tokens, a 9-token second
    turn that crosses into the full-cache profiles (8+1), 8 more decode steps."""
    ref, npu = open_pair(model_dir, onnx_path, om_path, 1)
    cmp = Comparison(TIE_MARGIN)
    try:
        for turn, (start, prompt, steps) in enumerate(((5, 20, 12), (200, 9, 8)), 1):
            if turn == 2:
                ref.truncate(30)
                npu.truncate(30)
            chunk = ids(start, prompt)
            token = cmp.add(f"turn {turn} prefill {prompt} tokens", ref.run(chunk), npu.run(chunk))
            for i in range(steps):
                step = np.array([[token]], np.int64)
                token = cmp.add(f"turn {turn} decode {i + 1}", ref.run(step), npu.run(step))
    finally:
        npu.close()
    return cmp


def two_rows(model_dir: Path, onnx_path: Path, om_path: Path) -> Comparison:
    """--max_batch 2: each row prefilled alone with its own prompt, then both decoded in one call per step."""
    ref, npu = open_pair(model_dir, onnx_path, om_path, 2)
    cmp = Comparison(TIE_MARGIN)
    try:
        tokens = []
        for row, (start, n) in enumerate(((11, 13), (300, 6))):
            chunk = ids(start, n)
            tokens.append(cmp.add(f"row {row} prefill {n} tokens", ref.row_session(row).run(chunk),
                                  npu.row_session(row).run(chunk)))
        for i in range(10):
            ref_logits, npu_logits = ref.decode([0, 1], tokens), npu.decode([0, 1], tokens)
            tokens = [cmp.add(f"rows 0+1 decode {i + 1} row {r}", ref_logits[r], npu_logits[r]) for r in (0, 1)]
    finally:
        npu.close()
    return cmp


def run(work: Path, soc: str, cpu_thread: int, logs: Path, verbose: bool) -> TinyResult:
    model_dir = make_model(work / "model")
    onnx_path, patched = work / "onnx" / "tiny.onnx", work / "onnx2" / "tiny.onnx"
    pipeline.export(model_dir, onnx_path, KV_CACHE_LENGTH, "float32", logs, verbose)
    pipeline.patch(onnx_path, patched, logs, verbose)
    oms = {rows: pipeline.compile_om(patched, work / "om" / f"tiny_b{rows}", soc, MAX_PREFILL_LENGTH, rows,
                                     model_dir, cpu_thread, logs, verbose) for rows in (1, 2)}
    return compare_oms(model_dir, patched, oms)


def compare_oms(model_dir: Path, patched: Path, oms: dict[int, Path]) -> TinyResult:
    first, second = one_row(model_dir, patched, oms[1]), two_rows(model_dir, patched, oms[2])
    diff = max(first.max_abs_diff, second.max_abs_diff)
    result = TinyResult(diff, first.tokens_match and second.tokens_match, first.summary(), second.summary())
    if not result.tokens_match:
        bad = (first.mismatches or second.mismatches)[0]
        raise TinyMismatch(result, f"greedy tokens differ at {bad['step']}: CPU {bad['cpu_token']}, NPU "
                                   f"{bad['npu_token']} (logits differ by up to {bad['max_abs_diff']:.4g})")
    if diff > ATOL:
        raise TinyMismatch(result, f"logits differ by up to {diff:.4g} (allowed {ATOL}): the NPU computes "
                                   "something else than the graph")
    return result


class TinyMismatch(StepError):
    def __init__(self, result: TinyResult, message: str) -> None:
        super().__init__(message)
        self.result = result
