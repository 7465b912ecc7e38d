"""The `--target npu` graph, written node by node from the safetensors weights (no tracing, no torch).

It computes what backends/qwen_torch.py's forward pass computes, with the ops torch's exporter made of it
(plain ONNX, opset 17, all on CANN's documented op list; the causal mask from comparisons, no Trilu;
Pow and ReduceMean in the RMSNorm, which ops_info.json keeps in float32 on the NPU). The contract is in
core/contract.py:
    input_ids [b, s] int64, attention_mask [b, kv+s] int64, position_ids [b, s] int64,
    past_key_values [b, kv, layers*2*kv_heads, head_dim]
    -> logits [b, s, vocab], out_key_values [b, s, layers*2*kv_heads, head_dim]
In a float16 graph the RMSNorm variance, the rotary angles and the softmax stay in float32 (Casts around
them), as in the reference model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from core.contract import NPU_INPUTS, NPU_OUTPUTS, ModelShape
from export.onnx_weights import GraphBuilder, Matrix, WeightFile
from export.safetensors_io import Checkpoint

OPSET, IR_VERSION = 17, 8
F32 = TensorProto.FLOAT


def rope_inv_freq(a: ModelShape) -> np.ndarray:
    """The rotary frequencies, float32 [head_dim / 2], computed as the reference model does."""
    exponents = np.arange(0, a.head_dim, 2, dtype=np.float32) / np.float32(a.head_dim)
    return (np.float32(1.0) / np.power(np.float32(a.rope_theta), exponents)).astype(np.float32)


def head_weight(ckpt: Checkpoint, args: ModelShape) -> str:
    """The output projection's checkpoint name: the embedding table when the head is tied."""
    if args.tie_word_embeddings or "lm_head.weight" not in ckpt:
        return "model.embed_tokens.weight"
    return "lm_head.weight"


def required_weights(args: ModelShape) -> list[str]:
    """Every checkpoint tensor the graphs read (the output projection aside: it may be tied)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(args.num_hidden_layers):
        p = f"model.layers.{i}"
        names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
        names += [f"{p}.self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [f"{p}.mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        if args.qkv_bias:
            names += [f"{p}.self_attn.{x}_proj.bias" for x in "qkv"]
        if args.qk_norm:
            names += [f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"]
    return names


def check_weights(ckpt: Checkpoint, args: ModelShape) -> None:
    missing = [n for n in required_weights(args) if n not in ckpt]
    if missing:
        raise ValueError(f"weights missing from {ckpt.dir}: {', '.join(missing[:5])}")


class NpuGraph:
    def __init__(self, ckpt: Checkpoint, args: ModelShape, dtype: np.dtype, weights: WeightFile):
        self.ckpt, self.a = ckpt, args
        self.g = GraphBuilder(weights, dtype)
        self.dtype = np.dtype(dtype)
        self.onnx_dtype = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.half = self.dtype != np.float32

    def vector(self, name: str) -> str:
        return self.g.w.add(name, self.ckpt.read(name).astype(self.dtype))

    def cast(self, x: str, to: int, name: str) -> str:
        return self.g.op("Cast", [x], 1, name, to=to)[0] if self.half else x

    def rms_norm(self, x: str, weight: str, name: str) -> str:
        g = self.g
        xf = self.cast(x, F32, f"{name}/cast_in")
        sq = g.op("Pow", [xf, g.const(2.0, np.float32)], 1, f"{name}/pow")[0]
        var = g.op("ReduceMean", [sq], 1, f"{name}/mean", axes=[-1], keepdims=1)[0]
        std = g.op("Sqrt", [g.op("Add", [var, g.const(self.a.rms_norm_eps, np.float32)], 1, f"{name}/eps")[0]],
                   1, f"{name}/sqrt")[0]
        inv = g.op("Div", [g.const(1.0, np.float32), std], 1, f"{name}/inv")[0]
        normed = self.cast(g.op("Mul", [xf, inv], 1, f"{name}/scale")[0], self.onnx_dtype, f"{name}/cast_out")
        return g.op("Mul", [self.vector(weight), normed], 1, name)[0]

    def linear(self, x: str, name: str, out: str | None = None) -> str:
        bias = None
        if self.a.qkv_bias and name.split(".")[-1] in ("q_proj", "k_proj", "v_proj"):
            bias = self.ckpt.read(f"{name}.bias")
        return self.g.linear(x, Matrix(self.ckpt, (f"{name}.weight",)), name, bias, out)

    def rotary(self) -> tuple[str, str]:
        """cos and sin of the positions' angles, [b, s, 1, head_dim], in the graph's dtype."""
        g = self.g
        pos = g.op("Unsqueeze", ["position_ids", g.const([-1])], 1, "rope/unsqueeze")[0]
        pos = g.op("Cast", [pos], 1, "rope/cast", to=F32)[0]
        inv = rope_inv_freq(self.a)
        angles = g.op("Mul", [pos, g.const(np.concatenate([inv, inv]), np.float32)], 1, "rope/angles")[0]
        angles = g.op("Unsqueeze", [angles, g.const([2])], 1, "rope/heads")[0]
        cos = self.cast(g.op("Cos", [angles], 1, "rope/cos")[0], self.onnx_dtype, "rope/cos_cast")
        sin = self.cast(g.op("Sin", [angles], 1, "rope/sin")[0], self.onnx_dtype, "rope/sin_cast")
        return cos, sin

    def causal_mask(self) -> str:
        """Additive mask [b, 1, 1, s, kv+s]: 0 where a query may attend, a large finite negative (not -inf,
        so a fully masked padding row stays finite) elsewhere."""
        g = self.g
        zero = g.const(0)
        seq = g.op("Gather", [g.op("Shape", ["input_ids"], 1, "mask/ids_shape")[0], g.const(1)], 1,
                   "mask/seq", axis=0)[0]
        total = g.op("Gather", [g.op("Shape", ["attention_mask"], 1, "mask/shape")[0], g.const(1)], 1,
                     "mask/total", axis=0)[0]
        cols = g.op("Range", [zero, total, g.const(1)], 1, "mask/cols")[0]
        rows = g.op("Range", [zero, seq, g.const(1)], 1, "mask/rows")[0]
        rows = g.op("Add", [rows, g.op("Sub", [total, seq], 1, "mask/past")[0]], 1, "mask/row_pos")[0]
        causal = g.op("LessOrEqual", [g.op("Unsqueeze", [cols, g.const([0])], 1, "mask/cols2")[0],
                                      g.op("Unsqueeze", [rows, g.const([1])], 1, "mask/rows2")[0]], 1,
                      "mask/causal")[0]
        present = g.op("Greater", [g.op("Unsqueeze", ["attention_mask", g.const([1])], 1, "mask/am")[0], zero],
                       1, "mask/present")[0]
        allowed = g.op("And", [causal, present], 1, "mask/allowed")[0]
        blocked = np.finfo(self.dtype).min / 2
        mask = g.op("Where", [allowed, g.const(0.0, self.dtype), g.const(blocked, self.dtype)], 1, "mask/where")[0]
        return g.op("Unsqueeze", [mask, g.const([1, 2])], 1, "mask")[0]

    def rotate(self, x: str, cos: str, sin: str, name: str) -> str:
        g, half = self.g, self.a.head_dim // 2
        first, second = g.op("Split", [x, g.const([half, half])], 2, f"{name}/halves", axis=-1)
        turned = g.op("Concat", [g.op("Neg", [second], 1, f"{name}/neg")[0], first], 1, f"{name}/turn", axis=-1)[0]
        straight = g.op("Mul", [x, cos], 1, f"{name}/cos")[0]
        return g.op("Add", [straight, g.op("Mul", [turned, sin], 1, f"{name}/sin")[0]], 1, name)[0]

    def attention(self, x: str, layer: int, cos: str, sin: str, mask: str) -> tuple[str, str, str]:
        g, a = self.g, self.a
        p = f"model.layers.{layer}.self_attn"
        h, kvh, d = a.num_attention_heads, a.num_key_value_heads, a.head_dim
        q = g.op("Reshape", [self.linear(x, f"{p}.q_proj"), g.const([0, 0, h, d])], 1, f"{p}/q")[0]
        k = g.op("Reshape", [self.linear(x, f"{p}.k_proj"), g.const([0, 0, kvh, d])], 1, f"{p}/k")[0]
        v = g.op("Reshape", [self.linear(x, f"{p}.v_proj"), g.const([0, 0, kvh, d])], 1, f"{p}/v")[0]
        if a.qk_norm:
            q = self.rms_norm(q, f"{p}.q_norm.weight", f"{p}.q_norm")
            k = self.rms_norm(k, f"{p}.k_norm.weight", f"{p}.k_norm")
        q, k = self.rotate(q, cos, sin, f"{p}/q_rot"), self.rotate(k, cos, sin, f"{p}/k_rot")
        base = layer * 2 * kvh
        past_k = g.op("Slice", ["past_key_values", g.const([base]), g.const([base + kvh]), g.const([2])], 1,
                      f"{p}/past_k")[0]
        past_v = g.op("Slice", ["past_key_values", g.const([base + kvh]), g.const([base + 2 * kvh]),
                                g.const([2])], 1, f"{p}/past_v")[0]
        keys = g.op("Concat", [past_k, k], 1, f"{p}/keys", axis=1)[0]
        keys = g.op("Transpose", [keys], 1, f"{p}/keys_t", perm=[0, 2, 3, 1])[0]        # [b, kvh, d, t]
        values = g.op("Concat", [past_v, v], 1, f"{p}/values", axis=1)[0]
        values = g.op("Transpose", [values], 1, f"{p}/values_t", perm=[0, 2, 1, 3])[0]  # [b, kvh, t, d]
        # Grouped-query attention without copying the cache: the query heads of one KV head sit on a
        # group axis, and MatMul broadcasts the shared keys and values over it.
        qg = g.op("Transpose", [q], 1, f"{p}/q_t", perm=[0, 2, 1, 3])[0]
        qg = g.op("Reshape", [qg, g.const([0, kvh, h // kvh, -1, d])], 1, f"{p}/q_groups")[0]
        scores = g.op("MatMul", [qg, g.op("Unsqueeze", [keys, g.const([2])], 1, f"{p}/keys_g")[0]], 1,
                      f"{p}/scores")[0]
        scores = g.op("Mul", [scores, g.const(d ** -0.5, self.dtype)], 1, f"{p}/scaled")[0]
        scores = g.op("Add", [scores, mask], 1, f"{p}/masked")[0]
        probs = g.op("Softmax", [self.cast(scores, F32, f"{p}/scores_f32")], 1, f"{p}/softmax", axis=-1)[0]
        probs = self.cast(probs, self.onnx_dtype, f"{p}/probs")
        out = g.op("MatMul", [probs, g.op("Unsqueeze", [values, g.const([2])], 1, f"{p}/values_g")[0]], 1,
                   f"{p}/context")[0]                                                       # [b, kvh, g, s, d]
        out = g.op("Reshape", [out, g.const([0, h, -1, d])], 1, f"{p}/heads")[0]
        out = g.op("Transpose", [out], 1, f"{p}/heads_t", perm=[0, 2, 1, 3])[0]
        out = g.op("Reshape", [out, g.const([0, 0, -1])], 1, f"{p}/flat")[0]
        return self.linear(out, f"{p}.o_proj"), k, v

    def mlp(self, x: str, layer: int) -> str:
        g, p = self.g, f"model.layers.{layer}.mlp"
        gate = self.linear(x, f"{p}.gate_proj")
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], 1, f"{p}/sigmoid")[0]], 1, f"{p}/silu")[0]
        act = g.op("Mul", [silu, self.linear(x, f"{p}.up_proj")], 1, f"{p}/act")[0]
        return self.linear(act, f"{p}.down_proj")

    def build(self, progress=None) -> onnx.ModelProto:
        g, a = self.g, self.a
        embed = g.w.add_rows("model.embed_tokens.weight", Matrix(self.ckpt, ("model.embed_tokens.weight",)),
                             self.dtype)
        x = g.op("Gather", [embed, "input_ids"], 1, "embed")[0]
        cos, sin = self.rotary()
        mask = self.causal_mask()
        new_kv = []
        for i in range(a.num_hidden_layers):
            p = f"model.layers.{i}"
            o, k, v = self.attention(self.rms_norm(x, f"{p}.input_layernorm.weight", f"{p}.input_layernorm"),
                                     i, cos, sin, mask)
            x = g.op("Add", [x, o], 1, f"{p}/attn_residual")[0]
            h = self.rms_norm(x, f"{p}.post_attention_layernorm.weight", f"{p}.post_attention_layernorm")
            x = g.op("Add", [x, self.mlp(h, i)], 1, f"{p}/mlp_residual")[0]
            new_kv += [k, v]
            if progress is not None:
                progress.update()
        h = self.rms_norm(x, "model.norm.weight", "model.norm")
        g.linear(h, Matrix(self.ckpt, (head_weight(self.ckpt, a),)), "lm_head", out="logits")
        g.op("Concat", new_kv, ["out_key_values"], "out_key_values", axis=2)
        if progress is not None:
            progress.update()
        return self.model()

    def model(self) -> onnx.ModelProto:
        a, t = self.a, self.onnx_dtype
        width = a.cache_width
        io = {"input_ids": (TensorProto.INT64, ["batch", "seq"]),
              "attention_mask": (TensorProto.INT64, ["batch", "kv_len_plus_seq"]),
              "position_ids": (TensorProto.INT64, ["batch", "seq"]),
              "past_key_values": (t, ["batch", "kv_len", width, a.head_dim]),
              "logits": (t, ["batch", "seq", a.vocab_size]),
              "out_key_values": (t, ["batch", "seq", width, a.head_dim])}
        inputs = [helper.make_tensor_value_info(n, *io[n]) for n in NPU_INPUTS]
        outputs = [helper.make_tensor_value_info(n, *io[n]) for n in NPU_OUTPUTS]
        graph = helper.make_graph(self.g.nodes, "qwen_npu", inputs, outputs, initializer=self.g.w.tensors)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        return model


def build(ckpt: Checkpoint, args: ModelShape, dtype: np.dtype, data_path: Path, progress=None) -> onnx.ModelProto:
    """The npu graph of a checkpoint; every weight goes to data_path as it is read."""
    weights = WeightFile(data_path)
    try:
        return NpuGraph(ckpt, args, dtype, weights).build(progress)
    finally:
        weights.close()
