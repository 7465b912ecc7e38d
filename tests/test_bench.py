"""The bench plumbing on the tiny model: one engine run in its own process, and the summary arithmetic."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.bench import Target, add_ratios, size_mb, summarise
from export.export_onnx import main as export_main

REPO = Path(__file__).resolve().parents[1]


def test_our_engine_runs_in_a_subprocess_and_reports(make_tiny, tmp_path):
    model_dir = make_tiny()
    onnx_path = tmp_path / "m.onnx"
    assert export_main(["--hf_model_dir", str(model_dir), "--onnx_model_path", str(onnx_path),
                        "--kv_cache_length", "64"]) == 0
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(list(range(5, 25))))
    res = subprocess.run([sys.executable, str(REPO / "bench/engines.py"), "--engine", "ours", "--model",
                          str(onnx_path), "--hf_model_dir", str(model_dir), "--ids_file", str(ids_file),
                          "--new_tokens", "6", "--threads", "1"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["prompt_tokens"] == 20 and len(out["tokens"]) == 6
    assert out["ttft_s"] > 0 and out["decode_s"] > 0 and out["peak_rss_mb"] > 10
    assert out["cold"]["ttft_s"] > 0 and out["cold"]["decode_s"] > 0


def test_summary_medians_ratios_and_agreement(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * 2 ** 20)
    (tmp_path / "m.onnx.data").write_bytes(b"x" * 2 ** 21)
    assert round(size_mb(model)) == 3
    runs = [{"prompt_tokens": 100, "ttft_s": t, "decode_s": d, "peak_rss_mb": 50.0, "tokens": [1, 2, 3, 4],
             "cold": {"ttft_s": 2 * t, "decode_s": 3 * d}} for t, d in ((1.0, 3.0), (2.0, 1.0), (4.0, 2.0))]
    ref = summarise(Target("transformers", "fp32", model), runs, new_tokens=4)
    assert ref["prefill_tok_s"] == 50.0 and ref["decode_tok_s"] == 1.5 and ref["ttft_s"] == 2.0
    assert ref["cold_prefill_tok_s"] == 25.0 and ref["cold_decode_tok_s"] == 0.5 and ref["cold_ttft_s"] == 4.0
    fast = summarise(Target("ours", "int4", model), [{**r, "ttft_s": r["ttft_s"] / 4, "tokens": [1, 2, 9, 4]}
                                                      for r in runs], new_tokens=4)
    records = [ref, fast]
    add_ratios(records)
    assert fast["prefill_vs_transformers"] == 4.0 and fast["decode_vs_transformers"] == 1.0
    assert fast["tokens_agree_with_transformers"] == 2 and ref["tokens_agree_with_transformers"] == 4
    assert "tokens" not in fast


def test_quality_perplexity_is_the_same_on_both_graphs_and_matches_transformers(make_tiny, tiny_onnx_of, tmp_path):
    """quality.py feeds one token per step through the session, so it can measure the cpu graph (which
    only returns the last position's logits); its summed NLL must equal transformers' on both graphs."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from bench.quality import nll_of_window
    from config import InferenceConfig
    from session import open_session

    model_dir = make_tiny()
    cpu_path = tmp_path / "cpu.onnx"
    assert export_main(["--hf_model_dir", str(model_dir), "--onnx_model_path", str(cpu_path),
                        "--kv_cache_length", "64", "--target", "cpu"]) == 0
    ids = np.random.default_rng(3).integers(0, 400, 24).astype(np.int64)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(ref(torch.from_numpy(ids[None])).logits[0].double(), -1)
    want = -float(logp[torch.arange(len(ids) - 1), torch.from_numpy(ids[1:])].sum())
    for path in (tiny_onnx_of(model_dir, 64), cpu_path):
        cfg = InferenceConfig.create(model_dir, onnx_model_path=str(path), kv_cache_length=64, max_input_length=32,
                                     cpu_thread=1)
        total, count = nll_of_window(open_session(cfg), ids)
        assert count == len(ids) - 1
        assert abs(total - want) < 1e-3 * abs(want), (path.name, total, want)


def test_bench_asks_only_for_the_exports_of_the_engines_it_runs(tmp_path, capsys):
    from bench.bench import main as bench_main

    npu, cpu = tmp_path / "npu.onnx", tmp_path / "cpu.onnx"
    args = ["--onnx_model_path", str(npu), "--cpu_onnx_model_path", str(cpu), "--output", str(tmp_path / "r.json")]
    assert bench_main([*args, "--only", "ours:int4:npu"]) == 2
    err = capsys.readouterr().err
    assert f"{npu}: no such file" in err and str(cpu) not in err


def test_load_ceilings_follow_from_the_graph_times():
    from bench.load_goals import ceilings

    graph = {"step_ms": {"1": 20.0, "8": 60.0}, "vs_1_row": {"8": 2.67},
             "prefill_s": {"16": 0.05, "32": 0.1, "64": 0.2, "96": 0.3, "128": 0.4}}
    many = {"prefilled_tokens": [30, 32, 34] * 5 + [32], "completion_tokens": 16 * 64, "requests": 16}
    out = ceilings(graph, many, {"ttft_p95_s": 8.0}, 8)
    # P = 0.1 s, 63 steps: 8 * (0.1 + 63 * 0.02) / (8 * 0.1 + 63 * 0.06) = 2.38, 89 % of 2.67
    assert out["ceiling_prefill_s"] == 0.1 and out["ceiling_speedup"] == 2.38
    assert out["ceiling_share_of_graph"] == 0.89
    # first-token floors: 0.1 .. 0.8 s for the eight that arrive together, 0.1 s for the eight after
    assert out["ceiling_ttft_p95_s"] == 0.725 and out["ceiling_ttft_cut"] == 11.0
    free = ceilings({**graph, "prefill_s": {"16": 0.0, "128": 0.0}}, many, None, 8)
    assert free["ceiling_share_of_graph"] == 1.0 and "ceiling_ttft_cut" not in free  # decode alone: the graph ratio


def test_graph_ratio_times_every_row_count_and_prompt_length(tiny_model_dir, cpu_onnx_of):
    """load.py's graph-only ratio (bench/graph_ratio.py) on a tiny cpu graph: one time per row count and
    per prompt length, all positive, and one row against itself is 1."""
    from bench.graph_ratio import PREFILL_LENGTHS, PREFILL_PREFIX, ROWS, GraphTiming, decode_ratio, prefill_cost

    model = str(cpu_onnx_of(tiny_model_dir, PREFILL_PREFIX + max(PREFILL_LENGTHS) + 1))
    timing = GraphTiming(hf_model_dir=str(tiny_model_dir), context=16, rounds=1, steps=1, threads=1)
    ratio = decode_ratio(timing, model)
    assert sorted(ratio["step_ms"]) == list(ROWS) and min(ratio["step_ms"].values()) > 0
    assert ratio["vs_1_row"][1] == 1.0 and ratio["per_answer_vs_alone"][1] == 1.0
    cost = prefill_cost(timing, model)
    assert sorted(cost["prefill_s"]) == list(PREFILL_LENGTHS) and min(cost["prefill_s"].values()) > 0


def bench_scripts() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for folder in ("bench", "bench/experiments")
                  for p in (REPO / folder).glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def test_every_bench_script_and_decision_record_answers_help():
    scripts = bench_scripts()
    assert {"bench/bench.py", "bench/quality.py", "bench/load.py", "bench/experiments/batch_ratio.py",
            "bench/experiments/ray_load.py"} <= set(scripts)
    for script in scripts:
        done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, f"{script} --help: {done.stderr[-500:]}"


def test_faithfulness_summary_against_the_float_model():
    """Greedy agreement overall and to the first divergence, top-1 agreement and KL come out of what two
    formats predicted; the table has one row per format."""
    import numpy as np

    from bench.quality import Measured, TextScores, summary, table

    ref_rows = [np.log(np.array([0.5, 0.25, 0.25])), np.log(np.array([0.1, 0.8, 0.1]))]
    ref = Measured(TextScores(nll=2.0, count=2, top1=[0, 1], rows=ref_rows), [[1, 2, 3, 4], [5, 6]])
    kl = [0.0, 0.3]
    other = Measured(TextScores(nll=2.2, count=2, top1=[0, 2], kl=kl), [[1, 2, 9, 4], [7, 6]])
    r = summary(other, ref)
    assert r["greedy_agreement"] == round((0.75 + 0.5) / 2, 4)
    assert r["greedy_common_prefix"] == [2, 0] and r["greedy_prefix_share"] == round(2 / 6, 4)
    assert r["top1_agreement"] == 0.5 and r["kl_divergence"] == 0.15
    assert r["perplexity"] == round(float(np.exp(1.1)), 4)
    assert summary(ref, ref) == {"perplexity": round(float(np.exp(1.0)), 4)}
    lines = table({"fp32": summary(ref, ref), "int4": r}).splitlines()
    assert len(lines) == 4 and lines[3].startswith("| int4 | ") and "KL" in lines[0]


def test_code_eval_runs_the_answer_against_the_problem_tests():
    from bench.code_eval import answer_code, passes

    prompt = 'def add(a, b):\n    """Sum of a and b."""\n'
    test = "def check(f):\n    assert f(2, 3) == 5\n"
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    assert passes(answer_code(prompt, good), test, "add")
    assert not passes(answer_code(prompt, bad), test, "add")
    assert passes(answer_code(prompt, "def add(a, b):\n    return b + a\n"), test, "add")
