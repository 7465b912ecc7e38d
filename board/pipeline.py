"""The project's own tools run as a user runs them (export_onnx.py, change_node.py, onnx2om.py), each in its
own process with its output kept in a log file; a failure becomes one line naming the tool, its exit code
and, for a compile, the atc command and atc's first error line."""
from __future__ import annotations

import os
import re
import sys
import subprocess
from pathlib import Path

from board.failures import StepError, one_line

ROOT = Path(__file__).resolve().parents[1]
# CANN's error codes look like E10001 / EZ9999; atc also ends a failed run with "ATC run failed".
ATC_ERROR = re.compile(r"\b(E[0-9A-Z]\d{4}\b.*|ATC run failed.*)")


def run_tool(script: str, args: list[str], log: Path, verbose: bool) -> str:
    """Run one of our scripts; its combined output goes to `log` (and to the terminal with --verbose).
    Returns the output; raises StepError with the script's own last error line when it fails."""
    cmd = [sys.executable, str(ROOT / script), *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = done.stdout or ""
    log.write_text(f"$ {' '.join(cmd)}\n{output}\n[exit {done.returncode}]\n")
    if verbose:
        print(output, end="" if output.endswith("\n") else "\n")
    if done.returncode != 0:
        raise tool_failure(Path(script).name, done.returncode, output, log)
    return output


def tool_failure(name: str, code: int, output: str, log: Path) -> StepError:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    own = next((line for line in reversed(lines) if f"{name}: error:" in line), None)
    atc_cmd = next((line[len("running: "):] for line in lines if line.startswith("running: atc ")), None)
    if atc_cmd is not None:
        atc_code = re.search(r"atc exited with (-?\d+)", output)
        first = next((m.group(1) for line in lines if (m := ATC_ERROR.search(line))), None)
        first = first or (lines[-2] if len(lines) > 1 else "no message")
        return StepError(f"atc failed (exit {atc_code.group(1) if atc_code else code}): {one_line(first)[:300]} "
                         f"(command and full output in {log})", call=atc_cmd,
                         code=int(atc_code.group(1)) if atc_code else code, detail=one_line(first))
    message = own.split(": error: ", 1)[1] if own else (lines[-1] if lines else "no output")
    return StepError(f"{name} exited with {code}: {one_line(message)[:300]} (full output in {log})",
                     call=name, code=code, detail=one_line(message))


def export(hf_model_dir: Path, onnx_path: Path, kv: int, dtype: str, logs: Path, verbose: bool) -> None:
    run_tool("export/export_onnx.py", ["--hf_model_dir", str(hf_model_dir), "--onnx_model_path", str(onnx_path),
                                       "--kv_cache_length", str(kv), "--dtype", dtype],
             logs / f"export_{onnx_path.stem}.log", verbose)


def patch(onnx_path: Path, patched: Path, logs: Path, verbose: bool) -> None:
    run_tool("export/change_node.py", ["--input_model_path", str(onnx_path), "--output_model_path", str(patched)],
             logs / f"patch_{patched.stem}.log", verbose)


def compile_om(patched: Path, om_base: Path, soc: str, mpl: int, batch: int, hf_model_dir: Path, cpu_thread: int,
               logs: Path, verbose: bool) -> Path:
    """onnx2om.py with the chip the runtime named: the .om path it wrote."""
    run_tool("export/onnx2om.py", ["--onnx_model_path", str(patched), "--om_model_path", str(om_base),
                                   "--soc_version", soc, "--max_prefill_length", str(mpl), "--max_batch", str(batch),
                                   "--hf_model_dir", str(hf_model_dir), "--cpu_thread", str(cpu_thread)],
             logs / f"compile_{om_base.name}.log", verbose)
    om = om_base.with_name(om_base.name + ".om")
    if not om.is_file():
        raise StepError(f"onnx2om.py reported success but {om} is missing", call="atc")
    return om
