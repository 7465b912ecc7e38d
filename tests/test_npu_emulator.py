"""The emulator enforces the documented atc and pyACL rules it claims to, so the NPU tests can fail."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from emulator import harness

pytestmark = pytest.mark.emulator

KV, WIDTH, D = 16, 8, 16  # tiny model: 2 layers * 2 * 2 kv heads, head_dim 16
SHAPE = f"input_ids:1,-1;attention_mask:1,-1;position_ids:1,-1;past_key_values:1,-1,{WIDTH},{D}"
PROFILES = "1,9,1,8;2,10,2,8;1,17,1,16;2,18,2,16"


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir, tiny_onnx_of):
    return tiny_onnx_of(tiny_model_dir, KV)


def atc(tiny_onnx, out, *flags: str, shape: str = SHAPE, dims: str | None = PROFILES) -> subprocess.CompletedProcess:
    args = [str(harness.EMULATOR / "atc"), "--framework=5", f"--model={tiny_onnx}", f"--output={out}",
            "--soc_version=Ascend310B1", "--input_format=ND", f"--input_shape={shape}", *flags]
    if dims is not None:
        args.append(f"--dynamic_dims={dims}")
    return subprocess.run(args, capture_output=True, text=True, env=harness.subprocess_env(), timeout=120)


@pytest.mark.parametrize("kw, message", [
    ({"dims": "1,9,1,8"}, "accepts 2 to 100"),
    ({"dims": ";".join(f"1,{9 + i},1,{8 + i}" for i in range(101))}, "accepts 2 to 100"),
    ({"dims": "1,9,1;2,10,2"}, "has 3 values"),
    ({"dims": None}, "needs --dynamic_dims"),
    ({"dims": "1,9,2,8;2,10,2,8"}, "axis 'seq' gets two values"),
    ({"dims": "1,10,1,8;2,10,2,8"}, "does not run at these shapes"),
    ({"shape": SHAPE.replace(";position_ids:1,-1", "")}, "missing position_ids"),
    ({"shape": SHAPE.replace("input_ids:1,-1", "input_ids:1~2,-1")}, "not supported on Ascend310B1"),
    ({"shape": SHAPE.replace(f",{D}", ",32")}, "the model fixes it to 16"),
])
def test_atc_rejects_what_the_docs_forbid(tiny_onnx, tmp_path, kw, message):
    r = atc(tiny_onnx, tmp_path / "m", **kw)
    assert r.returncode == 1 and message in r.stderr
    assert not (tmp_path / "m.om").exists()


def test_atc_checks_precision_flags(tiny_onnx, tmp_path):
    mix = tmp_path / "ops.json"
    mix.write_text(json.dumps({"black-list": {"to-add": ["Pow"]}}))
    assert atc(tiny_onnx, tmp_path / "a", f"--modify_mixlist={mix}", "--precision_mode_v2=fp16").returncode == 1
    assert atc(tiny_onnx, tmp_path / "b", "--precision_mode_v2=fp8").returncode == 1
    mix.write_text(json.dumps({"blacklist": ["Pow"]}))
    bad = atc(tiny_onnx, tmp_path / "c", f"--modify_mixlist={mix}", "--precision_mode_v2=mixed_float16")
    assert bad.returncode == 1 and "unexpected entry" in bad.stderr
    mix.write_text(json.dumps({"black-list": {"to-add": ["Pow"]}}))
    ok = atc(tiny_onnx, tmp_path / "d", f"--modify_mixlist={mix}", "--precision_mode_v2=mixed_float16")
    assert ok.returncode == 0 and (tmp_path / "d.om").is_file(), ok.stderr


@pytest.fixture
def model(monkeypatch, tiny_onnx, tmp_path):
    """An emulated .om loaded through the pyACL calls, with datasets bound to device buffers."""
    harness.activate(monkeypatch)
    assert atc(tiny_onnx, tmp_path / "m").returncode == 0
    from backends.acl_runtime import runtime as acl_runtime

    acl = acl_runtime()
    assert acl.rt.set_device(0) == 0
    ctx, ret = acl.rt.create_context(0)
    blob = (tmp_path / "m.om").read_bytes()
    ptr, _ = acl.rt.malloc(len(blob), 0)
    assert acl.rt.memcpy(ptr, len(blob), acl.util.bytes_to_ptr(blob), len(blob), 1) == 0
    model_id, ret = acl.mdl.load_from_mem(ptr, len(blob))
    assert ret == 0
    desc = acl.mdl.create_desc()
    acl.mdl.get_desc(desc, model_id)
    sets, mem, bufs = [], [], []
    for sizes in ([acl.mdl.get_input_size_by_index(desc, i) for i in range(acl.mdl.get_num_inputs(desc))],
                  [acl.mdl.get_output_size_by_index(desc, i) for i in range(acl.mdl.get_num_outputs(desc))]):
        ds = acl.mdl.create_dataset()
        for size in sizes:
            p, _ = acl.rt.malloc(size, 0)
            b = acl.create_data_buffer(p, size)
            acl.mdl.add_dataset_buffer(ds, b)
            mem.append(p)
            bufs.append(b)
        sets.append(ds)
    yield acl, model_id, desc, sets, mem
    acl.rt.set_context(ctx)  # a test may have made another context current
    acl.mdl.unload(model_id)
    acl.mdl.destroy_desc(desc)
    for b in bufs:
        acl.destroy_data_buffer(b)
    for ds in sets:
        acl.mdl.destroy_dataset(ds)
    for p in [*mem, ptr]:
        acl.rt.free(p)
    acl.rt.destroy_context(ctx)
    acl.rt.reset_device(0)
    assert harness.live() == {}


def test_model_description_reports_largest_profile_sizes(model):
    acl, _, desc, _, _ = model
    assert acl.mdl.get_num_inputs(desc) == 5                   # four graph inputs + ascend_mbatch_shape_data
    assert acl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data") == (4, 0)
    assert acl.mdl.get_input_size_by_index(desc, 3) == KV * WIDTH * D * 4
    assert acl.mdl.get_input_size_by_index(desc, 1) == (KV + 2) * 8
    assert acl.mdl.get_input_dynamic_gear_count(desc, -1) == (4, 0)
    assert acl.mdl.get_output_data_type(desc, 0) == 0          # ACL_FLOAT
    gears, ret = acl.mdl.get_input_dynamic_dims(desc, -1, 4)
    assert ret == 0 and gears[0]["dimCount"] == 10             # 2 + 2 + 2 + 4 dimensions
    assert gears[0]["dims"] == [1, 1, 1, 9, 1, 1, 1, 8, WIDTH, D]
    assert gears[3]["dims"] == [1, 2, 1, 18, 1, 2, 1, 16, WIDTH, D]
    assert acl.mdl.get_input_dims(desc, 3) == ({"name": "past_key_values", "dimCount": 4,
                                                "dims": [1, -1, WIDTH, D]}, 0)


def full(seq: int, kv: int) -> dict:
    """The documented set_input_dynamic_dims form for this graph: every input's whole shape."""
    dims = [1, seq, 1, kv + seq, 1, seq, 1, kv, WIDTH, D]
    return {"dimCount": len(dims), "name": "", "dims": dims}


def test_execute_needs_a_compiled_profile(model):
    acl, model_id, _, (ins, outs), _ = model
    assert acl.mdl.execute(model_id, ins, outs) != 0           # no gear selected yet
    assert acl.mdl.set_input_dynamic_dims(model_id, ins, 4, full(3, 8)) != 0
    assert "matches no compiled gear" in acl.get_recent_err_msg()
    old_form = {"dimCount": 4, "name": "", "dims": [1, 9, 1, 8]}   # only the -1 values: not a gear
    assert acl.mdl.set_input_dynamic_dims(model_id, ins, 4, old_form) != 0
    assert "every dimension of every input" in acl.get_recent_err_msg()
    assert acl.mdl.set_input_dynamic_dims(model_id, ins, 3, full(1, 8)) != 0   # wrong input index
    assert acl.mdl.set_input_dynamic_dims(model_id, ins, 4, full(1, 8)) == 0
    assert acl.mdl.execute(model_id, ins, outs) == 0


def test_memory_access_is_bounds_checked(model):
    acl, *_ = model
    a, _ = acl.rt.malloc(64, 0)
    b, _ = acl.rt.malloc(64, 0)
    data = np.arange(16, dtype=np.int32).tobytes()
    try:
        assert acl.rt.memcpy(a, 64, acl.util.bytes_to_ptr(data), 64, 1) == 0
        assert acl.rt.memcpy(b + 32, 64, a, 64, 3) != 0         # dest_max larger than what is left
        assert acl.rt.memcpy(b + 32, 32, a, 64, 3) != 0         # count above dest_max
        assert acl.rt.memcpy(b, 64, a + 32, 64, 3) != 0         # source overruns its allocation
        assert acl.rt.memcpy(b + 16, 48, a, 48, 3) == 0
        assert acl.util.ptr_to_bytes(b + 16, 48) == data[:48]
        assert acl.rt.memcpy(acl.util.bytes_to_ptr(data), 64, a, 64, 2) != 0   # bytes are read-only
    finally:
        acl.rt.free(a)
        acl.rt.free(b)


def test_runtime_refuses_out_of_order_release_and_second_init(model):
    acl, *_ = model
    assert acl.init() == 100002                                 # acl.init is once per process
    ctx, _ = acl.rt.create_context(0)
    p, _ = acl.rt.malloc(32, 0)
    assert acl.rt.destroy_context(ctx) != 0                      # memory still lives in it
    assert acl.rt.reset_device(0) != 0                           # an explicit context is still alive
    acl.rt.free(p)
    assert acl.rt.destroy_context(ctx) == 0
