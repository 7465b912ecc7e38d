"""onnxsim against onnxslim as `change_node.py --simplify` on exported npu graphs, side by side.

    python bench/experiments/simplify_compare.py --onnx_model_path output/onnx/q.onnx [more .onnx ...]

For each graph, change_node.py runs three times, each in its own process: without --simplify (the
cost of loading and writing the graph, the baseline), with --simplify onnxsim and with --simplify
onnxslim. Each run's wall time and peak RSS come from os.wait4, so they are that process's alone.
Then the input graph and every result run on onnxruntime, again one process each, on the same
prompt (bench/prompt.txt through the chat template) in one prefill call and --decode_steps greedy
decode calls, with the static KV cache fed as the sessions feed it. onnxruntime's own graph
optimizations are off there, so each graph computes as written. Reported against the input graph:
max abs diff of the logits and of out_key_values, and whether the greedy tokens are the same.
Writes bench/experiments/simplify_compare.json. Minutes per graph, and the fp32 default model needs ~11 GB of
RAM at the peak (onnxslim). Run it once; it is not part of the test suite.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.flags import ArgumentParser, add_flags, from_args, option

REPO = Path(__file__).resolve().parents[2]

TOOLS = ("none", "onnxsim", "onnxslim")


class BenchError(Exception):
    """A graph this bench cannot measure; reported in one line."""


def run_measured(cmd: list[str], log: Path) -> dict:
    """Exit code, wall and CPU seconds and peak RSS of one child process (its output goes to log).
    CPU seconds move less than wall seconds when other work shares the cores."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return {"exit_code": os.waitstatus_to_exitcode(status), "wall_s": round(time.perf_counter() - start, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "load_avg_before": round(load, 1)}


def files_mb(onnx_path: Path) -> float:
    return sum(p.stat().st_size for p in (onnx_path, onnx_path.with_name(onnx_path.name + ".data"))
               if p.exists()) / 2 ** 20


def graph_facts(onnx_path: Path) -> dict:
    """Node count, size, metadata and ops atc does not document; the weights are not read."""
    import onnx

    from export.check_ops import unlisted_ops

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {"nodes": len(model.graph.node), "size_mb": round(files_mb(onnx_path)),
            "meta": {p.key: p.value for p in model.metadata_props},
            "unlisted_ops": unlisted_ops(model)}


def prompt_ids(hf_model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_model_dir)
    text = (REPO / "bench/prompt.txt").read_text()
    return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False))


def run_graph(onnx_path: Path, ids: list[int], decode_steps: int, out_npz: Path, threads: int) -> None:
    """The child process: one prefill of ids, then greedy decode steps; every output saved to out_npz.
    No timings: with onnxruntime's optimizations off they say nothing about a real run."""
    import onnxruntime as ort

    from core.contract import read_meta
    from kvcache import KVCache

    meta = read_meta(onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    dtype = np.float16 if meta["dtype"] == "float16" else np.float32
    cache = KVCache(int(meta["num_hidden_layers"]), int(meta["num_key_value_heads"]), int(meta["head_dim"]),
                    int(meta["kv_cache_length"]), dtype, "fixsize")

    def step(tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        mask, positions, past = cache.step_inputs(len(tokens))
        logits, new_kv = sess.run(None, {"input_ids": np.array([tokens], dtype=np.int64), "attention_mask": mask,
                                         "position_ids": positions, "past_key_values": past})
        cache.append(new_kv)
        return logits[0].astype(np.float32), new_kv[0].astype(np.float32)

    prefill_logits, prefill_kv = step(ids)
    tokens = [int(np.argmax(prefill_logits[-1]))]
    decode_logits, decode_kv = [], []
    for _ in range(decode_steps):
        logits, kv = step([tokens[-1]])
        decode_logits.append(logits[-1])
        decode_kv.append(kv[-1])
        tokens.append(int(np.argmax(logits[-1])))
    np.savez(out_npz, prefill_logits=prefill_logits, prefill_kv=prefill_kv, decode_logits=np.stack(decode_logits),
             decode_kv=np.stack(decode_kv), tokens=np.array(tokens))


def compare(ref: dict, got: dict) -> dict:
    """Differences from the input graph's outputs. Decode step j was fed token j, so its outputs are
    compared only while both graphs chose the same tokens up to there."""
    same = 0
    while same < len(ref["tokens"]) and ref["tokens"][same] == got["tokens"][same]:
        same += 1
    steps = min(same, len(ref["decode_logits"]))
    logits = [np.abs(ref["prefill_logits"] - got["prefill_logits"]).max()]
    kv = [np.abs(ref["prefill_kv"] - got["prefill_kv"]).max()]
    if steps:
        logits.append(np.abs(ref["decode_logits"][:steps] - got["decode_logits"][:steps]).max())
        kv.append(np.abs(ref["decode_kv"][:steps] - got["decode_kv"][:steps]).max())
    return {"logits_max_abs_diff": float(max(logits)), "out_key_values_max_abs_diff": float(max(kv)),
            "greedy_tokens_equal": same == len(ref["tokens"]), "greedy_tokens_agreeing": same,
            "decode_steps_compared": steps}


@dataclass
class CompareOptions:
    onnx_model_path: list[str] = option(help="npu graphs from export_onnx.py")
    hf_model_dir: str = option(str(REPO / "download/Qwen2.5-Coder-0.5B-Instruct"),
                               help="the model the graphs were exported from (its tokenizer builds the prompt)")
    decode_steps: int = option(16, help="greedy decode calls after the prefill")
    threads: int = option(os.cpu_count() or 1, help="onnxruntime threads")
    work_dir: str = option(str(REPO / "output/simplify_compare"),
                           help="a fresh run-* directory is made in it for the simplified graphs and logs")
    keep: bool = option(False, help="keep that directory afterwards")
    output: str = option(str(REPO / "bench/experiments/simplify_compare.json"), help="results")


def measure_graph(onnx_path: Path, work: Path, ids_file: Path, a: CompareOptions) -> dict:
    facts = graph_facts(onnx_path)
    meta = facts.pop("meta")
    dtype = meta.get("dtype", "unknown")
    work = work / dtype
    work.mkdir(parents=True, exist_ok=True)
    print(f"{onnx_path}: {dtype}, {facts['nodes']} nodes, {facts['size_mb']} MB", flush=True)

    def run_on_ort(graph: Path, name: str) -> dict | None:
        npz = work / f"{name}.npz"
        run = run_measured([sys.executable, __file__, "--_run_graph", str(graph), str(ids_file),
                            str(a.decode_steps), str(npz), str(a.threads)], work / f"{name}.ort.log")
        if run["exit_code"] != 0:
            return None
        with np.load(npz) as f:
            res = {k: f[k] for k in f.files}
        npz.unlink()
        return res

    ref = run_on_ort(onnx_path, "input")
    if ref is None:
        raise BenchError(f"onnxruntime could not run {onnx_path} (see {work / 'input.ort.log'}, kept)")
    entry = {"graph": str(onnx_path), "dtype": dtype, "kv_cache_length": int(meta.get("kv_cache_length", 0)),
             **facts, "greedy_tokens": [int(t) for t in ref["tokens"]],
             "runs": {}}
    for tool in TOOLS:
        out = work / f"{tool}.onnx"
        cmd = [sys.executable, "export/change_node.py", "--input_model_path", str(onnx_path),
               "--output_model_path", str(out)] + ([] if tool == "none" else ["--simplify", tool])
        log = work / f"{tool}.log"
        run = run_measured(cmd, log)
        print(f"  change_node {tool}: exit {run['exit_code']}, {run['wall_s']} s ({run['cpu_s']} s CPU), "
              f"{run['peak_rss_mb']} MB", flush=True)
        if run["exit_code"] == 0:
            after = graph_facts(out)
            run.update(nodes=after["nodes"], size_mb=after["size_mb"], unlisted_ops=after["unlisted_ops"],
                       metadata_kept=all(after["meta"].get(k) == v for k, v in meta.items()))
            res = run_on_ort(out, tool)
            if res is None:
                run["error"] = f"onnxruntime could not run the result (see {work / (tool + '.ort.log')})"
            else:
                run.update(compare(ref, res))
        elif run["exit_code"] < 0:
            hint = " (out of memory?)" if run["exit_code"] == -9 else ""
            run["error"] = f"killed by signal {-run['exit_code']}{hint}"
        else:
            lines = log.read_text().strip().splitlines()
            run["error"] = lines[-1] if lines else ""
        if not a.keep:
            for f in (out, out.with_name(out.name + ".data")):
                f.unlink(missing_ok=True)
        entry["runs"][tool] = run
    return entry


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("onnxsim", "onnxslim", "onnx", "onnxruntime")}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Compare onnxsim and onnxslim as change_node.py --simplify.")
    add_flags(p, CompareOptions)
    a = from_args(CompareOptions, p.parse_args(argv))
    graphs = [Path(g) for g in a.onnx_model_path]
    missing = [str(g) for g in graphs if not g.is_file()]
    if missing:
        print(f"simplify_compare.py: error: no such graph: {', '.join(missing)}", file=sys.stderr)
        return 2
    from core.contract import read_meta

    ids = prompt_ids(Path(a.hf_model_dir))
    for g in graphs:
        room = int(read_meta(g).get("kv_cache_length", 0))
        if len(ids) + a.decode_steps > room:
            print(f"simplify_compare.py: error: {g}: the {len(ids)}-token prompt and {a.decode_steps} decode "
                  f"steps need more than its {room} cache slots (export it with a longer --kv_cache_length)",
                  file=sys.stderr)
            return 2
    Path(a.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=a.work_dir))
    ids_file = work / "prompt_ids.json"
    ids_file.write_text(json.dumps(ids))
    try:
        results = [measure_graph(g, work, ids_file, a) for g in graphs]
    except BenchError as e:
        print(f"simplify_compare.py: error: {e}", file=sys.stderr)
        return 1
    report = {"setup": {"prompt_tokens": len(ids), "decode_steps": a.decode_steps, "threads": a.threads,
                        "onnxruntime_graph_optimizations": "disabled", "cpu_count": os.cpu_count(),
                        "python": platform.python_version(), **versions()},
              "graphs": results}
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if not a.keep:
        shutil.rmtree(work)  # made by this run, for this run
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--_run_graph":
        run_graph(Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()), int(sys.argv[4]),
                  Path(sys.argv[5]), int(sys.argv[6]))
        sys.exit(0)
    sys.exit(main())
