"""Side-by-side CPU benchmark: transformers, our ONNX sessions (the --target cpu graph at fp32/int8/int4,
and the atc-facing npu graph at fp32/int4 run on the CPU), llama.cpp and onnxruntime-genai on the same
prompt, each run in its own process. `make bench` runs it.

    python bench/bench.py [--repeats 3] [--new_tokens 128] [--threads 2]

Writes bench/results.json (one record per engine and format, medians over the repeats) and
image/bench_cpu.png. Missing quantized models and onnxruntime-genai builds are made once under output/.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from bench.bandwidth import decode_bytes, read_bandwidth_gbs
else:  # run as a file: its own folder is first on the path
    from bandwidth import decode_bytes, read_bandwidth_gbs

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HF_DIR = REPO / "download/Qwen2.5-Coder-0.5B-Instruct"
ONNX_NAME = "qwen2.5_coder_0.5b_instruct.onnx"
GGUF = REPO / "download/qwen2.5-coder-0.5b-instruct.gguf"
GGUF_DIR = REPO / "output/gguf"
GENAI_DIR = REPO / "output/genai"
# llama.cpp's own 4-bit format, made once from the default GGUF (mostly Q5_0) by its quantizer: the peer a
# user would pick against our int4. Its file type number (llama.h's llama_ftype). Q4_K_M is no peer for
# this model: 145 of its 291 tensors have rows of 896, not a multiple of the k-quants' 256, and fall back
# to Q5_0/Q8_0, so it comes out the default GGUF's size (463 MiB).
GGUF_FTYPES = {"Q4_0": 2}


def gguf_path(fmt: str) -> Path:
    """The default GGUF (format Q5_0) or its requantization to fmt under output/gguf/."""
    return GGUF if fmt == "Q5_0" else GGUF_DIR / f"{GGUF.stem}-{fmt.lower()}.gguf"


@dataclass
class Target:
    engine: str
    format: str
    model: Path
    needs: str | None = None   # python module the engine imports; absent -> skipped with a note
    graph: str | None = None   # ours only: "cpu" (--target cpu) or "npu" (the atc contract graph)
    source: Path | None = None  # ours, quantized: the float export it is made from
    draft: str | None = None   # ours: the format of a draft model for speculative decoding (same graph)

    @property
    def name(self) -> str:
        """engine:format[:graph][+draft], as --only takes it."""
        return f"{self.engine}:{self.format}" + (f":{self.graph}" if self.graph else "") + \
            (f"+{self.draft}" if self.draft else "")


def model_path(graph: str, fmt: str) -> Path:
    """Where our models live: output/onnx[_cpu][_int8|_int4]/, the folders `make onnx` and this bench use."""
    folder = {"cpu": "onnx_cpu", "npu": "onnx"}[graph] + ("" if fmt == "fp32" else f"_{fmt}")
    return REPO / "output" / folder / ONNX_NAME


def targets(onnx_fp32: Path, cpu_fp32: Path) -> list[Target]:
    return [
        Target("transformers", "fp32", HF_DIR),
        Target("ours", "fp32", cpu_fp32, graph="cpu"),
        Target("ours", "int8", model_path("cpu", "int8"), graph="cpu", source=cpu_fp32),
        Target("ours", "int4", model_path("cpu", "int4"), graph="cpu", source=cpu_fp32),
        Target("ours", "fp32", cpu_fp32, graph="cpu", draft="int4"),
        Target("ours", "fp32", onnx_fp32, graph="npu"),
        Target("ours", "int4", model_path("npu", "int4"), graph="npu", source=onnx_fp32),
        Target("llama.cpp", "Q4_0", gguf_path("Q4_0"), "llama_cpp"),
        Target("llama.cpp", "Q5_0", gguf_path("Q5_0"), "llama_cpp"),
        Target("onnxruntime-genai", "fp32", GENAI_DIR / "fp32", "onnxruntime_genai"),
        Target("onnxruntime-genai", "int4", GENAI_DIR / "int4", "onnxruntime_genai"),
    ]


def size_mb(path: Path) -> float:
    """Bytes on disk of a model file plus its sidecars, or of a model directory's weights."""
    if path.is_dir():
        files = [f for f in path.iterdir() if f.suffix in (".onnx", ".data", ".safetensors", ".bin")]
    else:
        files = [f for f in path.parent.iterdir() if f.name.startswith(path.name)]
    return sum(f.stat().st_size for f in files) / 2 ** 20


def check(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def ensure_quantized(source: Path, model: Path, fmt: str) -> None:
    """Quantize source into model unless model is already newer than it."""
    if not model.is_file() or model.stat().st_mtime < source.stat().st_mtime:
        check([PY, "export/quantize_onnx.py", "--input_model_path", str(source), "--output_model_path",
               str(model), "--bits", fmt[3:]])


def ensure_gguf(fmt: str, threads: int) -> Path:
    """Requantize the default GGUF to fmt with llama.cpp's own quantizer unless the file exists (whoever
    made it); written under a temporary name and moved into place, so a reader never sees half a file."""
    import ctypes

    import llama_cpp

    out = gguf_path(fmt)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_FTYPES[fmt]
    params.allow_requantize = True  # the source is already quantized (Q5_0/Q8_0)
    params.nthread = threads
    print(f"+ llama_model_quantize {GGUF} -> {out} ({fmt})", flush=True)
    if llama_cpp.llama_model_quantize(str(GGUF).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantize {GGUF} to {fmt}")
    os.replace(tmp, out)
    return out


def prepare(t: Target, threads: int) -> None:
    """Build a missing model once; an existing one is reused while it is newer than its source."""
    if t.engine == "llama.cpp" and t.format in GGUF_FTYPES:
        ensure_gguf(t.format, threads)
    if t.source:
        ensure_quantized(t.source, t.model, t.format)
    if t.draft:
        ensure_quantized(t.model, model_path(t.graph, t.draft), t.draft)
    if t.engine == "onnxruntime-genai":
        if not (t.model / "genai_config.json").is_file():
            precision = {"fp32": ["-p", "fp32"], "int4": ["-p", "int4", "--extra_options", "block_size=32",
                                                           "accuracy_level=4"]}[t.format]
            check([PY, "-m", "onnxruntime_genai.models.builder", "-i", str(HF_DIR), "-o", str(t.model),
                   "-e", "cpu", "-c", str(GENAI_DIR / "cache"), *precision])
        # Its thread count lives in the model's config, not in an API call: the same threads as the rest.
        cfg_path = t.model / "genai_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
        cfg_path.write_text(json.dumps(cfg, indent=2))


def prompt_ids() -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(HF_DIR)
    text = (REPO / "bench/prompt.txt").read_text()
    return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False))


def measure(t: Target, ids_file: Path, new_tokens: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([PY, str(REPO / "bench/engines.py"), "--engine", t.engine, "--model", str(t.model),
                          "--hf_model_dir", str(HF_DIR), "--ids_file", str(ids_file), "--new_tokens",
                          str(new_tokens), "--threads", str(threads)]
                         + (["--draft_model", str(model_path(t.graph, t.draft))] if t.draft else []),
                         capture_output=True, text=True, env=env, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"{t.engine} {t.format} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def summarise(t: Target, runs: list[dict], new_tokens: int) -> dict:
    """Medians over the repeats: the warm generation's speeds, and the cold (first) one's as cold_*."""
    med = statistics.median
    prompt = runs[0]["prompt_tokens"]
    cold = {}
    if all("cold" in r for r in runs):
        cold = {"cold_prefill_tok_s": round(med(prompt / r["cold"]["ttft_s"] for r in runs), 1),
                "cold_decode_tok_s": round(med((new_tokens - 1) / r["cold"]["decode_s"] for r in runs), 1),
                "cold_ttft_s": round(med(r["cold"]["ttft_s"] for r in runs), 3)}
    return {
        "engine": t.engine, "format": t.format, "graph": t.graph, "draft": t.draft,
        "prefill_tok_s": round(med(prompt / r["ttft_s"] for r in runs), 1),
        "decode_tok_s": round(med((new_tokens - 1) / r["decode_s"] for r in runs), 1),
        "ttft_s": round(med(r["ttft_s"] for r in runs), 3), **cold,
        "peak_rss_mb": round(med(r["peak_rss_mb"] for r in runs)),
        "size_mb": round(size_mb(t.model) + (size_mb(model_path(t.graph, t.draft)) if t.draft else 0)),
        "repeats": len(runs), "tokens": runs[0]["tokens"],
    }


def add_ratios(records: list[dict]) -> None:
    """Speed relative to transformers, and how long each engine's greedy text agrees with it (when
    transformers ran: --only may leave it out)."""
    ref = next((r for r in records if r["engine"] == "transformers"), None)
    for r in records if ref else []:
        r["prefill_vs_transformers"] = round(r["prefill_tok_s"] / ref["prefill_tok_s"], 2)
        r["decode_vs_transformers"] = round(r["decode_tok_s"] / ref["decode_tok_s"], 2)
        same = [a == b for a, b in zip(r["tokens"], ref["tokens"])]
        r["tokens_agree_with_transformers"] = same.index(False) if False in same else len(same)
    for r in records:
        r.pop("tokens")


def add_bandwidth_share(t: Target, record: dict, bandwidth_gb_s: float) -> None:
    """The weight bytes one decode step reads, the bandwidth the warm decode uses reading them and its
    share of the read bandwidth measured in the run (a single model without a draft only: a draft round
    reads two models a varying number of times)."""
    per_token = decode_bytes(t.model) if t.draft is None else None
    if per_token is None:
        return
    used = record["decode_tok_s"] * per_token / 1e9
    record.update(decode_read_mb=round(per_token / 1e6), decode_gb_s=round(used, 1),
                  bandwidth_share=round(used / bandwidth_gb_s, 3))


def print_table(records: list[dict]) -> None:
    cols = ["engine", "format", "graph", "draft", "prefill_tok_s", "decode_tok_s", "decode_gb_s", "bandwidth_share",
            "ttft_s", "cold_prefill_tok_s",
            "cold_decode_tok_s", "cold_ttft_s", "peak_rss_mb", "size_mb",
            "prefill_vs_transformers", "decode_vs_transformers", "tokens_agree_with_transformers"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in records:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark our ONNX session against transformers and peer engines.")
    p.add_argument("--repeats", type=int, default=3, help="runs per engine; the median is reported (default 3)")
    p.add_argument("--new_tokens", type=int, default=128, help="greedy tokens generated per run (default 128)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads every engine uses (default 2)")
    p.add_argument("--onnx_model_path", default=str(model_path("npu", "fp32")),
                   help="our fp32 export of the npu (atc) graph; its int4 is quantized into output/onnx_int4")
    p.add_argument("--cpu_onnx_model_path", default=str(model_path("cpu", "fp32")),
                   help="our fp32 export with --target cpu; int8/int4 are quantized from it into "
                        "output/onnx_cpu_int8|int4")
    p.add_argument("--only", nargs="*",
                   help="engine:format[:graph][+draft] to run, e.g. transformers:fp32 ours:int4:cpu ours:fp32:cpu+int4 "
                        "llama.cpp:Q4_0 (default all; the ratios to transformers need transformers:fp32)")
    p.add_argument("--output", default=str(REPO / "bench/results.json"))
    p.add_argument("--chart", default=str(REPO / "image/bench_cpu.png"))
    a = p.parse_args(argv)
    onnx_fp32, cpu_fp32 = Path(a.onnx_model_path), Path(a.cpu_onnx_model_path)
    chosen = []
    for t in targets(onnx_fp32, cpu_fp32):
        if a.only and t.name not in a.only:
            continue
        export = t.source or t.model
        if t.engine == "ours" and not export.is_file():
            print(f"bench.py: error: {export}: no such file (run `make onnx` first)", file=sys.stderr)
            return 2
        if t.needs and importlib.util.find_spec(t.needs) is None:
            print(f"skipping {t.engine} {t.format}: {t.needs} is not installed (pip install -r "
                  "bench/requirements-peers.txt)")
            continue
        prepare(t, a.threads)
        chosen.append(t)
    runs: dict[int, list[dict]] = {i: [] for i in range(len(chosen))}
    probes: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        ids_file = Path(tmp) / "ids.json"
        ids_file.write_text(json.dumps(prompt_ids()))
        # Rounds interleave the engines, so a slow spell on a shared machine hits all of them alike.
        for rnd in range(a.repeats):
            # The memory's read bandwidth, probed every round beside the engines: the best probe is the
            # limit a decode step could reach in this run.
            probes.append(read_bandwidth_gbs(a.threads))
            print(f"round {rnd + 1}: read bandwidth {probes[-1]:.1f} GB/s ({a.threads} threads)", flush=True)
            for i, t in enumerate(chosen):
                r = measure(t, ids_file, a.new_tokens, a.threads)
                runs[i].append(r)
                print(f"round {rnd + 1}: {t.engine:18} {t.format:6} {t.graph or '':4} {t.draft or '':4} "
                      f"warm ttft {r['ttft_s']:.2f}s decode {(a.new_tokens - 1) / r['decode_s']:.1f} tok/s, "
                      f"cold ttft {r['cold']['ttft_s']:.2f}s decode "
                      f"{(a.new_tokens - 1) / r['cold']['decode_s']:.1f} tok/s, rss {r['peak_rss_mb']:.0f} MB",
                      flush=True)
    records = [summarise(t, runs[i], a.new_tokens) for i, t in enumerate(chosen)]
    add_ratios(records)
    bandwidth = max(probes)
    for t, r in zip(chosen, records):
        add_bandwidth_share(t, r, bandwidth)
    setup = {"prompt_tokens": runs[0][0]["prompt_tokens"], "new_tokens": a.new_tokens, "threads": a.threads,
             "repeats": a.repeats, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "read_bandwidth_gb_s": round(bandwidth, 1)}
    for r in records:
        r.update(setup)
    Path(a.output).write_text(json.dumps(records, indent=2) + "\n")
    print_table(records)
    print(f"read bandwidth (best of {len(probes)} probes, {a.threads} threads): {bandwidth:.1f} GB/s")
    from chart import draw  # matplotlib is a peer requirement, needed only here
    draw(records, setup, Path(a.chart))
    print(f"wrote {a.output} and {a.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
