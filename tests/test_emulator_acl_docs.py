"""The emulated pyACL (tests/emulator/acl) checked against the CANN documentation's own examples and
rules, independently of our graph. Each test names the pyACL reference page it reproduces (page ids
of the "aclpythondevg" pyACL API reference and, where the Python page points to it, the C
"aclcppdevg" page). The dynamic-dims tests use the docs' example model: inputs data [1,1,40,-1],
label [1,-1], mask [-1,-1], built with input_shape "data:1,1,40,-1;label:1,-1;mask:-1,-1" and
dynamic_dims "20,20,1,1; 40,40,2,2; 80,60,4,4". The tests of AclSession's use of these calls live in
tests/test_npu_session.py.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from emulator import harness

pytestmark = pytest.mark.emulator

DOC_INPUT_SHAPE = "data:1,1,40,-1;label:1,-1;mask:-1,-1"
DOC_DYNAMIC_DIMS = "20,20,1,1; 40,40,2,2; 80,60,4,4"
# aclpythondevg_01_0217: gear 0 is data(1,1,40,20)+label(1,20)+mask(1,1), and so on.
DOC_GEARS = [[1, 1, 40, 20, 1, 20, 1, 1], [1, 1, 40, 40, 1, 40, 2, 2], [1, 1, 40, 80, 1, 60, 4, 4]]
MBATCH = "ascend_mbatch_shape_data"
HOST_TO_HOST, HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 0, 1, 2, 3


def doc_graph(path: Path) -> None:
    """Three inputs shaped like the docs' example, each with its own output: data + 1, label * 2,
    mask - 3, so every output shows the shape the model ran at."""
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 1, 40, "w"]),
              helper.make_tensor_value_info("label", TensorProto.FLOAT, [1, "l"]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["m0", "m1"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("data_out", "label_out", "mask_out")]
    consts = [helper.make_tensor(n, TensorProto.FLOAT, [], [v])
              for n, v in (("one", 1.0), ("two", 2.0), ("three", 3.0))]
    nodes = [helper.make_node("Add", ["data", "one"], ["data_out"]),
             helper.make_node("Mul", ["label", "two"], ["label_out"]),
             helper.make_node("Sub", ["mask", "three"], ["mask_out"])]
    graph = helper.make_graph(nodes, "acl_doc_example", inputs, outputs, consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def atc(onnx_path: Path, out: Path, *flags: str) -> None:
    # origin: the graph's own float32, so the runs here are compared exactly (these tests are about shapes,
    # gears and calls; tests/test_emulator_fp16.py covers what the precision modes do to the numbers).
    r = subprocess.run([str(harness.EMULATOR / "atc"), "--framework=5", f"--model={onnx_path}", f"--output={out}",
                        "--soc_version=Ascend310B1", "--precision_mode_v2=origin", *flags],
                       capture_output=True, text=True, env=harness.subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def doc_oms(tmp_path_factory) -> dict[str, Path]:
    """The docs' example compiled once with the docs' flags, and once with static shapes."""
    folder = tmp_path_factory.mktemp("acl_docs")
    doc_graph(folder / "doc.onnx")
    atc(folder / "doc.onnx", folder / "doc", "--input_format=ND", f"--input_shape={DOC_INPUT_SHAPE}",
        f"--dynamic_dims={DOC_DYNAMIC_DIMS}")
    atc(folder / "doc.onnx", folder / "static", "--input_shape=data:1,1,40,20;label:1,20;mask:1,1")
    return {"dynamic": folder / "doc.om", "static": folder / "static.om"}


@pytest.fixture
def acl(monkeypatch):
    """The emulated runtime, initialised (once per process), with device 0 set and an explicit
    context current; afterwards everything a test allocated must have been released."""
    harness.activate(monkeypatch)
    from backends.acl_runtime import runtime as acl_runtime

    runtime = acl_runtime()
    assert runtime.rt.set_device(0) == 0
    context, ret = runtime.rt.create_context(0)
    assert ret == 0
    runtime.test_context = context
    yield runtime
    assert runtime.rt.set_context(context) == 0
    assert runtime.rt.destroy_context(context) == 0
    assert runtime.rt.reset_device(0) == 0
    assert harness.live() == {}


@dataclass
class Loaded:
    model_id: int
    desc: int
    ins: int
    outs: int
    in_ptrs: list[int]
    out_ptrs: list[int]
    out_sizes: list[int]


def upload(acl, path: Path) -> tuple[int, int]:
    blob = path.read_bytes()
    ptr, ret = acl.rt.malloc(len(blob), 0)
    assert ret == 0
    assert acl.rt.memcpy(ptr, len(blob), acl.util.bytes_to_ptr(blob), len(blob), HOST_TO_DEVICE) == 0
    return ptr, len(blob)


@pytest.fixture
def doc_model(acl, doc_oms):
    """The docs' example loaded from device memory, with one device buffer per input and output."""
    model_ptr, size = upload(acl, doc_oms["dynamic"])
    model_id, ret = acl.mdl.load_from_mem(model_ptr, size)
    assert ret == 0
    desc = acl.mdl.create_desc()
    assert acl.mdl.get_desc(desc, model_id) == 0
    datasets, ptrs, buffers = [], [], []
    for sizes in ([acl.mdl.get_input_size_by_index(desc, i) for i in range(acl.mdl.get_num_inputs(desc))],
                  [acl.mdl.get_output_size_by_index(desc, i) for i in range(acl.mdl.get_num_outputs(desc))]):
        dataset, group = acl.mdl.create_dataset(), []
        for size in sizes:
            ptr, ret = acl.rt.malloc(size, 0)
            assert ret == 0
            buffers.append(acl.create_data_buffer(ptr, size))
            assert acl.mdl.add_dataset_buffer(dataset, buffers[-1]) == (dataset, 0)
            group.append(ptr)
        datasets.append(dataset)
        ptrs.append(group)
    out_sizes = [acl.mdl.get_output_size_by_index(desc, i) for i in range(3)]
    yield Loaded(model_id, desc, *datasets, *ptrs, out_sizes)
    assert acl.rt.set_context(acl.test_context) == 0
    assert acl.mdl.unload(model_id) == 0
    assert acl.mdl.destroy_desc(desc) == 0
    for buf in buffers:
        assert acl.destroy_data_buffer(buf) == 0
    for dataset in datasets:
        assert acl.mdl.destroy_dataset(dataset) == 0
    for ptr in [*ptrs[0], *ptrs[1], model_ptr]:
        assert acl.rt.free(ptr) == 0


def put(acl, ptr: int, size: int, array: np.ndarray) -> None:
    data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
    assert acl.rt.memcpy(ptr, size, acl.util.bytes_to_ptr(data), len(data), HOST_TO_DEVICE) == 0


def get(acl, ptr: int, count: int) -> np.ndarray:
    host, ret = acl.rt.malloc_host(count * 4)
    assert ret == 0
    try:
        assert acl.rt.memcpy(host, count * 4, ptr, count * 4, DEVICE_TO_HOST) == 0
        return np.frombuffer(acl.util.ptr_to_bytes(host, count * 4), dtype=np.float32).copy()
    finally:
        assert acl.rt.free_host(host) == 0


def run_gear(acl, m: Loaded, gear: list[int]) -> list[np.ndarray]:
    """Fill the inputs at the gear's shapes, select it with the documented dims dict, execute, and
    read the outputs back at those shapes."""
    shapes = [tuple(gear[0:4]), tuple(gear[4:6]), tuple(gear[6:8])]
    rng = np.random.default_rng(len(gear) + sum(gear))
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    for i, array in enumerate(arrays):
        put(acl, m.in_ptrs[i], acl.mdl.get_input_size_by_index(m.desc, i), array)
    index, ret = acl.mdl.get_input_index_by_name(m.desc, MBATCH)
    assert ret == 0
    assert acl.mdl.set_input_dynamic_dims(m.model_id, m.ins, index, {"dimCount": 8, "name": "", "dims": gear}) == 0
    assert acl.mdl.execute(m.model_id, m.ins, m.outs) == 0
    outs = [get(acl, m.out_ptrs[i], int(np.prod(shape))).reshape(shape) for i, shape in enumerate(shapes)]
    np.testing.assert_array_equal(outs[0], arrays[0] + 1)
    np.testing.assert_array_equal(outs[1], arrays[1] * 2)
    np.testing.assert_array_equal(outs[2], arrays[2] - 3)
    return outs


# ---- dynamic dims: the docs' own example -----------------------------------------------------------
def test_gear_count_is_the_number_of_dynamic_dims_profiles(acl, doc_model, doc_oms):
    """aclpythondevg_01_0216 (C aclcppdevg_03_1467): gear_count, ret = get_input_dynamic_gear_count(
    model_desc, -1); index is reserved and must be -1; a model built without --dynamic_dims has 0."""
    assert acl.mdl.get_input_dynamic_gear_count(doc_model.desc, -1) == (3, 0)
    assert acl.mdl.get_input_dynamic_gear_count(doc_model.desc, 0)[1] != 0
    ptr, size = upload(acl, doc_oms["static"])
    model_id, ret = acl.mdl.load_from_mem(ptr, size)
    desc = acl.mdl.create_desc()
    try:
        assert ret == 0 and acl.mdl.get_desc(desc, model_id) == 0
        assert acl.mdl.get_input_dynamic_gear_count(desc, -1) == (0, 0)
        assert acl.mdl.get_num_inputs(desc) == 3                   # no ascend_mbatch_shape_data input
        assert acl.mdl.get_input_dynamic_dims(desc, -1, 0)[1] != 0  # only after --dynamic_dims
    finally:
        assert acl.mdl.unload(model_id) == 0
        assert acl.mdl.destroy_desc(desc) == 0
        assert acl.rt.free(ptr) == 0


def test_get_input_dynamic_dims_returns_the_documented_gears(acl, doc_model):
    """aclpythondevg_01_0217 (C aclcppdevg_03_1468): dims_out, ret = get_input_dynamic_dims(model_desc,
    -1, gear_count) lists one aclmdlIODims per gear; dimCount 8 is the sum of the ranks of all inputs,
    dims are data+label+mask: "1,1,40,20,1,20,1,1", "1,1,40,40,1,40,2,2", "1,1,40,80,1,60,4,4"."""
    dims_out, ret = acl.mdl.get_input_dynamic_dims(doc_model.desc, -1, 3)
    assert ret == 0
    assert [(g["dimCount"], g["dims"]) for g in dims_out] == [(8, gear) for gear in DOC_GEARS]
    assert acl.mdl.get_input_dynamic_dims(doc_model.desc, -1, 2)[1] != 0   # gear_count comes from the model


def test_set_input_dynamic_dims_takes_the_documented_example(acl, doc_model):
    """aclpythondevg_01_0159 / 01_0168 (C aclcppdevg_03_0312): with the docs' atc flags and real input
    shapes (1,1,40,20), (1,20), (1,1), ret = set_input_dynamic_dims(model_id, dataset_in, index,
    {'dimCount': 8, 'name': '', 'dims': [1,1,40,20,1,20,1,1]}) with index from
    get_input_index_by_name(desc, "ascend_mbatch_shape_data"); execute then runs at those shapes."""
    for gear in (DOC_GEARS[0], DOC_GEARS[2]):
        outs = run_gear(acl, doc_model, gear)
        assert [o.shape for o in outs] == [tuple(gear[0:4]), tuple(gear[4:6]), tuple(gear[6:8])]
    last = [e for e in harness.trace() if e[0] == "execute"][-1]
    assert last[1] == {"data": (1, 1, 40, 80), "label": (1, 60), "mask": (4, 4)} and last[2] == 2


@pytest.mark.parametrize("dims, why", [
    ({"dimCount": 4, "name": "", "dims": [20, 20, 1, 1]}, "every dimension of every input"),   # the -1 values only
    ({"dimCount": 7, "name": "", "dims": [1, 1, 40, 20, 1, 20, 1, 1]}, "every dimension of every input"),
    ({"dimCount": 8, "name": "", "dims": [1, 1, 40, 30, 1, 30, 1, 1]}, "matches no compiled gear"),
    ({"dimCount": 8, "name": "", "dims": [1, 1, 40, 20, 1, 40, 1, 1]}, "matches no compiled gear"),  # mixed gears
])
def test_set_input_dynamic_dims_rejects_what_is_not_a_gear(acl, doc_model, dims, why):
    """aclpythondevg_01_0159: the dims "can only be one of the gears set when the model was built";
    a dict of the -1 values alone (the dynamic_dims line) is not one."""
    index, _ = acl.mdl.get_input_index_by_name(doc_model.desc, MBATCH)
    assert acl.mdl.set_input_dynamic_dims(doc_model.model_id, doc_model.ins, index, dims) != 0
    assert why in acl.get_recent_err_msg()
    assert acl.mdl.execute(doc_model.model_id, doc_model.ins, doc_model.outs) != 0   # still nothing selected


def test_set_input_dynamic_dims_needs_the_mbatch_index(acl, doc_model):
    """aclpythondevg_01_0159: index is the one get_input_index_by_name returns for the fixed name
    ascend_mbatch_shape_data; any other input index is refused."""
    good = {"dimCount": 8, "name": "", "dims": DOC_GEARS[1]}
    assert acl.mdl.get_input_index_by_name(doc_model.desc, MBATCH) == (3, 0)
    assert acl.mdl.set_input_dynamic_dims(doc_model.model_id, doc_model.ins, 0, good) != 0
    assert acl.mdl.set_input_dynamic_dims(doc_model.model_id, doc_model.ins, 3, good) == 0


# ---- every other call AclSession makes ----------------------------------------------------------------
def test_init_once_per_process_paired_with_finalize():
    """aclpythondevg_01_0004 / 01_0005 (init) and 01_0006 (finalize): ret = acl.init(); "a process may
    call acl.init only once, paired with acl.finalize"; ret = acl.finalize()."""
    script = ("import acl; print(acl.init(), acl.init(), acl.finalize(), acl.init(), acl.finalize())")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=harness.subprocess_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    first, again, finalize, after, finalize_twice = (int(v) for v in r.stdout.split())
    assert (first, finalize) == (0, 0)
    assert again != 0 and after != 0 and finalize_twice != 0


def test_device_and_context_lifecycle(acl):
    """aclpythondevg_01_0058 (set_device), 01_0060 (reset_device), 01_0071 (create_context), 01_0074
    (set_context), 01_0073 (destroy_context): create_context returns (context, ret), the others ret;
    a context is current in the thread that created it, another thread sets it; explicitly created
    contexts are destroyed before reset_device."""
    context, ret = acl.rt.create_context(0)
    assert ret == 0 and context
    seen = []

    def worker() -> None:
        seen.append(acl.rt.malloc(64, 0)[1])                 # no current context in a new thread
        seen.append(acl.rt.set_context(context))
        ptr, ret = acl.rt.malloc(64, 0)
        seen.append(ret)
        seen.append(acl.rt.free(ptr))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen[0] != 0 and seen[1:] == [0, 0, 0]
    assert acl.rt.reset_device(0) != 0                        # explicit contexts still alive
    assert acl.rt.destroy_context(context) == 0


def test_get_run_mode_returns_mode_and_ret(acl, monkeypatch):
    """aclpythondevg_01_0062 / 01_0065: run_mode, ret = acl.rt.get_run_mode(); 0 is ACL_DEVICE (the
    app runs on the board, as on a 310B1 kit), 1 is ACL_HOST."""
    assert acl.rt.get_run_mode() == (0, 0)
    monkeypatch.setenv("EMU_ACL_RUN_MODE", "host")
    assert acl.rt.get_run_mode() == (1, 0)


def test_malloc_returns_pointer_and_ret_and_leaves_memory_uninitialised(acl):
    """aclpythondevg_01_0110: dev_ptr, ret = acl.rt.malloc(size, policy); size must not be 0; "the memory
    is not initialised, call acl.rt.memset before use"; only acl.rt.free releases it."""
    ptr, ret = acl.rt.malloc(256, 0)
    assert ret == 0 and ptr
    try:
        assert acl.rt.malloc(0, 0)[1] != 0
        assert get(acl, ptr, 64).view(np.uint32).tolist() != [0] * 64
        assert acl.rt.memset(ptr, 256, 0, 256) == 0
        assert get(acl, ptr, 64).tolist() == [0.0] * 64
        assert acl.rt.free_host(ptr) != 0                      # not malloc_host memory
    finally:
        assert acl.rt.free(ptr) == 0
    assert acl.rt.free(ptr) != 0                               # already released


def test_malloc_host_pairs_with_free_host(acl):
    """aclpythondevg_01_0116 (malloc_host) and 01_0117 (free_host): host_ptr, ret =
    acl.rt.malloc_host(size); "free_host only frees memory from malloc_host"."""
    ptr, ret = acl.rt.malloc_host(128)
    assert ret == 0 and ptr
    assert acl.rt.malloc_host(0)[1] != 0
    assert acl.rt.free(ptr) != 0
    assert acl.rt.free_host(ptr) == 0


def test_memcpy_returns_ret_counts_bytes_and_respects_dest_max(acl):
    """aclpythondevg_01_0120: ret = acl.rt.memcpy(dst, dest_max, src, count, kind); dest_max and count
    in bytes; kind 0..3 = host-to-host, host-to-device, device-to-host, device-to-device."""
    values = np.arange(8, dtype=np.int32).tobytes()
    dev, _ = acl.rt.malloc(32, 0)
    dev2, _ = acl.rt.malloc(32, 0)
    host, _ = acl.rt.malloc_host(32)
    try:
        assert acl.rt.memset(dev, 32, 0, 32) == 0
        ret = acl.rt.memcpy(dev, 32, acl.util.bytes_to_ptr(values), 12, HOST_TO_DEVICE)
        assert ret == 0 and isinstance(ret, int)
        assert np.frombuffer(acl.util.ptr_to_bytes(dev, 32), dtype=np.int32).tolist() == [0, 1, 2, 0, 0, 0, 0, 0]
        assert acl.rt.memcpy(dev2, 32, dev, 32, DEVICE_TO_DEVICE) == 0
        assert acl.rt.memcpy(host + 16, 16, dev2, 16, DEVICE_TO_HOST) == 0
        assert acl.rt.memcpy(host, 32, acl.util.bytes_to_ptr(values), 16, HOST_TO_HOST) == 0
        assert np.frombuffer(acl.util.ptr_to_bytes(host, 32), dtype=np.int32).tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
        assert acl.rt.memcpy(dev, 8, dev2, 12, DEVICE_TO_DEVICE) != 0     # count above dest_max
        assert acl.rt.memcpy(dev + 24, 16, dev2, 16, DEVICE_TO_DEVICE) != 0   # dest_max past the allocation
    finally:
        assert acl.rt.free(dev) == 0 and acl.rt.free(dev2) == 0 and acl.rt.free_host(host) == 0


def test_memset_sets_count_bytes_within_max(acl):
    """aclpythondevg_01_0118: ret = acl.rt.memset(dev_ptr, max_count, value, count), lengths in bytes."""
    ptr, _ = acl.rt.malloc(16, 0)
    try:
        assert acl.rt.memset(ptr, 16, 0, 16) == 0
        assert acl.rt.memset(ptr, 16, 7, 4) == 0
        assert acl.util.ptr_to_bytes(ptr, 16) == bytes([7] * 4 + [0] * 12)
        assert acl.rt.memset(ptr, 8, 1, 9) != 0                           # count above max_count
    finally:
        assert acl.rt.free(ptr) == 0


def test_bytes_to_ptr_and_ptr_to_bytes(acl):
    """aclpythondevg_01_0055 (ptr = acl.util.bytes_to_ptr(data), data of type bytes) and 01_0056
    (bytes_out = acl.util.ptr_to_bytes(ptr, size))."""
    data = b"documented"
    ptr = acl.util.bytes_to_ptr(data)
    assert isinstance(ptr, int)
    assert acl.util.ptr_to_bytes(ptr, len(data)) == data
    with pytest.raises(ValueError):
        acl.util.bytes_to_ptr(bytearray(data))


def test_create_data_buffer_returns_a_handle_and_destroy_keeps_the_memory(acl):
    """aclpythondevg_01_0016 (output = acl.create_data_buffer(data, size): the handle, 0 on failure; data
    0 means an empty buffer whose size must be 0) and 01_0017 (ret = acl.destroy_data_buffer: "the
    memory passed as data must be freed by the user")."""
    ptr, _ = acl.rt.malloc(64, 0)
    buf = acl.create_data_buffer(ptr, 64)
    empty = acl.create_data_buffer(0, 0)
    assert buf and empty and acl.create_data_buffer(0, 64) == 0
    assert acl.destroy_data_buffer(buf) == 0 and acl.destroy_data_buffer(empty) == 0
    assert acl.rt.memset(ptr, 64, 0, 64) == 0                              # still allocated
    assert acl.rt.free(ptr) == 0


def test_add_dataset_buffer_returns_dataset_and_ret(acl):
    """aclpythondevg_01_0188: dataset, ret = acl.mdl.add_dataset_buffer(dataset, data_buffer); datasets
    come from acl.mdl.create_dataset and go with acl.mdl.destroy_dataset (01_0187)."""
    ptr, _ = acl.rt.malloc(8, 0)
    buf = acl.create_data_buffer(ptr, 8)
    dataset = acl.mdl.create_dataset()
    assert dataset
    assert acl.mdl.add_dataset_buffer(dataset, buf) == (dataset, 0)
    assert acl.mdl.add_dataset_buffer(dataset, 12345)[1] != 0               # not an aclDataBuffer
    assert acl.mdl.destroy_dataset(dataset) == 0
    assert acl.destroy_data_buffer(buf) == 0 and acl.rt.free(ptr) == 0


def test_load_from_mem_wants_device_memory_on_the_board(acl, doc_oms, monkeypatch):
    """aclpythondevg_01_0140: model_id, ret = acl.mdl.load_from_mem(model, model_size); "when the app runs
    on the device the model must be in device memory, on the host in host memory"."""
    blob = doc_oms["dynamic"].read_bytes()
    assert acl.mdl.load_from_mem(acl.util.bytes_to_ptr(blob), len(blob))[1] != 0
    monkeypatch.setenv("EMU_ACL_RUN_MODE", "host")
    host, _ = acl.rt.malloc_host(len(blob))
    assert acl.rt.memcpy(host, len(blob), acl.util.bytes_to_ptr(blob), len(blob), HOST_TO_HOST) == 0
    model_id, ret = acl.mdl.load_from_mem(host, len(blob))
    assert ret == 0
    assert acl.mdl.unload(model_id) == 0
    assert acl.rt.free_host(host) == 0


def test_execute_and_unload_run_in_the_loading_context(acl, doc_model):
    """aclpythondevg_01_0145 (ret = acl.mdl.execute(model_id, input, output)) and 01_0148 (ret =
    acl.mdl.unload(model_id)): "loading, executing and unloading a model must happen in the same
    context"."""
    other, _ = acl.rt.create_context(0)
    try:
        index, _ = acl.mdl.get_input_index_by_name(doc_model.desc, MBATCH)
        gear = {"dimCount": 8, "name": "", "dims": DOC_GEARS[0]}
        assert acl.mdl.set_input_dynamic_dims(doc_model.model_id, doc_model.ins, index, gear) == 0
        assert acl.mdl.execute(doc_model.model_id, doc_model.ins, doc_model.outs) != 0
        assert acl.mdl.unload(doc_model.model_id) != 0
        assert acl.rt.set_context(acl.test_context) == 0
        assert acl.mdl.execute(doc_model.model_id, doc_model.ins, doc_model.outs) == 0
    finally:
        assert acl.rt.destroy_context(other) == 0


def test_model_description_counts_and_indices(acl, doc_model):
    """aclpythondevg_01_0193 (desc = create_desc()), 01_0196 (ret = get_desc(desc, model_id)), 01_0197
    (size = get_num_inputs(desc), the ascend_mbatch_shape_data input included), 01_0210 (index, ret =
    get_input_index_by_name(desc, name)), 01_0195 (ret = destroy_desc(desc))."""
    desc = acl.mdl.create_desc()
    assert desc and acl.mdl.get_desc(desc, doc_model.model_id) == 0
    assert acl.mdl.get_num_inputs(desc) == 4 and acl.mdl.get_num_outputs(desc) == 3
    assert acl.mdl.get_input_index_by_name(desc, "label") == (1, 0)
    assert acl.mdl.get_input_index_by_name(desc, "no_such_input")[1] != 0
    assert acl.mdl.destroy_desc(desc) == 0
    assert acl.mdl.destroy_desc(desc) != 0


def test_sizes_are_bytes_of_the_largest_gear(acl, doc_model):
    """aclpythondevg_01_0199 / 01_0200: size = get_input_size_by_index(desc, index) and
    get_output_size_by_index, a bare int in bytes; for dynamic batch/resolution "the size of the
    largest gear" (the emulator applies the same to dynamic dims)."""
    size = acl.mdl.get_input_size_by_index(doc_model.desc, 0)
    assert isinstance(size, int) and size == 1 * 1 * 40 * 80 * 4
    assert acl.mdl.get_input_size_by_index(doc_model.desc, 2) == 4 * 4 * 4
    assert acl.mdl.get_output_size_by_index(doc_model.desc, 1) == 1 * 60 * 4


def test_get_output_data_type_is_an_acl_data_type(acl, doc_model):
    """aclpythondevg_01_0209 (C aclcppdevg_03_1461): data_type = get_output_data_type(desc, index);
    aclDataType 0 is ACL_FLOAT, 1 ACL_FLOAT16."""
    assert [acl.mdl.get_output_data_type(doc_model.desc, i) for i in range(3)] == [0, 0, 0]


def test_get_input_dims_returns_the_dims_dict_and_ret(acl, doc_model):
    """aclpythondevg_01_0201: dims, ret = get_input_dims(desc, index) with dims = {"name", "dimCount",
    "dims"}; a dynamic dimension reads -1 (documented for dynamic batch/resolution; the emulator does
    the same for --dynamic_dims, and AclSession reads only the fixed dimensions)."""
    assert acl.mdl.get_input_dims(doc_model.desc, 0) == ({"name": "data", "dimCount": 4, "dims": [1, 1, 40, -1]}, 0)
    assert acl.mdl.get_input_dims(doc_model.desc, 2) == ({"name": "mask", "dimCount": 2, "dims": [-1, -1]}, 0)
    assert acl.mdl.get_input_dims(doc_model.desc, 9)[1] != 0


def test_get_recent_err_msg_reads_and_clears_the_threads_message(acl, doc_model):
    """aclpythondevg_01_0010: msg = acl.get_recent_err_msg() "gets and clears the error description of
    failed calls in the same thread" (thread level by default); None when there is none."""
    index, _ = acl.mdl.get_input_index_by_name(doc_model.desc, MBATCH)
    assert acl.mdl.set_input_dynamic_dims(doc_model.model_id, doc_model.ins, index,
                                          {"dimCount": 4, "name": "", "dims": [20, 20, 1, 1]}) != 0
    other: list = []
    thread = threading.Thread(target=lambda: other.append(acl.get_recent_err_msg()))
    thread.start()
    thread.join()
    assert other == [None]
    message = acl.get_recent_err_msg()
    assert isinstance(message, str) and "set_input_dynamic_dims" in message
    assert acl.get_recent_err_msg() is None
