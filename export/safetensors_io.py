"""Read and write safetensors checkpoints one tensor (or a few rows of one) at a time.

The format is an 8-byte header length, a JSON header naming each tensor's dtype, shape and byte range,
then the raw little-endian data. Reading with plain `readinto` calls (no mmap) keeps the process's RSS at
the rows asked for: mapped file pages would count as resident as soon as they are touched. bfloat16 has
no numpy dtype, so it is widened to float32 here (its bits are the upper half of a float32).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
                "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                "BOOL": np.bool_}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
INDEX_NAME = "model.safetensors.index.json"


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounding to nearest even (as torch's conversion does)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    nan = np.isnan(values)
    if nan.any():
        rounded = np.where(nan, 0x7FC0, rounded)
    return rounded.astype(np.uint16)


@dataclass(frozen=True)
class TensorInfo:
    path: Path
    dtype: str   # the safetensors name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in path

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(NUMPY_DTYPES[self.dtype]).itemsize


def read_header(path: Path) -> dict[str, TensorInfo]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 * 2 ** 20:
            raise ValueError(f"{path}: not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    base = 8 + size
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in NUMPY_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        out[name] = TensorInfo(path, entry["dtype"], tuple(entry["shape"]), base + entry["data_offsets"][0])
    return out


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory: those its index names when there is one (a sharded
    hub download), else every *.safetensors in it."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    return files


class Checkpoint:
    """Lazy access to every tensor of a (possibly sharded) checkpoint; nothing is read until asked."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        self.tensors: dict[str, TensorInfo] = {}
        for path in checkpoint_files(self.dir):
            self.tensors.update(read_header(path))

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"weight {name} missing from {self.dir}") from None

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a tensor (its first axis), float tensors widened to float32."""
        t = self.info(name)
        n = t.shape[0] if t.shape else 1
        stop = n if stop is None else min(stop, n)
        raw = np.empty((stop - start,) + t.shape[1:], NUMPY_DTYPES[t.dtype])
        with open(t.path, "rb", buffering=0) as f:
            f.seek(t.offset + start * t.row_bytes)
            view = memoryview(raw.reshape(-1).view(np.uint8))
            got = 0
            while got < raw.nbytes:
                n_read = f.readinto(view[got:])
                if not n_read:
                    raise ValueError(f"{t.path}: truncated data for {name}")
                got += n_read
        if not t.shape:
            raw = raw.reshape(())
        if t.dtype == "BF16":
            return bf16_to_f32(raw)
        if t.dtype in FLOAT_DTYPES:
            return raw.astype(np.float32, copy=False)
        return raw

    def read(self, name: str) -> np.ndarray:
        return self.rows(name)


class SafetensorsWriter:
    """Write one safetensors file tensor by tensor: every name, dtype and shape is declared up front (the
    header comes first), then each tensor's data is appended in that order."""

    def __init__(self, path: str | Path, specs: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        self.order: list[tuple[str, str, int]] = []
        for name, dtype, shape in specs:
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(NUMPY_DTYPES[dtype]).itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.order.append((name, dtype, size))
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as the reference writer does
        self.file = open(self.path, "wb")
        self.file.write(struct.pack("<Q", len(text)) + text)
        self.next = 0
        self.written = 0

    def write(self, name: str, data: np.ndarray) -> None:
        """Append (part of) the next tensor; `data` is already in its declared dtype (BF16 as uint16 bits)."""
        want, dtype, size = self.order[self.next]
        if name != want:
            raise ValueError(f"expected tensor {want}, got {name}")
        if data.dtype != np.dtype(NUMPY_DTYPES[dtype]):
            raise ValueError(f"{name}: data is {data.dtype}, declared {dtype}")
        self.file.write(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
        self.written += data.nbytes
        if self.written > size:
            raise ValueError(f"{name}: more data than its shape holds")
        if self.written == size:
            self.next, self.written = self.next + 1, 0

    def close(self) -> None:
        if self.next != len(self.order):
            self.file.close()
            raise ValueError(f"{self.path}: {len(self.order) - self.next} tensors were never written")
        self.file.close()
