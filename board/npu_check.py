"""Check an Ascend machine end to end and write a report to attach to a bug report.

    make npu-check                      # or: python board/npu_check.py [--hf_model_dir DIR] [--skip_model]

Three steps, each stopping the run when it fails (the later ones are then reported as skipped):

  1. environment: the CANN toolkit and its version, atc on PATH, `import acl`, the driver (npu-smi info),
     the chip (acl.get_soc_name(), so --soc_version is never guessed) and its free device memory;
  2. tiny: a tiny random Qwen exported, patched, compiled with onnx2om.py and run through AclSession and
     through onnxruntime, logits compared call by call (prefill chunks, decode, a second turn on the cache,
     two rows of a --max_batch 2 model): this tests our pyACL calls and atc without the model;
  3. model: the model in --hf_model_dir exported at float16 and compiled, a two-turn greedy chat compared
     token by token with the CPU, prefill and decode tokens/s, peak device memory, and decode speed as a
     share of the chip's memory-bandwidth bound.

Writes <output_dir>/report.json and report.md, and the output of every tool under <output_dir>/logs/.
Exit status 0 when every step passed, 1 when one failed (stderr names the step in one line), 2 for bad
flags. A failure names the failing pyACL or atc call, its return code and acl.get_recent_err_msg();
--verbose adds tracebacks and every tool's output.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from board import default_model, environment, report, tiny
from board.failures import Failure, describe
from core.errors import UserError, run_main
from core.flags import ArgumentParser, add_flags, from_args, option

PROG = "npu_check.py"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = "download/Qwen2.5-Coder-0.5B-Instruct"
TINY_DEVICE_BYTES = 64 * 1024 ** 2


@dataclass
class CheckOptions:
    hf_model_dir: str = option(DEFAULT_MODEL_DIR, help="the model step's HuggingFace model directory (make model "
                                                       "downloads the default one)")
    output_dir: str = option("output/npu_check", help="where report.json, report.md, logs/ and the built models go")
    soc_version: str = option("auto", help="the chip to compile for; auto asks the runtime (acl.get_soc_name()); "
                                           "another value must name the same chip")
    kv_cache_length: int = option(1024, help="the model step's KV cache length (what make serve compiles)")
    max_prefill_length: int = option(8, help="the model step's longest prefill chunk, a power of two")
    max_new_tokens: int = option(32, help="greedy tokens per chat turn in the model step")
    cpu_thread: int = option(1, help="atc compile threads; each takes memory, 1 suits an 8 GB board")
    skip_model: bool = option(False, help="stop after the tiny model (minutes instead of tens of minutes)")
    verbose: bool = option(False, help="print every tool's output and the traceback of a failure")

    def __post_init__(self) -> None:
        mpl, kv = self.max_prefill_length, self.kv_cache_length
        if mpl < 1 or mpl & (mpl - 1):
            raise UserError(f"--max_prefill_length {mpl}: must be a power of two (1, 2, 4, 8, ...)")
        if kv < 2 or kv % 2 or (mpl > 1 and mpl > kv // 2):
            raise UserError(f"--kv_cache_length {kv}: must be even and at least twice --max_prefill_length")
        for name in ("max_new_tokens", "cpu_thread"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} {getattr(self, name)}: must be at least 1")
        if not self.skip_model and not (Path(self.hf_model_dir) / "config.json").is_file():
            raise UserError(f"--hf_model_dir {self.hf_model_dir}: no config.json there (run `make model` for the "
                            "default model, or pass --skip_model)")


def parse_args(argv: list[str] | None = None) -> CheckOptions:
    first, _, rest = (__doc__ or "").partition("\n\n")
    p = ArgumentParser(prog=PROG, description=first + "\n\n" + rest,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, CheckOptions)
    args = p.parse_args(argv)
    try:
        return from_args(CheckOptions, args)   # its checks raise UserError: one line, as argparse's own errors
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(e.code) from None


class Runner:
    """Runs the steps in order; a failed step is recorded and the later ones are skipped."""

    def __init__(self, options: CheckOptions, argv: list[str]) -> None:
        self.o = options
        self.out = Path(options.output_dir)
        self.logs = self.out / "logs"
        self.report = report.Report(command=shlex.join([PROG, *argv]),
                                    options=asdict(options), versions=report.versions(ROOT))
        self.failed: Failure | None = None

    def say(self, text: str) -> None:
        print(f"[npu-check] {text}", flush=True)

    def step(self, name: str, body: Callable[[], object]) -> object | None:
        if self.failed is not None:
            self.report.steps[name] = f"skipped: step {self.failed.step} failed"
            return None
        self.say(f"{name} ...")
        try:
            value = body()
        except Exception as e:  # every failure becomes one reported line; --verbose keeps the traceback
            failure = describe(name, e)
            self.report.errors.append(failure)
            self.report.steps[name] = f"failed: {failure.message}"
            self.failed = failure
            partial = getattr(e, "env", None) or getattr(e, "result", None)
            if partial is not None:
                self.record(name, partial)
            if self.o.verbose:
                traceback.print_exc()
            self.say(f"{name}: FAILED: {failure.message}")
            return None
        self.report.steps[name] = "ok"
        self.record(name, value)
        self.say(f"{name}: ok")
        return value

    def record(self, name: str, value: object) -> None:
        setattr(self.report, name, value.as_dict() if hasattr(value, "as_dict") else value)

    def run(self) -> int:
        o = self.o

        def check_environment() -> environment.Environment:
            need, what = TINY_DEVICE_BYTES, "the tiny model"
            if not o.skip_model:
                need = max(need, default_model.needed_device_bytes(Path(o.hf_model_dir), o.kv_cache_length))
                what = f"{Path(o.hf_model_dir).name} at float16, loaded twice, and its cache"
            return environment.run(o.soc_version, need, what)

        env = self.step("environment", check_environment)
        if env is not None:
            for check in env.checks:
                self.say(f"  {check.line()}")
        elif self.report.environment:
            for check in self.report.environment.get("checks", []):
                self.say(f"  {check['name']}: {check['status']}: {check['message']}")
        soc = env.soc if env is not None else None
        result = self.step("tiny", lambda: tiny.run(self.out / "tiny", soc, o.cpu_thread, self.logs, o.verbose))
        if result is not None:
            self.say(f"  tiny: max |logit diff| {result.max_abs_diff:.3g}, tokens match: {result.tokens_match}")
        if o.skip_model:
            self.report.steps["model"] = "skipped: --skip_model"
        else:
            model = self.step("model", lambda: default_model.run(
                Path(o.hf_model_dir), soc, o.kv_cache_length, o.max_prefill_length, o.max_new_tokens, o.cpu_thread,
                self.out / "model", self.logs, o.verbose))
            if model is not None:
                self.say(f"  model: tokens match: {model['tokens_match']}, prefill {model['prefill_tok_s']} tok/s, "
                         f"decode {model['decode_tok_s']} tok/s, bandwidth share {model['bandwidth_share']}")
        _, md = self.report.write(self.out)
        self.say(f"report: {md} (attach it to a bug report)")
        if self.failed is not None:
            print(f"{PROG}: error: step {self.failed.step} failed: {self.failed.message}", file=sys.stderr)
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_args(argv)
    return run_main(PROG, lambda: Runner(options, argv).run())


if __name__ == "__main__":
    sys.exit(main())
