"""board/npu_check.py (make npu-check) under the emulated acl and atc: the tiny-model check passes, and each
step's failure is one line on stderr naming the step, the failing call or tool, its return code and the
runtime's message. The default-model run is the slow test at the end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from board import bandwidth, environment, pipeline, tiny
from board.failures import describe
from core.errors import UserError
from emulator import harness

pytestmark = pytest.mark.emulator

ROOT = harness.ROOT
SCRIPT = ROOT / "board" / "npu_check.py"
VENV_BIN = str(Path(sys.executable).parent)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything CANN's set_env.sh or the emulator would have set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ASCEND_", "EMU_")) and k not in ("PYTHONPATH",)}
    env["PATH"] = os.pathsep.join([VENV_BIN, "/usr/bin", "/bin"])
    env.update(extra)
    return env


def emulated(**extra: str) -> dict[str, str]:
    """The emulator on PATH and PYTHONPATH, as the README has a user put it there."""
    return clean_env(PATH=os.pathsep.join([str(harness.EMULATOR), VENV_BIN, "/usr/bin", "/bin"]),
                     PYTHONPATH=str(harness.EMULATOR), **extra)


def check(tmp_path: Path, env: dict[str, str], *flags: str,
          timeout: int = 300) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), "--output_dir", str(out), *flags], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    report = out / "report.json"
    return r, json.loads(report.read_text()) if report.is_file() else {}


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    """stderr without progress bars (AclSession's upload bar redraws with carriage returns)."""
    return [line for line in r.stderr.replace("\r", "\n").splitlines() if line.strip() and "loading " not in line]


def test_the_tiny_check_passes_under_the_emulator(tmp_path):
    r, report = check(tmp_path, emulated(), "--skip_model")
    assert r.returncode == 0, r.stderr
    assert report["passed"] and report["errors"] == []
    assert report["steps"] == {"environment": "ok", "tiny": "ok", "model": "skipped: --skip_model"}
    assert report["tiny"]["tokens_match"] is True
    assert 0 < report["tiny"]["max_abs_diff"] < tiny.ATOL          # float16 rounding shows, nothing more
    assert report["tiny"]["batch1"]["steps"] >= 20 and report["tiny"]["batch2"]["steps"] >= 20
    env = report["environment"]
    assert env["soc"] == "Ascend310B1" and env["free_device_bytes"] > 0 and env["driver_version"] == "23.0.0"
    statuses = {c["name"]: c["status"] for c in env["checks"]}
    assert statuses["atc"] == statuses["pyacl"] == statuses["soc"] == statuses["device_memory"] == "ok"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**PASSED**" in md and "Ascend310B1" in md and "greedy tokens match: True" in md
    assert error_lines(r) == []


def test_without_atc_one_line_names_atc(tmp_path):
    r, report = check(tmp_path, clean_env(PYTHONPATH=str(harness.EMULATOR)), "--skip_model")
    assert r.returncode == 1
    lines = error_lines(r)
    assert len(lines) == 1 and "atc" in lines[0] and "environment" in lines[0], lines
    assert "Traceback" not in r.stderr
    assert report["steps"]["tiny"].startswith("skipped") and report["errors"][0]["step"] == "environment"
    atc = next(c for c in report["environment"]["checks"] if c["name"] == "atc")
    assert atc["status"] == "fail" and "set_env.sh" in atc["message"]


def test_without_cann_each_missing_piece_says_how_to_get_it(tmp_path):
    r, report = check(tmp_path, clean_env(), "--skip_model")
    assert r.returncode == 1
    lines = error_lines(r)
    assert len(lines) == 1 and "atc is not on PATH: it comes with the CANN toolkit" in lines[0], lines
    assert "1 more" in lines[0]
    checks = {c["name"]: c for c in report["environment"]["checks"]}
    assert {n for n, c in checks.items() if c["status"] == "fail"} == {"atc", "pyacl"}
    assert "import acl failed" in checks["pyacl"]["message"] and "set_env.sh" in checks["pyacl"]["message"]
    assert "install the CANN toolkit" in checks["cann_toolkit"]["message"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**FAILED**" in md and "pyacl: **fail**" in md


def test_a_wrong_soc_version_is_refused_before_compiling(tmp_path):
    r, report = check(tmp_path, emulated(), "--skip_model", "--soc_version", "Ascend910B1")
    assert r.returncode == 1
    lines = error_lines(r)
    assert len(lines) == 1 and "--soc_version Ascend910B1, but this chip is Ascend310B1" in lines[0]
    assert not (tmp_path / "out" / "tiny").exists()


def test_too_little_device_memory_is_refused(tmp_path):
    r, report = check(tmp_path, emulated(EMU_ACL_DEVICE_MEMORY=str(16 * 1024 ** 2)), "--skip_model")
    assert r.returncode == 1
    lines = error_lines(r)
    assert len(lines) == 1 and "device_memory: 0.02 GiB free of 0.02 GiB" in lines[0], lines
    assert report["environment"]["total_device_bytes"] == 16 * 1024 ** 2


def test_a_compile_failure_names_the_atc_command_and_its_error(tmp_path):
    """The runtime names a chip this toolkit's atc does not know: the compile step fails with atc's own
    message, its exit code and the command that ran."""
    r, report = check(tmp_path, emulated(EMU_ACL_SOC="Ascend310B9"), "--skip_model")
    assert r.returncode == 1
    lines = error_lines(r)
    assert len(lines) == 1 and "step tiny failed: atc failed (exit 1)" in lines[0], lines
    assert "--soc_version=Ascend310B9: unknown chip" in lines[0]
    error = report["errors"][0]
    assert error["step"] == "tiny" and error["code"] == 1
    assert error["call"].startswith("atc --framework=5 ") and "--soc_version=Ascend310B9" in error["call"]
    assert (tmp_path / "out" / "logs" / "compile_tiny_b1.log").is_file()


@pytest.fixture
def tiny_built(monkeypatch, tmp_path):
    """The tiny model exported, patched and compiled for --max_prefill_length 4 only."""
    harness.activate(monkeypatch)
    model = tiny.make_model(tmp_path / "model")
    onnx_path, patched = tmp_path / "onnx" / "t.onnx", tmp_path / "onnx2" / "t.onnx"
    pipeline.export(model, onnx_path, tiny.KV_CACHE_LENGTH, "float32", tmp_path / "logs", False)
    pipeline.patch(onnx_path, patched, tmp_path / "logs", False)
    om = pipeline.compile_om(patched, tmp_path / "om" / "t4", "Ascend310B1", 4, 1, model, 2, tmp_path / "logs", False)
    return model, patched, om


def test_an_om_without_the_profiles_the_check_runs_is_named(tiny_built):
    model, patched, om = tiny_built
    with pytest.raises(UserError) as caught:
        tiny.compare_oms(model, patched, {1: om, 2: om})
    failure = describe("tiny", caught.value)
    assert "has no profile for a 8-token chunk" in failure.message and "--max_prefill_length 4" in failure.message
    assert harness.live() == {}   # the refused model left nothing allocated


def test_a_failing_pyacl_call_is_reported_with_its_code_and_the_runtime_message(tiny_built, monkeypatch):
    model, patched, om = tiny_built
    monkeypatch.setenv("EMU_ACL_SOC", "Ascend910B1")     # the board is not the chip the .om was built for
    from config import InferenceConfig
    from session import open_session

    with pytest.raises(UserError) as caught:
        open_session(InferenceConfig.create(model, session_type="acl", om_model_path=str(om),
                                            kv_cache_length=tiny.KV_CACHE_LENGTH, max_prefill_length=4))
    failure = describe("tiny", caught.value)
    assert failure.call == "acl.mdl.load_from_mem" and failure.code == 100000
    assert "compiled for Ascend310B1" in failure.detail and "\n" not in failure.message


@pytest.mark.parametrize("flags, message", [
    (["--max_prefill_length", "6"], "must be a power of two"),
    (["--kv_cache_length", "8", "--max_prefill_length", "8"], "at least twice"),
    (["--hf_model_dir", "/nonexistent"], "no config.json there"),
    (["--cpu_thread", "0"], "must be at least 1"),
])
def test_bad_flags_are_one_line_errors(tmp_path, flags, message):
    r, report = check(tmp_path, emulated(), *flags, timeout=60)
    assert r.returncode == 2 and report == {}
    lines = error_lines(r)
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("npu_check.py: error:")


def test_help_explains_the_steps_and_the_report():
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0
    for words in ("make npu-check", "report.md", "acl.get_soc_name()", "--skip_model", "--max_batch 2"):
        assert words in r.stdout


def test_make_npu_check_runs_the_script_on_the_model_dir():
    # --no-print-directory: under a make (make test) the nested one would print "Leaving directory" last
    r = subprocess.run(["make", "--no-print-directory", "-n", "npu-check", "NPU_CHECK_ARGS=--skip_model"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert "board/npu_check.py --hf_model_dir download/Qwen2.5-Coder-0.5B-Instruct --skip_model" in line


NPU_SMI_DOC = """\
+--------------------------------------------------------------------------------------------------------+
| npu-smi 23.0.rc3                                     Version: 23.0.rc3                                 |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 0       310B4                 | Alarm           | 0.0          54                15    / 15            |
| 0       0                     | NA              | 0            6386 / 7545                             |
+===============================+=================+======================================================+
"""


def test_npu_smi_info_is_read_as_documented():
    assert environment.parse_npu_smi(NPU_SMI_DOC) == ("23.0.rc3", [("310B4", "Alarm")])
    assert environment.parse_npu_smi("command not found") == (None, [])


def test_the_toolkit_version_comes_from_its_install_info(tmp_path):
    (tmp_path / "aarch64-linux").mkdir()
    (tmp_path / "aarch64-linux" / "ascend_toolkit_install.info").write_text("package_name=Ascend-cann-toolkit\n"
                                                                           "version=8.0.0\n")
    env = environment.Environment()
    environment.check_toolkit(env, {"ASCEND_TOOLKIT_HOME": str(tmp_path)})
    assert env.cann_version == "8.0.0" and env.checks[0].status == "ok" and "8.0.0" in env.checks[0].message
    env = environment.Environment()
    environment.check_toolkit(env, {"ASCEND_HOME_PATH": str(tmp_path / "nothing-here")})
    assert env.cann_version is None and "version not recorded" in env.checks[0].message


def test_decode_speed_is_a_share_of_a_listed_chips_bound_else_the_raw_figure():
    listed = bandwidth.decode_bound("Ascend310B1", 1_000_000_000, 12.8)
    assert listed["bound_tok_s"] == 25.6 and listed["bandwidth_share"] == 0.5 and listed["achieved_gb_s"] == 12.8
    assert "hiascend.com" in listed["bandwidth_source"]
    unknown = bandwidth.decode_bound("Ascend910B3", 1_000_000_000, 12.8)
    assert unknown["bandwidth_share"] is None and unknown["achieved_gb_s"] == 12.8


@pytest.mark.default_model
def test_the_whole_check_on_the_default_model(tmp_path, default_model_dir):
    """The command a board user runs, on the default model at float16 under the emulator (~3 min on 2
    cores with a 256-token cache)."""
    r, report = check(tmp_path, emulated(), "--hf_model_dir", str(default_model_dir), "--kv_cache_length", "256",
                      "--cpu_thread", "2", timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]
    assert report["passed"] and report["tiny"]["tokens_match"] is True
    model = report["model"]
    assert model["tokens_match"] is True and model["steps"] >= 20 and model["max_abs_diff"] < 1
    assert model["prefill_tok_s"] > 0 and model["decode_tok_s"] > 0 and model["peak_device_mem_mb"] > 500
    assert 0 < model["bandwidth_share"] and model["bandwidth_gb_s"] == 25.6
    assert all(answer.strip() for answer in model["answers"])
