"""Test-side helpers for the NPU emulator: put it on sys.path/PATH, compile .om files, read its trace."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

EMULATOR = Path(__file__).resolve().parent
ROOT = EMULATOR.parents[1]


def activate(monkeypatch) -> None:
    """Make `import acl` and `atc` resolve to the emulator for this test (and its subprocesses).
    The venv's bin goes on PATH too, so atc's `env python3` finds onnx and onnxruntime."""
    monkeypatch.syspath_prepend(str(EMULATOR))
    monkeypatch.setenv("PATH", os.pathsep.join([str(EMULATOR), str(Path(sys.executable).parent),
                                                os.environ.get("PATH", "")]))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(EMULATOR), os.environ.get("PYTHONPATH")])))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(EMULATOR), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EMULATOR), str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def compile_om(onnx_path: Path, out_base: Path, max_prefill_length: int, *extra: str) -> Path:
    """export/onnx2om.py with the emulated atc (the caller has activated the emulator)."""
    from export.onnx2om import main

    code = main(["--onnx_model_path", str(onnx_path), "--om_model_path", str(out_base), "--soc_version",
                 "Ascend310B1", "--max_prefill_length", str(max_prefill_length), "--cpu_thread", "2", *extra])
    assert code == 0, f"onnx2om failed with {code}"
    return out_base.with_name(out_base.name + ".om")


def greedy_turn(session, ids: list[int], steps: int) -> list[int]:
    """Feed ids, then `steps` greedy tokens; returns the generated tokens."""
    out, logits = [], session.run(np.array([ids], dtype=np.int64))
    for _ in range(steps):
        out.append(int(np.argmax(logits)))
        logits = session.run(np.array([[out[-1]]], dtype=np.int64))
    return out


def trace():
    """The emulated runtime's event list (import after activate())."""
    from acl._state import state

    return state().trace


def live():
    from acl._state import state

    return state().live()
