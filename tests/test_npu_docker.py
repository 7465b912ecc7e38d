"""Docker files: every COPY source exists (or is an artifact the documented flow writes), and the
containers' command lines parse with our scripts' own argparse. No image is built here."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.emulator

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = (ROOT / "Makefile").read_text()


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / dockerfile).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    """ARG and ENV values as the image sees them by default (ENV may use earlier ARGs)."""
    values: dict[str, str] = {}
    for word, rest in steps:
        if word in ("ARG", "ENV"):
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                values[name] = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), value)
    return values


def make_var(name: str) -> str:
    return re.search(rf"^{name} \?= (\S+)$", MAKEFILE, re.M).group(1)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile_dev"])
def test_every_copy_source_exists_or_is_a_flow_artifact(dockerfile):
    steps = instructions(dockerfile)
    values = defaults(steps)
    copies = [shlex.split(rest) for word, rest in steps if word == "COPY"]
    assert copies
    for parts in copies:
        for source in parts[:-1]:
            path = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], source)
            if path.startswith("output/"):
                # written by onnx2om.py: the default name is the Makefile's ONNX name with .om
                assert path == "output/model/" + make_var("ONNX_NAME").replace(".onnx", ".om")
            elif path.startswith("download/"):
                assert path == make_var("MODEL_DIR") and (ROOT / path / "config.json").is_file()
            else:
                assert (ROOT / path).exists(), f"{dockerfile}: COPY source {path} is missing"


def test_deployment_command_parses_with_api_flags():
    import api

    steps = instructions("Dockerfile")
    env = defaults(steps)
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert cmd[:2] == ["sh", "-c"]
    setup, _, run = cmd[2].partition(" && exec ")
    assert setup == '. "$ASCEND_SET_ENV"' and env["ASCEND_SET_ENV"].endswith("set_env.sh")
    argv = shlex.split(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], run))
    assert argv[:2] == ["python3", "api.py"]
    a = api.parse_args(argv[2:])
    assert (a.session_type, a.host, a.port) == ("acl", "0.0.0.0", 8000)
    assert a.om_model_path == "/app/" + "output/model/" + make_var("ONNX_NAME").replace(".onnx", ".om")
    assert a.hf_model_dir == "/app/" + make_var("MODEL_DIR")
    assert (a.max_prefill_length, a.kv_cache_length) == (8, int(make_var("KV_CACHE_LENGTH")))
    assert any(w == "EXPOSE" and r == "8000" for w, r in steps)


def test_dev_image_stays_alive():
    cmd = json.loads(next(rest for word, rest in instructions("Dockerfile_dev") if word == "CMD"))
    assert cmd == ["sleep", "infinity"]


def run_script(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "run_container.sh")], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "DRY_RUN": "1", **env}, cwd=ROOT)


def test_run_container_maps_a_310b1_board_and_takes_overrides(tmp_path):
    argv = shlex.split(run_script().stdout)
    assert argv[:3] == ["docker", "run", "-d"] and argv[-1] == "qwen_ascend_llm"
    assert "8000:8000" in argv and "/dev/davinci0" in argv and "/dev/davinci_manager" in argv
    assert "/usr/local/Ascend/driver/lib64:/usr/local/Ascend/driver/lib64:ro" in argv
    om = tmp_path / "m.om"
    argv = shlex.split(run_script(PORT="9000", DEVICES="/dev/davinci1", MOUNTS="/usr/local/dcmi", IMAGE="x:1",
                                  OM_PATH=str(om), MAX_PREFILL_LENGTH="4").stdout)
    assert "9000:8000" in argv and argv[-1] == "x:1"
    assert argv[argv.index("--device") + 1] == "/dev/davinci1" and argv.count("--device") == 1
    assert f"{om}:/mnt/om/model.om:ro" in argv and "OM_PATH=/mnt/om/model.om" in argv
    assert "MAX_PREFILL_LENGTH=4" in argv


def test_run_container_refuses_a_board_it_does_not_fit(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "run_container.sh")], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "DEVICES": str(tmp_path / "no-such-device")}, cwd=ROOT)
    assert r.returncode == 2 and "set DEVICES for your chip" in r.stderr
    assert run_script(PORT="80a").returncode == 2



def test_the_image_file_set_runs_the_acl_path(monkeypatch, tiny_model_dir, tmp_path):
    """Only the files the Dockerfile copies, in a fresh folder, with the emulated pyACL: the API's
    imports and an acl chat step must work, so a module missing from the COPY lines fails here."""
    import shutil
    import sys

    from emulator import harness
    from export.export_onnx import main as export_main

    app = tmp_path / "app"
    app.mkdir()
    for word, rest in instructions("Dockerfile"):
        for source in shlex.split(rest)[:-1] if word == "COPY" else []:
            src = ROOT / source
            if source.startswith(("download/", "output/")) or not src.exists():
                continue  # model artifacts: the tiny model stands in for them below
            (shutil.copytree if src.is_dir() else shutil.copy)(src, app / src.name)
    harness.activate(monkeypatch)
    onnx_path = tmp_path / "tiny.onnx"
    assert export_main(["--hf_model_dir", str(tiny_model_dir), "--onnx_model_path", str(onnx_path),
                        "--kv_cache_length", "64"]) == 0
    om = harness.compile_om(onnx_path, tmp_path / "tiny", 8)
    script = (
        "import api, server.app, uvicorn\n"
        "from config import InferenceConfig\n"
        "from inference import Inference, SamplingParams\n"
        f"e = Inference(InferenceConfig.create(hf_model_dir={str(tiny_model_dir)!r}, session_type='acl', "
        f"om_model_path={str(om)!r}, kv_cache_length=64, max_input_length=32))\n"
        "print(sum(d.token_id is not None for d in e.stream([5, 6, 7], SamplingParams(max_new_tokens=3, "
        "method='greedy'))))\n"
        "e.session.close()\n")
    env = {**os.environ, "PYTHONPATH": str(harness.EMULATOR)}  # the repository itself is not importable
    r = subprocess.run([sys.executable, "-c", script], cwd=app, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile_dev"])
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    r = subprocess.run([str(hadolint), str(ROOT / dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
