"""report.json (every figure, for us) and report.md (the same, for a person to paste into a bug report)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from board.failures import Failure

PACKAGES = ("numpy", "onnx", "onnxruntime", "transformers", "tokenizers", "safetensors")


def versions(root: Path) -> dict:
    out = {"python": platform.python_version(), "machine": platform.machine(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        out["git_commit"] = None
    return out


@dataclass
class Report:
    command: str
    options: dict
    steps: dict[str, str] = field(default_factory=dict)   # step -> ok | failed | skipped: why
    environment: dict = field(default_factory=dict)
    tiny: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    errors: list[Failure] = field(default_factory=list)
    versions: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {"passed": self.passed, "command": self.command, "options": self.options, "steps": self.steps,
                "environment": self.environment, "tiny": self.tiny, "model": self.model,
                "errors": [e.as_dict() for e in self.errors], "versions": self.versions}

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        as_json, as_md = folder / "report.json", folder / "report.md"
        as_json.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")
        as_md.write_text(self.markdown())
        return as_json, as_md

    def markdown(self) -> str:
        env, tiny, model = self.environment, self.tiny, self.model
        lines = ["# npu-check report", "",
                 f"**{'PASSED' if self.passed else 'FAILED'}**: `{self.command}`", "",
                 "| step | result |", "| --- | --- |"]
        lines += [f"| {step} | {result} |" for step, result in self.steps.items()]
        if self.errors:
            lines += ["", "## Errors", ""]
            for e in self.errors:
                lines.append(f"- **{e.step}**: {e.message}")
                if e.call:
                    lines.append(f"  - call: `{e.call}`; return code: {e.code}; runtime message: {e.detail or '-'}")
        lines += ["", "## Environment", ""]
        for check in env.get("checks", []):
            lines.append(f"- {check['name']}: **{check['status']}**: {check['message']}")
        for key in ("soc", "cann_version", "driver_version", "toolkit_home"):
            if env.get(key):
                lines.append(f"- {key}: {env[key]}")
        if tiny:
            lines += ["", "## Tiny random model (our pyACL calls and atc, without the model)", "",
                      f"- max |logit difference| NPU vs onnxruntime: {tiny.get('max_abs_diff')} "
                      f"(allowed {tiny.get('atol')})",
                      f"- greedy tokens match: {tiny.get('tokens_match')}"]
            for part in ("batch1", "batch2"):
                if tiny.get(part):
                    p = tiny[part]
                    lines.append(f"- {part}: {p['steps']} calls compared, max diff {p['max_abs_diff']}, "
                                 f"{p['ties']} ties, {len(p['mismatches'])} mismatches")
        if model:
            lines += ["", "## Model", "",
                      f"- model: {model.get('hf_model_dir')} (kv_cache_length {model.get('kv_cache_length')}, "
                      f"max_prefill_length {model.get('max_prefill_length')})",
                      f"- greedy tokens match the CPU: {model.get('tokens_match')} ({model.get('steps')} calls, "
                      f"{model.get('ties')} ties, max logit difference {model.get('max_abs_diff')})",
                      f"- prefill: {model.get('prefill_tok_s')} tokens/s; decode: {model.get('decode_tok_s')} tokens/s",
                      f"- peak device memory: {model.get('peak_device_mem_mb')} MB",
                      f"- decode moved {model.get('achieved_gb_s')} GB/s ({model.get('bytes_per_token')} bytes per "
                      "token: weights and the whole cache)"]
            if model.get("bandwidth_share") is not None:
                lines.append(f"- bandwidth bound: {model['bound_tok_s']} tokens/s at {model['bandwidth_gb_s']} GB/s "
                             f"({model['bandwidth_source']}); decode reaches {model['bandwidth_share']:.1%} of it")
            else:
                lines.append("- bandwidth bound: this chip is not in board/bandwidth.py's table (the raw figure "
                             "is above)")
            for i, answer in enumerate(model.get("answers", []), 1):
                lines.append(f"- answer {i}: {' '.join(str(answer).split())[:300]}")
        lines += ["", "## Versions", ""]
        lines += [f"- {k}: {v}" for k, v in self.versions.items()]
        lines += ["", f"Logs of each tool: `{self.options.get('output_dir')}/logs/`. Python: {sys.executable}", ""]
        return "\n".join(lines)
