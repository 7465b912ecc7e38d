"""Schema-driven fuzzing: schemathesis generates valid and invalid requests from the server's own
OpenAPI document (bounded, seeded) and no answer may be a 5xx. Run twice: on the scripted session
(many cases, fast) and on the tiny real model, whose tokenizer and chat template see the odd inputs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from api_helpers import ROOT, fake_server_args, serve, tiny_server_args

pytestmark = pytest.mark.slow

ST = Path(sys.executable).parent / "st"  # installed beside the interpreter running the tests


@pytest.fixture(scope="module", params=["fake", "tiny"])
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    model_dir = request.getfixturevalue("tiny_model_dir")
    if request.param == "fake":
        args = fake_server_args(model_dir)
    else:
        # answers capped at 64 tokens so that generated requests without max_tokens stay quick
        onnx_path = request.getfixturevalue("tiny_onnx_of")(model_dir, 1024)
        args = tiny_server_args(model_dir, onnx_path, "--max_output_length", "64")
    with serve(args, tmp) as s:
        yield s


def test_fuzzing_the_openapi_document_finds_no_server_error(server) -> None:
    st = str(ST) if ST.exists() else "st"
    run = subprocess.run([st, "--no-color", "run", server.url + "/openapi.json", "--checks", "not_a_server_error",
                          "--max-examples", "40", "--seed", "20260101", "--request-timeout", "120"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    print(counts.group(0) if counts else run.stdout[-2000:])
    assert run.returncode == 0, run.stdout[-4000:]
    assert counts and int(counts.group(1)) > 100 and counts.group(1) == counts.group(2)
    assert "Traceback" not in server.log.read_text()
    assert server.health()["status"] == "ok"
