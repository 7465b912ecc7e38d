"""onnxruntime sessions whose graph optimizations are done once and saved beside the model.

The optimized graph goes to <name>.opt.onnx (weights in <name>.opt.onnx.data when the model keeps
external data). It is reused while it is newer than the model, rewritten when stale, and a file of
that name that our exporter did not produce is never touched.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from core.contract import PRODUCER
from core.errors import UserError

OPT_SUFFIX = ".opt.onnx"


def optimized_path(model: Path) -> Path:
    return model.with_name(model.name[:-len(".onnx")] + OPT_SUFFIX)


def _sources(model: Path) -> list[Path]:
    return [p for p in (model, model.with_name(model.name + ".data")) if p.exists()]


def _is_ours(path: Path) -> bool:
    from core.contract import read_meta

    try:
        return read_meta(path).get("producer") == PRODUCER
    except UserError:  # unreadable: not a file we wrote, leave it alone
        return False


def is_fresh(model: Path, opt: Path) -> bool:
    if not opt.is_file() or not _is_ours(opt):
        return False
    newest_source = max(p.stat().st_mtime for p in _sources(model))
    return all(p.stat().st_mtime >= newest_source for p in _sources(opt))


def _write_optimized(ort, model: Path, opt: Path, threads: int) -> bool:
    """Run the portable (extended) optimizations once and save them; False when that is not possible
    (read-only directory, a foreign file in the way). Written in a private directory and moved into
    place, so a concurrent reader never sees half a file."""
    if opt.exists() and not _is_ours(opt):
        return False
    external = (model.with_name(model.name + ".data")).exists()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".opt-", dir=model.parent))
    except OSError:
        return False
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # Extended, not all: the layout-specific level-3 rewrites are redone on load, per machine.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(tmp / opt.name)
        if external:
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                          opt.name + ".data")
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                          "1024")
        _load(ort, model, opts)
        for f in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".onnx"):  # data before the graph
            os.replace(f, opt.parent / f.name)
        return True
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_session(model_path: str | Path, threads: int, save_optimized: bool = True, shared_threads: bool = False):
    """An InferenceSession on the CPU with every optimization; the saved optimized graph when possible.

    shared_threads: the session takes turns with another on the same cores (a draft model and its
    target). Its threads then stop spinning as soon as a run returns: spinning on, they take the cores
    the other session needs (measured on 2 cores: a draft step 12 -> 32 ms)."""
    import onnxruntime as ort

    model = Path(model_path)
    load = model
    if save_optimized and not model.name.endswith(OPT_SUFFIX):
        opt = optimized_path(model)
        if is_fresh(model, opt) or _write_optimized(ort, model, opt, threads):
            load = opt
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Hand matmul work to the threads in the smallest blocks: with few cores, a decode step's
    # one-row matmuls then finish together (int4 decode measured ~5 % faster on 2 cores).
    opts.add_session_config_entry("session.intra_op.dynamic_block_base", "1")
    if shared_threads:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return _load(ort, load, opts)


def _load(ort, path: Path, opts):
    """An InferenceSession; a model file onnxruntime rejects is the user's input problem: one line."""
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: onnxruntime cannot load it ({first})") from None


def bind(binding, name: str, arr: np.ndarray, output: bool = False) -> None:
    """Bind by address: onnxruntime reads and writes these numpy buffers in place, no copies."""
    (binding.bind_output if output else binding.bind_input)(name, "cpu", 0, arr.dtype, list(arr.shape),
                                                             arr.ctypes.data)
