"""onnx2om.py: the atc command and profiles, its refusals, soc detection; check_ops.py."""
from __future__ import annotations

import ctypes
import json
import shlex
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from emulator import emu_om, harness
from export import check_ops, onnx2om

pytestmark = pytest.mark.emulator

KV = 64


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir, tiny_onnx_of):
    return tiny_onnx_of(tiny_model_dir, KV)


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(harness.ROOT / "export/onnx2om.py"), *args], capture_output=True,
                          text=True, env=env, cwd=harness.ROOT, timeout=300)


def flag(cmd_line: str, name: str) -> str | None:
    for part in shlex.split(cmd_line):
        if part.startswith(f"--{name}="):
            return part.split("=", 1)[1]
    return None


def test_dry_run_prints_command_and_profiles(tiny_onnx, tiny_model_dir):
    r = run("--onnx_model_path", str(tiny_onnx), "--om_model_path", "out/tiny", "--soc_version", "Ascend310B1",
            "--hf_model_dir", str(tiny_model_dir), "--dry_run")
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.splitlines()[0]
    assert cmd.startswith("atc --framework=5 ") and flag(cmd, "input_format") == "ND"
    assert flag(cmd, "input_shape") == ("input_ids:1,-1;attention_mask:1,-1;position_ids:1,-1;"
                                        "past_key_values:1,-1,8,16")
    want = [(s, s + kv, s, kv) for kv in (32, 64) for s in (1, 2, 4, 8)]
    assert flag(cmd, "dynamic_dims") == ";".join(",".join(map(str, p)) for p in want)
    assert flag(cmd, "precision_mode_v2") == "mixed_float16"
    assert json.loads(open(flag(cmd, "modify_mixlist")).read())["black-list"]["to-add"]
    assert sum(line.startswith("profile") for line in r.stdout.splitlines()) == 8


def test_prefill_length_one_compiles_static_shapes(tiny_onnx):
    r = run("--onnx_model_path", str(tiny_onnx), "--om_model_path", "out/t", "--soc_version", "Ascend910B1",
            "--max_prefill_length", "1", "--dry_run")
    cmd = r.stdout.splitlines()[0]
    assert flag(cmd, "dynamic_dims") is None
    assert flag(cmd, "input_shape") == "input_ids:1,1;attention_mask:1,65;position_ids:1,1;past_key_values:1,64,8,16"


def test_max_batch_compiles_a_static_batch_even_for_310b(tiny_onnx, tmp_path, monkeypatch):
    """No shape range (1~N), which 310/310B chips refuse: a fixed batch, and only the full-cache profiles,
    since the rows of a [N, kv/2] block are not the first halves of the [N, kv] cache's rows."""
    r = run("--onnx_model_path", str(tiny_onnx), "--om_model_path", "o/t", "--soc_version", "Ascend310B1",
            "--max_batch", "4", "--dry_run")
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.splitlines()[0]
    assert flag(cmd, "input_shape") == ("input_ids:4,-1;attention_mask:4,-1;position_ids:4,-1;"
                                        "past_key_values:4,-1,8,16")
    assert flag(cmd, "dynamic_dims") == ";".join(f"{s},{s + KV},{s},{KV}" for s in (1, 2, 4, 8))
    assert "~" not in cmd and "batch 4 (static)" in r.stdout
    harness.activate(monkeypatch)
    om = harness.compile_om(tiny_onnx, tmp_path / "batch4", 8, "--max_batch", "4")
    header = emu_om.read_header_file(om)
    assert [spec["shape"][0] for spec in header["inputs"]] == [4, 4, 4, 4]


@pytest.mark.parametrize("args, message", [
    (["--kv_cache_length", "128"], "kv_cache_length: the model was exported with 64"),
    (["--om_model_path", "out/x.om"], "leave out .om"),
    (["--max_prefill_length", "6"], "power of two"),
    (["--max_prefill_length", "64"], "at least twice the prefill length"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_onnx, args, message):
    base = {"--onnx_model_path": str(tiny_onnx), "--om_model_path": "out/x", "--soc_version": "Ascend310B1"}
    base.update(dict(zip(args[::2], args[1::2])))
    r = run(*[x for kv in base.items() for x in kv])
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_hf_config_contradicting_the_export_is_refused(tiny_onnx, make_tiny):
    other = make_tiny(num_layers=3)
    r = run("--onnx_model_path", str(tiny_onnx), "--om_model_path", "o/t", "--soc_version", "Ascend310B1",
            "--hf_model_dir", str(other), "--dry_run")
    assert r.returncode == 2 and "num_hidden_layers: the model was exported with 2, this run asks for 3" in r.stderr


def test_graph_without_our_metadata_is_refused(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    r = run("--onnx_model_path", str(bare), "--om_model_path", "o/t", "--soc_version", "Ascend310B1", "--dry_run")
    assert r.returncode == 2 and "export_onnx.py" in r.stderr


def test_without_atc_the_command_is_printed_and_the_exit_is_non_zero(tiny_onnx, tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    r = run("--onnx_model_path", str(tiny_onnx), "--om_model_path", str(tmp_path / "t"), "--soc_version",
            "Ascend310B1", env=env)
    assert r.returncode == 1
    assert r.stdout.startswith("atc --framework=5 ") and flag(r.stdout, "dynamic_dims")
    assert "atc is not on PATH" in r.stderr and "set_env.sh" in r.stderr


def test_auto_soc_without_cann_says_what_to_do(tiny_onnx, tmp_path):
    r = run("--onnx_model_path", str(tiny_onnx), "--om_model_path", "o/t", env={"PATH": str(tmp_path)})
    assert r.returncode == 2
    assert "set_env.sh" in r.stderr and "--soc_version" in r.stderr and "only on that chip" in r.stderr


class FakeRuntime:
    """What ctypes.CDLL returns for libruntime.so: rtGetSocVersion(char *buf, uint32 len)."""

    def __init__(self, soc: bytes, ret: int = 0):
        self.soc, self.ret = soc, ret

    def __call__(self, path: str) -> "FakeRuntime":
        assert path.endswith("libruntime.so")
        return self

    def rtGetSocVersion(self, buf, length) -> int:
        assert isinstance(length, ctypes.c_uint32) and length.value == len(buf)
        buf.value = self.soc
        return self.ret


def fake_cann(root, soc: str | None):
    (root / "lib64").mkdir(parents=True)
    (root / "lib64/libruntime.so").write_bytes(b"")
    if soc:
        (root / "aarch64-linux/data/platform_config").mkdir(parents=True)
        (root / f"aarch64-linux/data/platform_config/{soc}.ini").write_text("[version]\nSoC_version=" + soc)
    return {"ASCEND_HOME_PATH": str(root)}


def test_detect_soc_reads_the_runtime_and_needs_the_platform_config(tmp_path):
    env = fake_cann(tmp_path / "a", "Ascend310B1")
    assert onnx2om.detect_soc(env, FakeRuntime(b"Ascend310B1")) == "Ascend310B1"
    with pytest.raises(onnx2om.SocError, match="no platform config Ascend910B1.ini"):
        onnx2om.detect_soc(env, FakeRuntime(b"Ascend910B1"))
    with pytest.raises(onnx2om.SocError, match="rtGetSocVersion returned 7"):
        onnx2om.detect_soc(env, FakeRuntime(b"", ret=7))
    with pytest.raises(onnx2om.SocError, match="no libruntime.so"):
        onnx2om.detect_soc({"ASCEND_HOME_PATH": str(tmp_path / "empty")})


def test_compile_passes_thread_settings_to_atc(monkeypatch, tiny_onnx, tmp_path):
    harness.activate(monkeypatch)
    om = harness.compile_om(tiny_onnx, tmp_path / "t", 2, "--cpu_thread", "3")
    header = emu_om.read_header_file(om)
    assert header["compile_env"] == {"TE_PARALLEL_COMPILER": "3", "MAX_COMPILE_CORE_NUMBER": "3"}
    assert header["profiles"] == [[1, 33, 1, 32], [2, 34, 2, 32], [1, 65, 1, 64], [2, 66, 2, 64]]
    assert header["mixlist"]["black-list"]["to-add"]


def small_graph(path, op: str, domain: str = "") -> None:
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))


def test_check_ops_lists_undocumented_ops(tmp_path, tiny_onnx):
    assert check_ops.main([str(tiny_onnx)]) == 0
    small_graph(tmp_path / "gelu.onnx", "Gelu")
    small_graph(tmp_path / "ms.onnx", "FastGelu", "com.microsoft")
    assert check_ops.unlisted_ops(onnx.load(str(tmp_path / "gelu.onnx"))) == {"Gelu": 1}
    assert check_ops.unlisted_ops(onnx.load(str(tmp_path / "ms.onnx"))) == {"com.microsoft::FastGelu": 1}
    assert check_ops.main([str(tmp_path / "gelu.onnx")]) == 1
    assert check_ops.main([str(tmp_path / "missing.onnx")]) == 2


def test_onnx2om_refuses_undocumented_ops_before_atc(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    sig = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    sig.op_type = "HardSwishy"
    odd = tmp_path / "odd.onnx"
    onnx.save(model, str(odd))
    r = run("--onnx_model_path", str(odd), "--om_model_path", "o/t", "--soc_version", "Ascend310B1", "--dry_run")
    assert r.returncode == 2 and "HardSwishy x1" in r.stderr
