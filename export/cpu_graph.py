"""The `--target cpu` graph: the same Qwen decoder written with onnxruntime's fused CPU operators.

The atc-facing graph (npu_graph.py) must use plain ONNX ops and pass the KV cache in and out. A CPU
has no such limits, so this graph uses onnxruntime's contrib ops instead:

- GroupQueryAttention with rotary embedding inside and past/present bound to *one* buffer per layer:
  the new keys and values are written in place, nothing is copied between steps;
- SkipSimplifiedLayerNormalization (residual add + RMSNorm in one kernel);
- packed q/k/v and gate/up projections, so each layer runs four large matmuls instead of seven
  (with --bits, MatMulNBits written directly, as export/quantize_onnx.py would make them);
- logits for the last `num_logits` positions only: 1 while generating (a prefill chunk skips most of
  the output projection), a few when speculative decoding checks draft tokens.

I/O, all batch-first:
    input_ids [b, s] int64, seqlens_k [b] int32 (tokens in the cache after this call, minus one),
    total_sequence_length [] int32, num_logits [1] int64 (1 <= n <= s),
    past_key_<i> / past_value_<i> [b, kv_heads, kv_len, head_dim]
    -> logits [b, n, vocab], present_key_<i> / present_value_<i> (the past buffers, updated).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from core.contract import ModelShape
from export.block_quant import QuantSpec
from export.npu_graph import head_weight, rope_inv_freq
from export.onnx_weights import MS, GraphBuilder, Matrix, WeightFile
from export.safetensors_io import Checkpoint

# MatMulNBits' int4 embedding (GatherBlockQuantized) needs opset 21; emitting it directly spares the
# quantizer a version conversion that does not know the contrib ops.
OPSET, IR_VERSION = 21, 10


def rope_tables(inv_freq: np.ndarray, kv_len: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(kv_len, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build(ckpt: Checkpoint, a: ModelShape, kv_len: int, data_path: Path, quant: QuantSpec | None = None,
          progress=None) -> onnx.ModelProto:
    """The float32 graph of a checkpoint, or with `quant` its MatMulNBits weights quantized as they are
    read; every weight goes to data_path as it is made."""
    w = WeightFile(data_path)
    try:
        return _build(ckpt, a, kv_len, GraphBuilder(w, np.float32, quant), progress)
    finally:
        w.close()


def _build(ckpt: Checkpoint, a: ModelShape, kv_len: int, g: GraphBuilder, progress) -> onnx.ModelProto:
    eps, d, nh, kvh = a.rms_norm_eps, a.head_dim, a.num_attention_heads, a.num_key_value_heads
    w, quant = g.w, g.quant

    def bits(name: str) -> int | None:
        return quant.node_bits(name, head=False) if quant else None

    cos, sin = rope_tables(rope_inv_freq(a), kv_len)
    cos_name, sin_name = w.add("rope.cos", cos), w.add("rope.sin", sin)
    split_name = w.add("mlp.split", np.array([a.intermediate_size] * 2, dtype=np.int64))

    embed = Matrix(ckpt, ("model.embed_tokens.weight",))
    if quant and quant.embedding:
        inputs = w.add_gather_int4("model.embed_tokens.weight", embed, quant.block_size, quant.symmetric)
        x = g.op("GatherBlockQuantized", [inputs[0], "input_ids"] + inputs[1:], ["embed/out0"], "embed_Q4",
                 domain=MS, gather_axis=0, quantize_axis=1, block_size=quant.block_size)[0]
    else:
        x = g.op("Gather", [w.add_rows("model.embed_tokens.weight", embed, np.float32), "input_ids"], 1,
                 "embed")[0]
    residual, pending = x, None
    for i in range(a.num_hidden_layers):
        p = f"model.layers.{i}"
        att, mlp = f"{p}.self_attn", f"{p}.mlp"
        h, residual = normed(g, pending, residual, ckpt.read(f"{p}.input_layernorm.weight"), eps,
                             f"{p}.input_layernorm")
        qkv_bias = (np.concatenate([ckpt.read(f"{att}.{x}_proj.bias") for x in "qkv"]) if a.qkv_bias else None)
        qkv = g.linear(h, Matrix(ckpt, tuple(f"{att}.{x}_proj.weight" for x in "qkv")), f"{att}.qkv_proj",
                       qkv_bias, bits=bits(f"{att}.qkv_proj"))
        qkv_in = [qkv, "", ""]
        if a.qk_norm:
            qkv_in = qk_normed(g, qkv, ckpt, att, nh, kvh, d, eps)
        attn = g.op("GroupQueryAttention",
                    qkv_in + [f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length",
                              cos_name, sin_name],
                    [f"{att}/out", f"present_key_{i}", f"present_value_{i}"], f"{att}.gqa",
                    domain=MS, num_heads=nh, kv_num_heads=kvh, do_rotary=1, rotary_interleaved=0,
                    scale=float(d ** -0.5))[0]
        o = g.linear(attn, Matrix(ckpt, (f"{att}.o_proj.weight",)), f"{att}.o_proj", bits=bits(f"{att}.o_proj"))
        h, residual = normed(g, o, residual, ckpt.read(f"{p}.post_attention_layernorm.weight"), eps,
                             f"{p}.post_attention_layernorm")
        gate_up = g.linear(h, Matrix(ckpt, (f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight")),
                           f"{mlp}.gate_up_proj", bits=bits(f"{mlp}.gate_up_proj"))
        gate, up = g.op("Split", [gate_up, split_name], 2, f"{mlp}.split", axis=-1)
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], 1, f"{mlp}.sigmoid")[0]], 1, f"{mlp}.silu")[0]
        act = g.op("Mul", [silu, up], 1, f"{mlp}.act")[0]
        pending = g.linear(act, Matrix(ckpt, (f"{mlp}.down_proj.weight",)), f"{mlp}.down_proj",
                           bits=bits(f"{mlp}.down_proj"))
        if progress is not None:
            progress.update()

    # Only the last positions' logits are used: cut the sequence before the final norm.
    start = g.op("Neg", ["num_logits"], 1, "last.start")[0]
    last = [start, w.add("last.end", np.array([2 ** 62], np.int64)), w.add("last.axis", np.array([1], np.int64))]
    pending = g.op("Slice", [pending] + last, 1, "last_token.mlp")[0]
    residual = g.op("Slice", [residual] + last, 1, "last_token.residual")[0]
    h, _ = normed(g, pending, residual, ckpt.read("model.norm.weight"), eps, "model.norm")
    g.linear(h, Matrix(ckpt, (head_weight(ckpt, a),)), "lm_head", out="logits",
             bits=quant.head_bits if quant else None, block_size=quant.head_block_size if quant else None)
    if progress is not None:
        progress.update()
    return make_model(g, a)


def normed(g: GraphBuilder, pending: str | None, residual: str, gamma: np.ndarray, eps: float,
           name: str) -> tuple[str, str]:
    """RMSNorm of residual + pending (one fused kernel) and that sum, the new residual; the first
    layer has nothing pending."""
    gamma_name = g.w.add(f"{name}.weight", gamma)
    if pending is None:
        return g.op("SimplifiedLayerNormalization", [residual, gamma_name], 1, name, axis=-1,
                    epsilon=eps)[0], residual
    out, _, _, total = g.op("SkipSimplifiedLayerNormalization", [pending, residual, gamma_name], 4, name,
                            domain=MS, epsilon=eps)
    return out, total


def qk_normed(g: GraphBuilder, qkv: str, ckpt: Checkpoint, name: str, nh: int, kvh: int, d: int,
              eps: float) -> list[str]:
    """Qwen3's per-head RMSNorm of q and k, applied before GroupQueryAttention's rotary embedding."""
    w = g.w
    sizes = w.add(f"{name}.qkv_split", np.array([nh * d, kvh * d, kvh * d], np.int64))
    q, k, v = g.op("Split", [qkv, sizes], 3, f"{name}.qkv_split", axis=-1)
    heads = w.add(f"{name}.per_head", np.array([0, 0, -1, d], np.int64))
    flat = w.add(f"{name}.flat", np.array([0, 0, -1], np.int64))
    out = []
    for x, tag in ((q, "q_norm"), (k, "k_norm")):
        x = g.op("Reshape", [x, heads], 1, f"{name}.{tag}/heads")[0]
        x = g.op("SimplifiedLayerNormalization", [x, w.add(f"{name}.{tag}.weight", ckpt.read(f"{name}.{tag}.weight"))],
                 1, f"{name}.{tag}", axis=-1, epsilon=eps)[0]
        out.append(g.op("Reshape", [x, flat], 1, f"{name}.{tag}/flat")[0])
    return out + [v]


def make_model(g: GraphBuilder, a: ModelShape) -> onnx.ModelProto:
    f32, kv_shape = TensorProto.FLOAT, ["batch", a.num_key_value_heads, "kv_len", a.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
              helper.make_tensor_value_info("num_logits", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "num_logits", a.vocab_size])]
    for i in range(a.num_hidden_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", f32, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", f32, kv_shape))
    graph = helper.make_graph(g.nodes, "qwen_cpu", inputs, outputs, initializer=g.w.tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    model.ir_version = IR_VERSION
    return model
