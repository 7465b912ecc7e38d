"""The emulated `.om` container shared by the stand-in `atc` and the stand-in `acl` package.

A real .om is an opaque compiled binary. Ours holds what the emulator needs to behave like one: the
ONNX graph (and its external weight file, so the .om is self-contained), the input shapes atc was
given, the compiled profiles with each profile's output shapes, the chip it was built for and the
precision flags. Layout: MAGIC, an 8-byte little-endian header length, a JSON header, then the
blobs the header lists by offset (relative to the end of the header).
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"EMUOM\x00\x01\x00"
# Tensor element types the emulator maps between ONNX, numpy and aclDataType.
ONNX_TO_NUMPY = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}
NUMPY_TO_ACL = {"float32": 0, "float16": 1, "int32": 3, "int64": 9, "bool": 12}
MBATCH_INPUT = "ascend_mbatch_shape_data"


def write_om(out: Path, header: dict, blobs: list[tuple[str, Path]]) -> None:
    """Stream the listed files into one container (weights can be GBs: never held in memory twice)."""
    entries, offset = [], 0
    for name, path in blobs:
        size = path.stat().st_size
        entries.append({"name": name, "offset": offset, "size": size})
        offset += size
    head = json.dumps({**header, "blobs": entries}).encode()
    with open(out, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(head)) + head)
        for _, path in blobs:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 16 * 1024 * 1024)


def read_header(data: memoryview | bytes) -> tuple[dict, int]:
    """(header, offset where blob 0 starts); ValueError when the bytes are not an emulated .om."""
    if bytes(data[:8]) != MAGIC:
        raise ValueError("not an .om written by the emulated atc (bad magic)")
    (length,) = struct.unpack("<Q", bytes(data[8:16]))
    if 16 + length > len(data):
        raise ValueError("truncated .om header")
    return json.loads(bytes(data[16:16 + length])), 16 + length


def extract_blobs(data: memoryview, header: dict, start: int, folder: Path) -> Path:
    """Write the blobs back as files under `folder`; returns the path of the ONNX graph."""
    for entry in header["blobs"]:
        begin = start + entry["offset"]
        end = begin + entry["size"]
        if end > len(data):
            raise ValueError(f"truncated .om: blob {entry['name']} ends past the data")
        with open(folder / entry["name"], "wb") as f:
            f.write(data[begin:end])
    return folder / header["blobs"][0]["name"]


def read_header_file(path: Path) -> dict:
    with open(path, "rb") as f:
        return _header_from_stream(f)


def _header_from_stream(f: BinaryIO) -> dict:
    head = f.read(16)
    if head[:8] != MAGIC or len(head) < 16:
        raise ValueError("not an .om written by the emulated atc (bad magic)")
    (length,) = struct.unpack("<Q", head[8:16])
    return json.loads(f.read(length))


def static_shapes(inputs: list[dict], profile: list[int]) -> list[list[int]]:
    """Each input's concrete shape for one profile: the -1 dims take the profile values in order;
    a shape range [lo, hi] runs at its lower bound (the emulator does not set tensor descs)."""
    values = iter(profile)
    shapes = []
    for spec in inputs:
        dims = []
        for d in spec["shape"]:
            if d == -1:
                dims.append(next(values))
            elif isinstance(d, list):
                dims.append(d[0])
            else:
                dims.append(d)
        shapes.append(dims)
    return shapes


def max_dims(inputs: list[dict], profiles: list[list[int]]) -> list[list[int]]:
    """The largest shape each input takes over all profiles (what get_input_size_by_index reports)."""
    if not profiles:
        profiles = [[]]
    per_profile = [static_shapes(inputs, p) for p in profiles]
    out = []
    for i, spec in enumerate(inputs):
        dims = [max(shapes[i][k] for shapes in per_profile) for k in range(len(spec["shape"]))]
        # ranges are sized at their upper bound, as a caller must allocate for the largest batch
        out.append([d[1] if isinstance(d, list) else m for d, m in zip(spec["shape"], dims)])
    return out
