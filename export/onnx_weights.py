"""Write an ONNX graph's weights straight into its `<name>.onnx.data` file, a few rows at a time.

Both exporters (npu_graph.py, cpu_graph.py) build their nodes with GraphBuilder and their weights with
WeightFile: every matrix is read from the checkpoint in row chunks of at most CHUNK_BYTES (as float32),
cast or quantized, written at its place in the data file, and dropped. The process never holds more
than one chunk of weights, whatever the model's size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.block_quant import NBitsLayout, QuantSpec, quantize_columns, quantize_gather_rows
from export.safetensors_io import Checkpoint

MS = "com.microsoft"
# float32 bytes of one chunk of rows; the cast, transposed and quantized copies of a chunk come on top.
CHUNK_BYTES = 64 * 2 ** 20
INLINE_BYTES = 1024  # smaller tensors (shapes, scalars) stay inside the graph, readable by eye


@dataclass(frozen=True)
class Matrix:
    """A weight in torch's [out, in] layout: checkpoint tensors stacked along the output axis (one, or
    q/k/v and gate/up packed together)."""
    ckpt: Checkpoint
    names: tuple[str, ...]

    dtype = np.dtype(np.float32)  # what chunks() yields, whatever the checkpoint stores

    @property
    def shape(self) -> tuple[int, int]:
        shapes = [self.ckpt.shape(n) for n in self.names]
        return sum(s[0] for s in shapes), shapes[0][1]

    def chunks(self, multiple: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """(first output row, float32 rows) pieces covering the matrix in order; each piece's row count
        is a multiple of `multiple` except at the end of a tensor."""
        start = 0
        for name in self.names:
            rows, cols = self.ckpt.shape(name)
            step = max(multiple, CHUNK_BYTES // (4 * cols) // multiple * multiple)
            for r in range(0, rows, step):
                yield start + r, self.ckpt.rows(name, r, r + step)
            start += rows


def transposed(a: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """a.T as a new C-contiguous array (cast to dtype), copied in bands of 64 rows: measured 3x faster
    than one strided copy of a 64 MB chunk, which misses the cache on every element."""
    out = np.empty((a.shape[1], a.shape[0]), dtype or a.dtype)
    for i in range(0, a.shape[0], 64):
        out[:, i:i + 64] = a[i:i + 64].T
    return out


def _pread(fd: int, offset: int, out: np.ndarray) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8))
    while view.nbytes:
        n = os.preadv(fd, [view], offset)
        if not n:
            raise ValueError("the data file ends before the tensor does")
        view, offset = view[n:], offset + n


class StoredMatrix:
    """A 2-D float initializer of a saved graph, read from its external data file in bands: the same
    interface as Matrix, in torch's [out, in] view. A MatMul weight is stored [in, out], so its bands
    are columns, read one row segment at a time (no mmap: mapped pages would count in the RSS)."""

    def __init__(self, tensor: TensorProto, base_dir: Path, stored_transposed: bool):
        self.tensor = tensor
        self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        self.transposed = stored_transposed
        rows, cols = tensor.dims
        self.shape = (cols, rows) if stored_transposed else (rows, cols)
        ext = {e.key: e.value for e in tensor.external_data}
        self.inline = None if tensor.data_location == TensorProto.EXTERNAL else numpy_helper.to_array(tensor)
        self.path = base_dir / ext.get("location", "")
        self.offset = int(ext.get("offset", 0))

    def chunks(self, multiple: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        out_rows, in_cols = self.shape
        step = max(multiple, CHUNK_BYTES // (4 * in_cols) // multiple * multiple)
        if self.inline is not None:
            full = self.inline.T if self.transposed else self.inline
            for r in range(0, out_rows, step):
                yield r, np.ascontiguousarray(full[r:r + step])
            return
        item = self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for r in range(0, out_rows, step):
                n = min(step, out_rows - r)
                if not self.transposed:
                    band = np.empty((n, in_cols), self.dtype)
                    _pread(fd, self.offset + r * in_cols * item, band)
                    yield r, band
                    continue
                band = np.empty((in_cols, n), self.dtype)
                for k in range(in_cols):
                    _pread(fd, self.offset + (k * out_rows + r) * item, band[k])
                yield r, transposed(band)
        finally:
            os.close(fd)


class WeightFile:
    """Initializers written to the .data sidecar as they are made; the graph keeps only their names,
    offsets and lengths."""

    def __init__(self, data_path: Path):
        self.path = data_path
        self.fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.end = 0
        self.tensors: list[TensorProto] = []

    def _external(self, name: str, data_type: int, dims: tuple[int, ...], nbytes: int) -> int:
        """Declare a tensor of nbytes at the end of the file; returns its offset."""
        offset = self.end
        t = TensorProto(name=name, data_type=data_type, dims=dims, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", offset), ("length", nbytes)):
            t.external_data.add(key=key, value=str(value))
        self.tensors.append(t)
        self.end += nbytes
        return offset

    def _write(self, offset: int, array: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        while data.nbytes:
            n = os.pwrite(self.fd, data, offset)
            data, offset = data[n:], offset + n

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        if array.nbytes < INLINE_BYTES:
            self.tensors.append(TensorProto(name=name, data_type=data_type, dims=array.shape,
                                            raw_data=array.tobytes()))
        else:
            self._write(self._external(name, data_type, array.shape, array.nbytes), array)
        return name

    def add_copy(self, tensor: TensorProto, base_dir: Path) -> str:
        """An initializer of a saved graph, as it is: inline ones stay inline, external bytes are copied
        in pieces to this file."""
        if tensor.data_location != TensorProto.EXTERNAL:
            self.tensors.append(tensor)
            return tensor.name
        ext = {e.key: e.value for e in tensor.external_data}
        path, offset = base_dir / ext["location"], int(ext.get("offset", 0))
        length = int(ext["length"]) if "length" in ext else path.stat().st_size - offset
        dst = self._external(tensor.name, tensor.data_type, tuple(tensor.dims), length)
        fd = os.open(path, os.O_RDONLY)
        try:
            for start in range(0, length, CHUNK_BYTES):
                piece = np.empty(min(CHUNK_BYTES, length - start), np.uint8)
                _pread(fd, offset + start, piece)
                self._write(dst + start, piece)
        finally:
            os.close(fd)
        return tensor.name

    def add_rows(self, name: str, m: Matrix, dtype: np.dtype) -> str:
        """The matrix as it is ([out, in], e.g. an embedding table), cast to dtype."""
        rows, cols = m.shape
        itemsize = np.dtype(dtype).itemsize
        offset = self._external(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), (rows, cols),
                                rows * cols * itemsize)
        for r, chunk in m.chunks():
            self._write(offset + r * cols * itemsize, chunk.astype(dtype))
        return name

    def add_transposed(self, name: str, m: Matrix, dtype: np.dtype) -> str:
        """The matrix as MatMul's B ([in, out]), cast to dtype. Each chunk of output rows becomes a band
        of columns, written row by row at its place."""
        rows, cols = m.shape
        itemsize = np.dtype(dtype).itemsize
        offset = self._external(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), (cols, rows),
                                rows * cols * itemsize)
        for r, chunk in m.chunks():
            band = transposed(chunk, dtype)  # [in, n]
            if band.shape[1] == rows:
                self._write(offset, band)
                continue
            for i in range(cols):
                self._write(offset + (i * rows + r) * itemsize, band[i])
        return name

    def add_nbits(self, name: str, m: Matrix | StoredMatrix, bits: int, block_size: int, symmetric: bool,
                  method: str = "rtn") -> list[str]:
        """MatMulNBits' B, scales and zero points (names as onnxruntime's quantizer gives them) for the
        matrix; its [out, in] rows are MatMulNBits' columns, so each chunk is quantized on its own."""
        n, k = m.shape
        layout = NBitsLayout(k, n, bits, block_size)
        shapes = layout.shapes()
        names = [f"{name}_Q{bits}", f"{name}_scales", f"{name}_zero_points"]
        if symmetric:
            names.pop()
        scale_type = helper.np_dtype_to_tensor_dtype(m.dtype)
        types = [TensorProto.UINT8, scale_type, TensorProto.UINT8]
        per_row = [layout.k_blocks * layout.blob, layout.k_blocks * m.dtype.itemsize, layout.zp_per_column]
        offsets = [self._external(tn, tt, shapes[key], n * size)
                   for tn, tt, key, size in zip(names, types, ("packed", "scales", "zero_points"), per_row)]
        for r, chunk in m.chunks():
            outputs = quantize_columns(transposed(chunk), bits, block_size, symmetric, method)
            for offset, size, out in zip(offsets, per_row, outputs):
                self._write(offset + r * size, out)
        return names

    def add_gather_int4(self, name: str, m: Matrix | StoredMatrix, block_size: int, symmetric: bool) -> list[str]:
        """GatherBlockQuantized's data, scales and zero points for an embedding table, blocks along the
        hidden axis (names as onnxruntime's quantizer gives them)."""
        rows, cols = m.shape
        k_blocks = -(-cols // block_size)
        qtype = TensorProto.INT4 if symmetric else TensorProto.UINT4
        data_off = self._external(f"{name}_Q4", qtype, (rows, cols), (rows * cols + 1) // 2)
        item = m.dtype.itemsize
        scale_off = self._external(f"{name}_scales", helper.np_dtype_to_tensor_dtype(m.dtype), (rows, k_blocks),
                                   rows * k_blocks * item)
        zp_off = None if symmetric else self._external(f"{name}_zero_points", qtype, (rows, k_blocks),
                                                       (rows * k_blocks + 1) // 2)
        for r, chunk in m.chunks(multiple=2):
            packed, scales, zps = quantize_gather_rows(chunk, block_size, symmetric)
            self._write(data_off + r * cols // 2, packed)
            self._write(scale_off + r * k_blocks * item, scales)
            if zps is not None:
                self._write(zp_off + r * k_blocks // 2, zps)
        return [f"{name}_Q4", f"{name}_scales"] + ([] if symmetric else [f"{name}_zero_points"])

    def close(self) -> None:
        os.close(self.fd)


class GraphBuilder:
    def __init__(self, weights: WeightFile, dtype: np.dtype = np.float32, quant: QuantSpec | None = None):
        self.w = weights
        self.dtype = np.dtype(dtype)
        self.quant = quant
        self.nodes: list[onnx.NodeProto] = []
        self.consts: dict[tuple, str] = {}

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | int, name: str,
           domain: str = "", **attrs) -> list[str]:
        if isinstance(outputs, int):
            outputs = [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def const(self, value, dtype=np.int64) -> str:
        """A small constant initializer, shared by every node that uses the same value."""
        array = np.array(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.consts:
            self.consts[key] = self.w.add(f"const_{len(self.consts)}", array)
        return self.consts[key]

    def linear(self, x: str, m: Matrix, name: str, bias: np.ndarray | None = None, out: str | None = None,
               bits: int | None = None, block_size: int | None = None) -> str:
        """x @ m.T (+ bias): MatMul in the graph's dtype, or MatMulNBits when `bits` is given."""
        # Outputs are named after the layer, not the op, so quantizing never renames a tensor.
        target = [out] if out and bias is None else [f"{name}/out0"]
        if bits:
            q = self.quant
            n, k = m.shape
            block = block_size or q.block_size
            inputs = self.w.add_nbits(f"{name}.weight", m, bits, block, q.symmetric)
            attrs = dict(K=k, N=n, bits=bits, block_size=block)
            if q.accuracy_level:
                attrs["accuracy_level"] = q.accuracy_level
            y = self.op("MatMulNBits", [x] + inputs, target, f"{name}_Q{bits}", domain=MS, **attrs)[0]
        else:
            y = self.op("MatMul", [x, self.w.add_transposed(f"{name}.weight", m, self.dtype)], target, name)[0]
        if bias is not None:
            y = self.op("Add", [y, self.w.add(f"{name}.bias", bias.astype(self.dtype))], [out] if out else 1,
                        f"{name}/bias")[0]
        return y
