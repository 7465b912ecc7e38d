"""Compile the patched ONNX graph into an Ascend offline model (.om) with CANN's atc.

    python export/onnx2om.py --onnx_model_path output/onnx2/m.onnx --om_model_path output/model/m \
        --max_prefill_length 8 [--soc_version Ascend310B1] [--dry_run]

One atc profile per prefill length {1, 2, 4, ..., max} for each cache size {kv_len/2, kv_len}; every
profile gives, in order, the values of the -1 dims: seq, seq+kv, seq, kv. --max_prefill_length 1
compiles static shapes (no --dynamic_dims). --max_batch N compiles a static batch of N (one cache row per
conversation, N conversations served at once); the half-cache profiles are then left out, since a
[N, kv/2] block is not a prefix of the [N, kv] cache.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


from export.check_ops import unlisted_ops
from core.contract import PRODUCER, ModelShape, cache_width, mismatches, read_meta
from core.errors import UserError, run_main
from core.flags import ArgumentParser

MIXLIST = Path(__file__).resolve().with_name("ops_info.json")
MAX_PROFILES = 100  # atc's documented --dynamic_dims range is (1, 100]
PRECISION_MODES = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16")
AUTO_HELP = ("source the CANN set_env.sh (it sets ASCEND_HOME_PATH) on the board, or pass --soc_version, "
             "e.g. Ascend310B1 (a model compiled for one chip runs only on that chip)")


class SocError(UserError):
    """The chip could not be detected; with --dry_run only a note, otherwise the error."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description="Compile the (change_node-patched) ONNX model to an Ascend .om with atc.")
    p.add_argument("--soc_version", default="auto",
                   help="target chip, e.g. Ascend310B1; auto asks the CANN runtime of this board (default auto)")
    p.add_argument("--hf_model_dir", help="HuggingFace model directory; when given, its config.json must agree "
                                          "with the ONNX model's recorded settings")
    p.add_argument("--onnx_model_path", required=True, help="the .onnx from change_node.py")
    p.add_argument("--om_model_path", required=True, help="output path WITHOUT .om (atc appends it)")
    p.add_argument("--max_batch", type=int, default=1,
                   help="the batch compiled in, a fixed number: the conversations the .om serves at once, each in "
                        "its own cache rows (pass the same --max_batch to cli_chat.py / api.py) (default 1)")
    p.add_argument("--cpu_thread", type=int, default=1,
                   help="compile threads (TE_PARALLEL_COMPILER, MAX_COMPILE_CORE_NUMBER); each needs memory, "
                        "so 1 suits 8 GB boards (default 1)")
    p.add_argument("--max_prefill_length", type=int, default=8,
                   help="longest prefill chunk, a power of two; 1 compiles static shapes (default 8)")
    p.add_argument("--kv_cache_length", type=int, default=None,
                   help="KV cache length; must equal the exported one (default: read from the ONNX model)")
    p.add_argument("--precision_mode_v2", choices=PRECISION_MODES, default="mixed_float16",
                   help="atc precision mode; mixed_float16 adds ops_info.json as --modify_mixlist "
                        "(default mixed_float16)")
    p.add_argument("--dry_run", action="store_true", help="print the atc command and profiles, run nothing")
    return p.parse_args(argv)


def model_settings(a: argparse.Namespace) -> dict[str, int]:
    """Layers, kv heads, head dim and kv length as recorded by export_onnx.py; UserError on conflicts."""
    meta = read_meta(a.onnx_model_path)
    if meta.get("producer") != PRODUCER:
        raise UserError(f"{a.onnx_model_path} carries no {PRODUCER} metadata: export it with "
                         "export/export_onnx.py (then change_node.py) so its cache layout is known")
    asked: dict[str, object] = {"kv_cache_length": a.kv_cache_length}
    if a.hf_model_dir:
        asked.update(ModelShape.from_dir(a.hf_model_dir).as_meta())
    problems = mismatches(meta, asked)
    if problems:
        raise UserError("; ".join(problems))
    keys = ("num_hidden_layers", "num_key_value_heads", "head_dim", "kv_cache_length")
    return {k: int(meta[k]) for k in keys}


def prefill_lengths(max_prefill_length: int) -> list[int]:
    return [1 << i for i in range(max_prefill_length.bit_length())]


def profiles(max_prefill_length: int, kv_len: int, batch: int = 1) -> list[tuple[int, int, int, int]]:
    """(seq, seq+kv, seq, kv) per profile: every prefill length for the half cache (batch 1 only), then
    the full one."""
    if max_prefill_length == 1:
        return []
    caches = (kv_len // 2, kv_len) if batch == 1 else (kv_len,)
    return [(s, s + kv, s, kv) for kv in caches for s in prefill_lengths(max_prefill_length)]


def input_shape(batch: str, s: dict[str, int], static: bool) -> str:
    kv, width = s["kv_cache_length"], cache_width(s["num_hidden_layers"], s["num_key_value_heads"])
    seq, total, past = ("1", str(kv + 1), str(kv)) if static else ("-1", "-1", "-1")
    return (f"input_ids:{batch},{seq};attention_mask:{batch},{total};position_ids:{batch},{seq};"
            f"past_key_values:{batch},{past},{width},{s['head_dim']}")


def atc_command(a: argparse.Namespace, soc: str, s: dict[str, int]) -> list[str]:
    table = profiles(a.max_prefill_length, s["kv_cache_length"], a.max_batch)
    cmd = ["atc", "--framework=5", f"--model={a.onnx_model_path}", f"--output={a.om_model_path}",
           f"--soc_version={soc}", "--input_format=ND",
           f"--input_shape={input_shape(str(a.max_batch), s, static=not table)}"]
    if table:
        cmd.append("--dynamic_dims=" + ";".join(",".join(map(str, p)) for p in table))
    cmd.append(f"--precision_mode_v2={a.precision_mode_v2}")
    if a.precision_mode_v2 == "mixed_float16":
        cmd.append(f"--modify_mixlist={MIXLIST}")
    cmd.append("--log=error")
    return cmd


def detect_soc(env: dict[str, str] | None = None, load=ctypes.CDLL) -> str:
    """The chip of this board, from CANN's runtime (rtGetSocVersion), confirmed by the toolkit's
    platform config <soc>.ini: without that file atc cannot compile for the chip."""
    env = os.environ if env is None else env
    home = env.get("ASCEND_HOME_PATH")
    if not home:
        raise SocError(f"--soc_version auto: ASCEND_HOME_PATH is not set; {AUTO_HELP}")
    root = Path(home)
    libs = [p for p in (root / "lib64/libruntime.so", root / "runtime/lib64/libruntime.so") if p.is_file()]
    if not libs:
        raise SocError(f"--soc_version auto: no libruntime.so under {root}; {AUTO_HELP}")
    buf = ctypes.create_string_buffer(64)
    ret = load(str(libs[0])).rtGetSocVersion(buf, ctypes.c_uint32(len(buf)))
    if ret != 0 or not buf.value:
        raise SocError(f"--soc_version auto: rtGetSocVersion returned {ret} (no NPU visible? check npu-smi info); "
                       f"{AUTO_HELP}")
    soc = buf.value.decode()
    inis = [d / f"{soc}.ini" for d in (root / "data/platform_config", root / "compiler/data/platform_config",
                                       *root.glob("*-linux/data/platform_config"))]
    if not any(p.is_file() for p in inis):
        raise SocError(f"the board reports {soc}, but the CANN toolkit at {root} has no platform config "
                       f"{soc}.ini, so atc cannot compile for it: install a toolkit that supports {soc}")
    return soc


def compile_env(cpu_thread: int) -> dict[str, str]:
    env = dict(os.environ)
    env["TE_PARALLEL_COMPILER"] = str(min(cpu_thread, 32))  # documented range 1..32
    env["MAX_COMPILE_CORE_NUMBER"] = str(cpu_thread)
    return env


def check_args(a: argparse.Namespace) -> None:
    mpl = a.max_prefill_length
    if mpl < 1 or mpl & (mpl - 1):
        raise UserError(f"--max_prefill_length {mpl}: must be a power of two (1, 2, 4, 8, ...)")
    if a.max_batch < 1 or a.cpu_thread < 1:
        raise UserError("--max_batch and --cpu_thread must be at least 1")
    if a.om_model_path.endswith(".om"):
        raise UserError(f"--om_model_path {a.om_model_path}: leave out .om, atc appends it")
    if not Path(a.onnx_model_path).is_file():
        raise UserError(f"--onnx_model_path {a.onnx_model_path}: no such file")


def check_shapes(a: argparse.Namespace, s: dict[str, int]) -> None:
    kv, mpl = s["kv_cache_length"], a.max_prefill_length
    if mpl > 1 and (kv % 2 or mpl > kv // 2):
        raise UserError(f"--max_prefill_length {mpl} with kv_cache_length {kv}: the cache must be even and at "
                        "least twice the prefill length (profiles use kv/2 and kv)")
    count = len(profiles(mpl, kv, a.max_batch))
    if count > MAX_PROFILES:
        raise UserError(f"{count} profiles; atc accepts at most {MAX_PROFILES}: lower --max_prefill_length")


def print_plan(cmd: list[str], a: argparse.Namespace, s: dict[str, int]) -> None:
    print(shlex.join(cmd))
    table = profiles(a.max_prefill_length, s["kv_cache_length"], a.max_batch)
    print(f"batch {a.max_batch} (static)")
    if not table:
        print(f"static shapes: seq 1, kv {s['kv_cache_length']} (--max_prefill_length 1, no --dynamic_dims)")
    for i, (seq, total, _, kv) in enumerate(table):
        print(f"profile {i:2d}: seq {seq:3d}  kv {kv:5d}  attention_mask {total}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_main("onnx2om.py", lambda: run(a))


def run(a: argparse.Namespace) -> int:
    check_args(a)
    settings = model_settings(a)
    soc = a.soc_version
    if soc == "auto":
        try:
            soc = detect_soc()
        except SocError as e:
            if not a.dry_run:
                raise
            print(f"# {e}", file=sys.stderr)
            soc = None
    check_shapes(a, settings)
    import onnx
    missing = unlisted_ops(onnx.load(a.onnx_model_path, load_external_data=False))
    if missing:
        raise UserError("ops outside CANN's documented ONNX op list: "
                        + ", ".join(f"{k} x{v}" for k, v in missing.items())
                        + " (see export/check_ops.py; patch them with change_node.py)")
    cmd = atc_command(a, soc or "<soc_version>", settings)
    if a.dry_run:
        print_plan(cmd, a, settings)
        return 0
    if shutil.which("atc") is None:
        print(shlex.join(cmd))
        raise UserError("atc is not on PATH: source the CANN toolkit's set_env.sh, then run the command above", 1)
    Path(a.om_model_path).parent.mkdir(parents=True, exist_ok=True)
    # The exact command goes first into the log, so a failed compile can be rerun and reported as it ran.
    print(f"running: {shlex.join(cmd)}", flush=True)
    done = subprocess.run(cmd, env=compile_env(a.cpu_thread))
    if done.returncode != 0:
        raise UserError(f"atc exited with {done.returncode}; its messages are above", 1)
    out = Path(a.om_model_path + ".om")
    if not out.is_file():
        raise UserError(f"atc reported success but {out} is missing", 1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
