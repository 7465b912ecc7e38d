"""Block-wise weight quantization of a few output channels at a time, in the layouts onnxruntime's
MatMulNBits and GatherBlockQuantized read, with onnxruntime's own kernels.

A MatMulNBits weight is quantized per output column in blocks along the input dimension, so any group
of columns quantizes independently of the others: the exporter and quantize_onnx.py feed one group at a
time and append the results, never holding a whole float matrix. Both produce exactly what
onnxruntime's MatMulNBitsQuantizer makes of the full matrix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Decode reads every weight and scale once per token; prefill is bound by the int8 block dot products.
# int4 blocks of 128 (the output projection at int8) kept the perplexity within 1 % of blocks of 64 and
# halve a prefill's block dot products; blocks of 256 would pad the 896 inputs and lose 5 % perplexity.
# int8 stays at blocks of 32, which costs it under 0.1 % (bench/README.md has the measurements).
DEFAULT_BLOCK = {4: 128, 8: 32}
# The output projection is 136 M of the model's 494 M weights, the largest single read of a decode step.
# At int4 in blocks of 32 it reads 87 MB instead of int8's 141 MB and stays more faithful to the float model
# than llama.cpp Q4_0 (whose output tensor is Q8_0) on every measure of bench/quality.py; at int4 in
# blocks of 128 its perplexity fell behind Q4_0's.
DEFAULT_HEAD_BITS = {4: 4, 8: 8}
DEFAULT_HEAD_BLOCK = {4: 32}
DEFAULT_ACCURACY_LEVEL = 4
# MatMuls kept at int8 in an int4 model, as llama.cpp's k-quant mixes keep their most sensitive tensors at
# more bits. Attention (qkv and o projections, 12 % of the layer weights) at int8 halved the KL divergence
# from the float model (0.098 -> 0.047 at block 128, lower than llama.cpp Q4_0's 0.091) and lifted greedy
# agreement above Q4_0's, for 7 % more bytes read per token; the FFN projections at int8 cost far more bytes.
DEFAULT_INT8_NODES = {4: "self_attn", 8: None}


@dataclass(frozen=True)
class QuantSpec:
    """How weights are quantized; `describe()` is the model's `quantization` metadata."""
    bits: int
    block_size: int
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    symmetric: bool = False
    embedding: bool = True        # the token table as GatherBlockQuantized (4 bits only)
    lm_head_bits: int | None = None
    lm_head_block_size: int | None = None
    int8_nodes: str | None = None  # a regular expression: MatMul nodes whose name it matches stay at 8 bits
    method: str = "rtn"           # how a MatMul weight's blocks are rounded: quantize_columns()

    @property
    def head_bits(self) -> int:
        return self.lm_head_bits or DEFAULT_HEAD_BITS[self.bits]

    @property
    def head_block_size(self) -> int:
        default = DEFAULT_HEAD_BLOCK.get(self.head_bits) if self.lm_head_bits is None else None
        return self.lm_head_block_size or default or self.block_size

    def node_bits(self, name: str, head: bool) -> int:
        """The weight bits of one MatMul node."""
        if head:
            return self.head_bits
        if self.int8_nodes and re.search(self.int8_nodes, name):
            return 8
        return self.bits

    def describe(self) -> str:
        return (f"int{self.bits} block {self.block_size} {'symmetric' if self.symmetric else 'asymmetric'} "
                f"accuracy_level {self.accuracy_level}; lm_head int{self.head_bits}"
                + (f" block {self.head_block_size}" if self.head_block_size != self.block_size else "")
                + f"; embedding "
                f"{'int4 GatherBlockQuantized' if self.embedding else 'float'}"
                + (f"; int8 nodes /{self.int8_nodes}/" if self.int8_nodes else "")
                + (f"; {self.method}" if self.method != "rtn" else ""))


@dataclass(frozen=True)
class NBitsLayout:
    """Shapes of MatMulNBits' three weight inputs for a [K, N] weight."""
    k: int
    n: int
    bits: int
    block_size: int

    @property
    def k_blocks(self) -> int:
        return -(-self.k // self.block_size)

    @property
    def blob(self) -> int:
        return self.block_size * self.bits // 8

    @property
    def zp_per_column(self) -> int:
        per_byte = 8 // self.bits
        return -(-self.k_blocks // per_byte)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"packed": (self.n, self.k_blocks, self.blob), "scales": (self.n, self.k_blocks),
                "zero_points": (self.n, self.zp_per_column)}


def quantize_columns(w_kn: np.ndarray, bits: int, block_size: int, symmetric: bool, method: str = "rtn"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Some columns of a MatMul weight, [K, n] float32 or float16, -> (packed [n, k_blocks, blob] uint8,
    scales [n, k_blocks] in the weight's dtype, zero points [n, ceil(k_blocks * bits / 8)] uint8).
    method "rtn" rounds each block's range to nearest; "k_quant" searches each block's scale and minimum
    for the least importance-weighted error, as llama.cpp's k-quants do (onnxruntime's implementation)."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    if method == "k_quant":
        return _k_quant_columns(w_kn, bits, block_size)
    k, n = w_kn.shape
    layout = NBitsLayout(k, n, bits, block_size)
    pad = layout.k_blocks * block_size - k
    if pad:
        w_kn = np.pad(w_kn, ((0, pad), (0, 0)))
    w_kn = np.ascontiguousarray(w_kn)
    shapes = layout.shapes()
    packed = np.zeros(shapes["packed"], np.uint8)
    scales = np.zeros(shapes["scales"], w_kn.dtype)
    zero_points = np.zeros(shapes["zero_points"], np.uint8)
    kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    # All-zero blocks (e.g. unused vocabulary rows) give a 0 scale; the kernel maps them to 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel(packed, w_kn, scales, zero_points, block_size, n, k, symmetric)
    return packed, scales, zero_points


def _k_quant_columns(w_kn: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from onnxruntime.quantization.neural_compressor.weight_only import quant_tensor_k_quant_cpu

    k, n = w_kn.shape
    layout = NBitsLayout(k, n, bits, block_size)
    rows = np.pad(np.asarray(w_kn, np.float32).T, ((0, 0), (0, layout.k_blocks * block_size - k)))
    with np.errstate(divide="ignore", invalid="ignore"):
        q, scale, zp = quant_tensor_k_quant_cpu(rows, bits, block_size)
    q = q.astype(np.uint8).reshape(n, layout.k_blocks, block_size)
    zp = zp.reshape(n, layout.k_blocks)
    if bits == 4:  # blocks are even, and each column's zero points are padded to whole bytes
        q = _pack_nibbles(q).reshape(layout.shapes()["packed"])
        zp = np.pad(zp, ((0, 0), (0, layout.zp_per_column * 2 - layout.k_blocks)))
        zp = _pack_nibbles(zp).reshape(layout.shapes()["zero_points"])
    return q, scale.reshape(n, layout.k_blocks).astype(w_kn.dtype), zp.astype(np.uint8)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, 0)
    return ((flat[::2] & 0xF) | ((flat[1::2] & 0xF) << 4)).astype(np.uint8)


def quantize_gather_rows(rows: np.ndarray, block_size: int, symmetric: bool
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows of an embedding table [n, hidden] float32 -> int4 in GatherBlockQuantized's layout, blocks
    along hidden: (packed nibbles, scales [n, hidden / block], packed zero points or None). An even number
    of rows (or an even hidden size) keeps the nibble packing of consecutive calls aligned. The rounding
    rules are those of onnxruntime's quantizer (its numpy path for Gather)."""
    n, hidden = rows.shape
    k_blocks = -(-hidden // block_size)
    q = np.empty((n, hidden), np.int8 if symmetric else np.uint8)
    scales = np.empty((n, k_blocks), rows.dtype)
    zp = None if symmetric else np.empty((n, k_blocks), np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(k_blocks):
            block = rows[:, j * block_size:(j + 1) * block_size]
            if symmetric:
                lo, hi = block.min(axis=1, keepdims=True), block.max(axis=1, keepdims=True)
                scale = np.where(np.abs(hi) > np.abs(lo), hi, lo) / -8.0
                q[:, j * block_size:(j + 1) * block_size] = np.where(scale == 0, 0, block / scale).round().clip(-8, 7)
            else:
                lo = np.minimum(block.min(axis=1, keepdims=True), 0)
                hi = np.maximum(block.max(axis=1, keepdims=True), 0)
                scale = (hi - lo) / 15.0
                z = np.where(scale == 0, 8, -lo / scale).round().clip(0, 15).astype(np.uint8)
                q[:, j * block_size:(j + 1) * block_size] = (
                    np.where(scale == 0, 8, block / scale + z).round().clip(0, 15))
                zp[:, j] = z[:, 0]
            scales[:, j] = scale[:, 0]
    return _pack_nibbles(q), scales, None if zp is None else _pack_nibbles(zp)
