"""The `--target cpu` graph: the same Qwen decoder written with onnxruntime's fused CPU operators.

The atc-facing graph (qwen_model.py) must use plain ONNX ops and pass the KV cache in and out. A CPU
has no such limits, so this graph uses onnxruntime's contrib ops instead:

- GroupQueryAttention with rotary embedding inside and past/present bound to *one* buffer per layer:
  the new keys and values are written in place, nothing is copied between steps;
- SkipSimplifiedLayerNormalization (residual add + RMSNorm in one kernel);
- packed q/k/v and gate/up projections, so each layer runs four large matmuls instead of seven
  (export/quantize_onnx.py turns them into MatMulNBits);
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

# MatMulNBits' int4 embedding (GatherBlockQuantized) needs opset 21; emitting it directly spares the
# quantizer a version conversion that does not know the contrib ops.
OPSET, IR_VERSION = 21, 10
MS = "com.microsoft"


class WeightFile:
    """Initializers written straight to the .data sidecar as they are made, so the exporter never
    holds a second copy of the weights in protobuf form."""

    def __init__(self, data_path: Path):
        self.path = data_path
        self.file = open(data_path, "wb")
        self.tensors: list[TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        if array.nbytes < 1024:  # shapes and scalars stay inline, readable in the graph
            t.raw_data = array.tobytes()
        else:
            offset = self.file.tell()
            self.file.write(array.tobytes())
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", self.path.name), ("offset", offset), ("length", array.nbytes)):
                t.external_data.add(key=key, value=str(value))
        self.tensors.append(t)
        return name

    def close(self) -> None:
        self.file.close()


class GraphBuilder:
    def __init__(self, weights: WeightFile):
        self.w = weights
        self.nodes: list[onnx.NodeProto] = []

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | int, name: str,
           domain: str = "", **attrs) -> list[str]:
        if isinstance(outputs, int):
            outputs = [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def linear(self, x: str, weight: np.ndarray, name: str, bias: np.ndarray | None = None,
               out: str | None = None) -> str:
        """x @ weight.T (+ bias); weight in torch's [out, in] layout."""
        y = self.op("MatMul", [x, self.w.add(f"{name}.weight", weight.T)],
                    [out] if out and bias is None else 1, name)[0]
        if bias is not None:
            y = self.op("Add", [y, self.w.add(f"{name}.bias", bias)], [out] if out else 1, f"{name}/bias")[0]
        return y


def _np(t) -> np.ndarray:
    return t.detach().float().numpy()


def rope_tables(inv_freq: np.ndarray, kv_len: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(kv_len, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build(model, kv_len: int, data_path: Path) -> onnx.ModelProto:
    """The graph of a loaded QwenForExport (float32); weights go to data_path."""
    a = model.args
    eps, d, nh, kvh = a.rms_norm_eps, a.head_dim, a.num_attention_heads, a.num_key_value_heads
    w = WeightFile(data_path)
    g = GraphBuilder(w)
    cos, sin = rope_tables(_np(model.inv_freq), kv_len)
    cos_name, sin_name = w.add("rope.cos", cos), w.add("rope.sin", sin)
    split_name = w.add("mlp.split", np.array([a.intermediate_size] * 2, dtype=np.int64))

    x = g.op("Gather", [w.add("model.embed_tokens.weight", _np(model.model.embed_tokens.weight)), "input_ids"],
             1, "embed")[0]
    residual, pending = x, None
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}"
        att, mlp = layer.self_attn, layer.mlp
        h, residual = normed(g, pending, residual, _np(layer.input_layernorm.weight), eps, f"{p}.input_layernorm")
        qkv_bias = (np.concatenate([_np(att.q_proj.bias), _np(att.k_proj.bias), _np(att.v_proj.bias)])
                    if a.qkv_bias else None)
        qkv = g.linear(h, np.concatenate([_np(att.q_proj.weight), _np(att.k_proj.weight), _np(att.v_proj.weight)]),
                       f"{p}.self_attn.qkv_proj", qkv_bias)
        qkv_in = [qkv, "", ""]
        if a.qk_norm:
            qkv_in = qk_normed(g, qkv, att, nh, kvh, d, eps, f"{p}.self_attn")
        attn = g.op("GroupQueryAttention",
                    qkv_in + [f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_sequence_length",
                              cos_name, sin_name],
                    [f"{p}.self_attn/out", f"present_key_{i}", f"present_value_{i}"], f"{p}.self_attn.gqa",
                    domain=MS, num_heads=nh, kv_num_heads=kvh, do_rotary=1, rotary_interleaved=0,
                    scale=float(d ** -0.5))[0]
        o = g.linear(attn, _np(att.o_proj.weight), f"{p}.self_attn.o_proj")
        h, residual = normed(g, o, residual, _np(layer.post_attention_layernorm.weight), eps,
                             f"{p}.post_attention_layernorm")
        gate_up = g.linear(h, np.concatenate([_np(mlp.gate_proj.weight), _np(mlp.up_proj.weight)]),
                           f"{p}.mlp.gate_up_proj")
        gate, up = g.op("Split", [gate_up, split_name], 2, f"{p}.mlp.split", axis=-1)
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], 1, f"{p}.mlp.sigmoid")[0]], 1, f"{p}.mlp.silu")[0]
        act = g.op("Mul", [silu, up], 1, f"{p}.mlp.act")[0]
        pending = g.linear(act, _np(mlp.down_proj.weight), f"{p}.mlp.down_proj")

    # Only the last positions' logits are used: cut the sequence before the final norm.
    start = g.op("Neg", ["num_logits"], 1, "last.start")[0]
    last = [start, w.add("last.end", np.array([2 ** 62], np.int64)), w.add("last.axis", np.array([1], np.int64))]
    pending = g.op("Slice", [pending] + last, 1, "last_token.mlp")[0]
    residual = g.op("Slice", [residual] + last, 1, "last_token.residual")[0]
    h, _ = normed(g, pending, residual, _np(model.model.norm.weight), eps, "model.norm")
    g.linear(h, _np(model.lm_head.weight), "lm_head", out="logits")
    w.close()
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


def qk_normed(g: GraphBuilder, qkv: str, att, nh: int, kvh: int, d: int, eps: float, name: str) -> list[str]:
    """Qwen3's per-head RMSNorm of q and k, applied before GroupQueryAttention's rotary embedding."""
    w = g.w
    sizes = w.add(f"{name}.qkv_split", np.array([nh * d, kvh * d, kvh * d], np.int64))
    q, k, v = g.op("Split", [qkv, sizes], 3, f"{name}.qkv_split", axis=-1)
    heads = w.add(f"{name}.per_head", np.array([0, 0, -1, d], np.int64))
    flat = w.add(f"{name}.flat", np.array([0, 0, -1], np.int64))
    out = []
    for x, norm, tag in ((q, att.q_norm, "q_norm"), (k, att.k_norm, "k_norm")):
        x = g.op("Reshape", [x, heads], 1, f"{name}.{tag}/heads")[0]
        x = g.op("SimplifiedLayerNormalization", [x, w.add(f"{name}.{tag}.weight", _np(norm.weight))], 1,
                 f"{name}.{tag}", axis=-1, epsilon=eps)[0]
        out.append(g.op("Reshape", [x, flat], 1, f"{name}.{tag}/flat")[0])
    return out + [v]


def make_model(g: GraphBuilder, a) -> onnx.ModelProto:
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
