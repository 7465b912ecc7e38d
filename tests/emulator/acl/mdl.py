"""Emulated `acl.mdl`: loading an emulated .om from memory, model descriptions, datasets, dynamic
dims and execution. `execute` runs onnxruntime at exactly the static shapes of the gear the caller
selected, reading and writing the device buffers it was given, so a wrong buffer size, an
unselected gear or a mask that does not match the cache size fails as on the chip.

Dynamic dims follow the pyACL reference (set_input_dynamic_dims, get_input_dynamic_dims): the .om
header keeps atc's --input_shape (with -1) and --dynamic_dims (the -1 values of each profile); at
load time every profile is expanded into its gear, the concatenation of ALL dimensions of ALL
inputs in input order, and only that full form is accepted or returned.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import emu_om

from . import _state as s
from ._buffers import DataBuffer
from ._state import state

# What set_input_dynamic_dims writes into the ascend_mbatch_shape_data buffer is not documented.
# The emulator stores the selected gear there as int64 values, and reports the size that takes.
_GEAR_ITEM = np.dtype(np.int64)


@dataclass
class Model:
    header: dict
    session: object
    context: int
    inputs: list[dict]
    gears: list[tuple[int, ...]]
    input_sizes: list[int]
    output_sizes: list[int]
    output_dtypes: list[str]

    @property
    def dynamic(self) -> bool:
        return bool(self.gears)

    @property
    def names(self) -> list[str]:
        return [i["name"] for i in self.inputs] + ([emu_om.MBATCH_INPUT] if self.dynamic else [])

    @property
    def dim_count(self) -> int:
        """dimCount of a gear: the sum of the ranks of all inputs."""
        return sum(len(spec["shape"]) for spec in self.inputs)

    def shapes(self, gear: tuple[int, ...]) -> list[list[int]]:
        """Split a gear back into one shape per input."""
        out, at = [], 0
        for spec in self.inputs:
            rank = len(spec["shape"])
            out.append(list(gear[at:at + rank]))
            at += rank
        return out


@dataclass
class Desc:
    model: Model | None = None


@dataclass
class Dataset:
    buffers: list[int] = field(default_factory=list)


def _fail(code: int, message: str) -> int:
    return state().fail(code, message)


def _nbytes(shape: list[int], dtype: str) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def _session(header: dict, data: memoryview, start: int):
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # run failures come back as aclError codes, not log lines
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    threads = int(os.environ.get("EMU_ACL_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="emu_om_") as tmp:
        path = emu_om.extract_blobs(data, header, start, Path(tmp))
        # Weights are read into the session here; the temporary files can go afterwards.
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _gears(inputs: list[dict], profiles: list[list[int]]) -> list[tuple[int, ...]]:
    """Each --dynamic_dims profile as its documented gear: every input's full shape, concatenated."""
    return [tuple(d for shape in emu_om.static_shapes(inputs, p) for d in shape) for p in profiles]


def load_from_mem(model: int, model_size: int) -> tuple[int, int]:
    st = state()
    ret = s.need_context(st)
    if ret:
        return 0, ret
    where = st.locate(model, model_size)
    if where is None or model_size <= 0:
        return 0, _fail(s.INVALID_PARAM, "load_from_mem: pointer/size outside any allocation")
    region, offset = where
    allowed = (s.DEVICE, s.PINNED) if s.run_mode() == 0 else (s.PINNED, s.HOST)
    if region.kind not in allowed:
        return 0, _fail(s.INVALID_PARAM, f"load_from_mem: the model must be in {' or '.join(allowed)} "
                                         f"memory in this run mode, got {region.kind}")
    data = memoryview(region.data)[offset:offset + model_size]
    try:
        header, start = emu_om.read_header(data)
    except ValueError as e:
        return 0, _fail(s.PARSE_FILE, f"load_from_mem: {e}")
    if header["soc_version"] != s.soc_name():
        return 0, _fail(s.INVALID_PARAM, f"load_from_mem: the model was compiled for {header['soc_version']}, "
                                         f"this device is {s.soc_name()}")
    inputs = header["inputs"]
    gears = _gears(inputs, header["profiles"])
    maxed = emu_om.max_dims(inputs, header["profiles"])
    sizes = [_nbytes(shape, spec["dtype"]) for shape, spec in zip(maxed, inputs)]
    if gears:
        sizes.append(len(gears[0]) * _GEAR_ITEM.itemsize)
    out_dtypes = [o["dtype"] for o in header["outputs"]]
    out_sizes = [max(_nbytes(shapes[i], out_dtypes[i]) for shapes in header["profile_outputs"])
                 for i in range(len(out_dtypes))]
    try:
        session = _session(header, data, start)
    except Exception as e:  # onnxruntime's own exception types
        return 0, _fail(s.PARSE_FILE, f"load_from_mem: the graph inside the .om does not load: {e}")
    m = Model(header, session, st.current_context().handle, inputs, gears, sizes, out_sizes, out_dtypes)
    model_id = st.new_handle(m)
    st.record("load_from_mem", model_size)
    return model_id, s.SUCCESS


def unload(model_id: int) -> int:
    st = state()
    m = st.get(model_id, Model)
    if m is None:
        return s.INVALID_PARAM
    ctx = st.current_context()
    if ctx is None or ctx.handle != m.context:
        return _fail(s.INVALID_PARAM, "unload: not in the context the model was loaded in")
    del st.handles[model_id]
    st.record("unload", model_id)
    return s.SUCCESS


def create_desc() -> int:
    return state().new_handle(Desc())


def get_desc(model_desc: int, model_id: int) -> int:
    st = state()
    desc, m = st.get(model_desc, Desc), st.get(model_id, Model)
    if desc is None or m is None:
        return s.INVALID_PARAM
    desc.model = m
    return s.SUCCESS


def destroy_desc(model_desc: int) -> int:
    return state().destroy(model_desc, Desc, "destroy_desc")


def _model_of(model_desc: int) -> Model | None:
    desc = state().get(model_desc, Desc)
    return desc.model if desc else None


def get_num_inputs(model_desc: int) -> int:
    m = _model_of(model_desc)
    return len(m.names) if m else 0


def get_num_outputs(model_desc: int) -> int:
    m = _model_of(model_desc)
    return len(m.output_sizes) if m else 0


def get_input_size_by_index(model_desc: int, index: int) -> int:
    m = _model_of(model_desc)
    return m.input_sizes[index] if m and 0 <= index < len(m.input_sizes) else 0


def get_output_size_by_index(model_desc: int, index: int) -> int:
    m = _model_of(model_desc)
    return m.output_sizes[index] if m and 0 <= index < len(m.output_sizes) else 0


def get_output_data_type(model_desc: int, index: int) -> int:
    m = _model_of(model_desc)
    if not m or not 0 <= index < len(m.output_dtypes):
        return -1
    return emu_om.NUMPY_TO_ACL.get(m.output_dtypes[index], -1)


def get_input_dims(model_desc: int, index: int) -> tuple[dict, int]:
    """The input's aclmdlIODims. A dimension that is not one fixed number (a -1 matched by
    --dynamic_dims, or a shape range) is reported as -1, as the docs show for dynamic batch; for
    ascend_mbatch_shape_data, whose layout is not documented, the emulator's own [dimCount]."""
    m = _model_of(model_desc)
    if m is None or not 0 <= index < len(m.names):
        return {"name": "", "dimCount": 0, "dims": []}, _fail(s.INVALID_PARAM, f"get_input_dims: no input {index}")
    if index == len(m.inputs):
        dims = [m.dim_count]
    else:
        dims = [d if isinstance(d, int) else -1 for d in m.inputs[index]["shape"]]
    return {"name": m.names[index], "dimCount": len(dims), "dims": dims}, s.SUCCESS


def get_input_index_by_name(model_desc: int, name: str) -> tuple[int, int]:
    m = _model_of(model_desc)
    if m is None or name not in m.names:
        return 0, s.INVALID_PARAM
    return m.names.index(name), s.SUCCESS


def get_input_dynamic_gear_count(model_desc: int, index: int) -> tuple[int, int]:
    """Number of --dynamic_dims gears; 0 for a model built without them. index is reserved: -1."""
    m = _model_of(model_desc)
    if m is None or index != -1:
        return 0, s.INVALID_PARAM
    return len(m.gears), s.SUCCESS


def get_input_dynamic_dims(model_desc: int, index: int, gear_count: int) -> tuple[list[dict], int]:
    """One aclmdlIODims per gear: dimCount is the sum of the ranks of all inputs, dims every
    dimension of every input in input order. Only for models built with --dynamic_dims."""
    m = _model_of(model_desc)
    if m is None or index != -1:
        return [], _fail(s.INVALID_PARAM, "get_input_dynamic_dims: unknown model description, or index is not -1")
    if not m.dynamic:
        return [], _fail(s.INVALID_PARAM, "get_input_dynamic_dims: the model was built without --dynamic_dims")
    if gear_count != len(m.gears):
        return [], _fail(s.INVALID_PARAM, f"get_input_dynamic_dims: gear_count {gear_count}, the model has "
                                          f"{len(m.gears)} (ask get_input_dynamic_gear_count)")
    return [{"name": "", "dimCount": len(g), "dims": list(g)} for g in m.gears], s.SUCCESS


def create_dataset() -> int:
    return state().new_handle(Dataset())


def add_dataset_buffer(dataset: int, data_buffer: int) -> tuple[int, int]:
    st = state()
    ds = st.get(dataset, Dataset)
    if ds is None or st.get(data_buffer, DataBuffer) is None:
        return dataset, s.INVALID_PARAM
    ds.buffers.append(data_buffer)
    return dataset, s.SUCCESS


def get_dataset_num_buffers(dataset: int) -> int:
    ds = state().get(dataset, Dataset)
    return len(ds.buffers) if ds else 0


def destroy_dataset(dataset: int) -> int:
    return state().destroy(dataset, Dataset, "destroy_dataset")


def _buffer(ds: Dataset, index: int) -> DataBuffer | None:
    if not 0 <= index < len(ds.buffers):
        return None
    return state().get(ds.buffers[index], DataBuffer)


def set_input_dynamic_dims(model_id: int, dataset_in: int, index: int, dims: dict) -> int:
    """Select one compiled gear. dims is {'dimCount': N, 'name': '', 'dims': [...]} with every
    dimension of every input (pyACL reference: data(1,1,40,20)+label(1,20)+mask(1,1) is dimCount 8,
    dims [1,1,40,20,1,20,1,1]); the -1 values alone are not a gear."""
    st = state()
    m, ds = st.get(model_id, Model), st.get(dataset_in, Dataset)
    if m is None or ds is None:
        return _fail(s.INVALID_PARAM, "set_input_dynamic_dims: unknown model or dataset")
    if not m.dynamic or index != len(m.inputs):
        return _fail(s.INVALID_PARAM, f"set_input_dynamic_dims: input {index} is not {emu_om.MBATCH_INPUT}")
    if not isinstance(dims, dict) or not {"dimCount", "dims", "name"} <= set(dims):
        return _fail(s.INVALID_PARAM, "set_input_dynamic_dims: dims must be a dict with name, dimCount, dims")
    values = tuple(int(v) for v in dims["dims"])
    if dims["dimCount"] != len(values) or len(values) != m.dim_count:
        return _fail(s.INVALID_PARAM, f"set_input_dynamic_dims: dimCount {dims['dimCount']} with {len(values)} "
                                      f"dims; a gear of this model is every dimension of every input, "
                                      f"{m.dim_count} values")
    if values not in m.gears:
        return _fail(s.INVALID_PARAM, f"set_input_dynamic_dims: {list(values)} matches no compiled gear")
    need = len(values) * _GEAR_ITEM.itemsize
    buf = _buffer(ds, index)
    where = st.locate(buf.ptr, need) if buf and buf.size >= need else None
    if where is None:
        return _fail(s.INVALID_PARAM, f"set_input_dynamic_dims: the {emu_om.MBATCH_INPUT} buffer holds fewer "
                                      f"than the {need} bytes get_input_size_by_index reports")
    region, off = where
    region.data[off:off + need] = np.asarray(values, dtype=_GEAR_ITEM).tobytes()
    return s.SUCCESS


def _selected_gear(m: Model, ds: Dataset) -> tuple[int, ...] | None:
    buf = _buffer(ds, len(m.inputs))
    need = m.dim_count * _GEAR_ITEM.itemsize
    where = state().locate(buf.ptr, need) if buf and buf.size >= need else None
    if where is None:
        return None
    region, off = where
    values = tuple(int(v) for v in np.frombuffer(bytes(region.data[off:off + need]), dtype=_GEAR_ITEM))
    return values if values in m.gears else None


def execute(model_id: int, input: int, output: int) -> int:  # noqa: A002  (pyACL's parameter name)
    st = state()
    m, ins, outs = st.get(model_id, Model), st.get(input, Dataset), st.get(output, Dataset)
    if m is None or ins is None or outs is None:
        return _fail(s.INVALID_PARAM, "execute: unknown model or dataset")
    ctx = st.current_context()
    if ctx is None or ctx.handle != m.context:
        return _fail(s.INVALID_PARAM, "execute: the calling thread is not in the model's context")
    if len(ins.buffers) != len(m.names) or len(outs.buffers) != len(m.output_sizes):
        return _fail(s.INVALID_PARAM, f"execute: datasets hold {len(ins.buffers)} inputs/{len(outs.buffers)} "
                                      f"outputs, the model has {len(m.names)}/{len(m.output_sizes)}")
    if m.dynamic:
        gear = _selected_gear(m, ins)
        if gear is None:
            return _fail(s.INVALID_PARAM, "execute: no compiled gear selected (call set_input_dynamic_dims)")
        shapes = m.shapes(gear)
    else:
        gear, shapes = None, emu_om.static_shapes(m.inputs, [])
    feeds = {}
    for i, (spec, shape) in enumerate(zip(m.inputs, shapes)):
        need, buf = _nbytes(shape, spec["dtype"]), _buffer(ins, i)
        where = st.locate(buf.ptr, need) if buf and buf.size >= need else None
        if where is None:
            return _fail(s.INVALID_PARAM, f"execute: input {spec['name']} needs {need} bytes at shape {shape}")
        region, off = where
        feeds[spec["name"]] = np.frombuffer(bytes(region.data[off:off + need]), dtype=spec["dtype"]).reshape(shape)
    try:
        results = m.session.run(None, feeds)
    except Exception as e:  # onnxruntime's own exception types
        return _fail(500000, f"execute: the graph failed at shapes {shapes}: {e}")
    for i, result in enumerate(results):
        blob = np.ascontiguousarray(result, dtype=m.output_dtypes[i]).tobytes()
        buf = _buffer(outs, i)
        where = st.locate(buf.ptr, len(blob)) if buf and buf.size >= len(blob) else None
        if where is None:
            return _fail(s.INVALID_PARAM, f"execute: output {i} needs {len(blob)} bytes")
        region, off = where
        region.data[off:off + len(blob)] = blob
    st.record("execute", {spec["name"]: tuple(shape) for spec, shape in zip(m.inputs, shapes)},
              None if gear is None else m.gears.index(gear))
    return s.SUCCESS
