"""How near the memory's limit a decode step runs: the read bandwidth two threads get here (a numpy read
probe) and the bytes of weights a model reads per generated token.

One decode step reads every weight once, except the embedding table, of which it reads one row; so the
bytes per token are the model's weights without that table, and decode tok/s x those bytes is the
bandwidth a format uses. bench.py measures the probe in the same run as the engines and reports the share.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np


def read_bandwidth_gbs(threads: int = 2, mib: int = 512, repeats: int = 5) -> float:
    """The best of `repeats` reads of a `mib` MiB array split over `threads` threads, in GB/s. A bitwise-or
    reduction is the cheapest numpy pass over 64-bit words (float sums spend more time adding than
    reading) and releases the GIL, so the threads read in parallel; the array is far larger than any cache."""
    data = np.ones(mib * 2 ** 20 // 8, np.uint64)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.bitwise_or.reduce, args=(part,)) for part in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def onnx_decode_bytes(path: Path) -> int:
    """Bytes of the initializers a decode step of an ONNX model reads: all but the tables a Gather (or
    GatherBlockQuantized, with its scales and zero points) takes one row from."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    gathered = {name for n in model.graph.node if n.op_type in ("Gather", "GatherBlockQuantized")
                for i, name in enumerate(n.input) if i != 1}
    return sum(size for name, size in initializer_bytes(model).items() if name not in gathered)


def initializer_bytes(model) -> dict[str, int]:
    """The stored bytes of each initializer of an onnx.ModelProto loaded without its external data."""
    from onnx.external_data_helper import uses_external_data

    return {t.name: int(next(e.value for e in t.external_data if e.key == "length")) if uses_external_data(t)
            else len(t.SerializeToString()) for t in model.graph.initializer}


def gguf_decode_bytes(path: Path) -> int:
    """Bytes of the tensors a decode step of a GGUF reads: all but the token table, unless the model has no
    separate output tensor and reads the whole table as its output projection."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


def decode_bytes(model: Path) -> int | None:
    """Weight bytes per decode step of an .onnx or .gguf model (None for other formats)."""
    if model.suffix == ".onnx":
        return onnx_decode_bytes(model)
    if model.suffix == ".gguf":
        return gguf_decode_bytes(model)
    return None
