"""Issue 12's goals read from a bench/load.py result: our server's speed-up at the most clients against the
graph-only ratio, its p95 time-to-first-token cut against --max_batch 1, whether it beats llama-server at
every client count, and the ceilings a scheduler with no cost of its own could reach from the graph's own
times; and the result as a Markdown table."""
from __future__ import annotations

import numpy as np

GOAL_SHARE_OF_GRAPH = 0.9
GOAL_TTFT_CUT = 10.0


def find(runs: list[dict], engine: str, clients: int) -> dict | None:
    return next((r for r in runs if r["engine"] == engine and r["clients"] == clients), None)


def goals(result: dict) -> dict:
    runs, graph = result["runs"], {g["format"]: g for g in result["graph_ratio"]}
    top = max(r["clients"] for r in runs)
    out: dict = {"clients": top}
    for fmt in ("int4", "fp32"):
        one, many = find(runs, f"ours:{fmt}:b8", 1), find(runs, f"ours:{fmt}:b8", top)
        graph_x = graph.get(fmt, {}).get("vs_1_row", {}).get(str(top))
        if one and many and graph_x:
            speedup = many["agg_tok_s"] / one["agg_tok_s"]
            out[f"{fmt}_server_speedup"] = round(speedup, 2)
            out[f"{fmt}_graph_speedup"] = graph_x
            out[f"{fmt}_share_of_graph"] = round(speedup / graph_x, 2)
            out[f"{fmt}_share_goal_met"] = speedup / graph_x >= GOAL_SHARE_OF_GRAPH
            # The same without prefill: the answers' own decode speed (first token to last) times the
            # clients, against one client's. Prefill does not batch, so this is what the graph ratio bounds.
            if one["per_stream_decode_tok_s"] and many["per_stream_decode_tok_s"]:
                decode_x = top * many["per_stream_decode_tok_s"] / one["per_stream_decode_tok_s"]
                out[f"{fmt}_decode_phase_speedup"] = round(decode_x, 2)
                out[f"{fmt}_decode_phase_share_of_graph"] = round(decode_x / graph_x, 2)
        b1 = find(runs, f"ours:{fmt}:b1", top)
        if many and b1:
            cut = b1["ttft_p95_s"] / many["ttft_p95_s"]
            out[f"{fmt}_ttft_p95_cut_vs_batch1"] = round(cut, 1)
            out[f"{fmt}_ttft_goal_met"] = cut >= GOAL_TTFT_CUT
        if one and many and graph.get(fmt, {}).get("prefill_s") and "prefilled_tokens" in many:
            out.update({f"{fmt}_{k}": v for k, v in ceilings(graph[fmt], many, b1, top).items()})
    clients = sorted({r["clients"] for r in runs})
    best_llama = {c: max((r["agg_tok_s"] for r in runs if r["kind"] == "llama-server" and r["clients"] == c),
                         default=None) for c in clients}
    for fmt in ("int4", "fp32"):
        ours = {c: find(runs, f"ours:{fmt}:b8", c) for c in clients}
        beats = {c: ours[c]["agg_tok_s"] > best_llama[c] for c in clients if ours[c] and best_llama[c]}
        out[f"{fmt}_beats_best_llama_server"] = beats
    return out


def ceilings(graph: dict, many: dict, b1: dict | None, top: int) -> dict:
    """What a scheduler with no cost of its own could reach at `top` clients, from the graph's own times:
    prompts are read one after another (prefill does not batch), answers decode `top` rows a step.
    speedup = top * (P + T * s1) / (top * P + T * s_top), P the prefill of a median prompt's uncached
    tokens, T the decode steps of an answer, s_k a k-row step. The time to first token cannot be less
    than the prefills queued ahead: the k-th of the prompts that arrive together waits k * P, a later
    request P; its p95 against the --max_batch 1 server's measured p95 bounds the cut."""
    lengths = sorted(int(n) for n in graph["prefill_s"])
    prefill = float(np.interp(float(np.median(many["prefilled_tokens"])), lengths,
                              [graph["prefill_s"][str(n)] for n in lengths]))
    steps = many["completion_tokens"] / many["requests"] - 1
    s1, s_top = graph["step_ms"]["1"] / 1000, graph["step_ms"][str(top)] / 1000
    speedup = top * (prefill + steps * s1) / (top * prefill + steps * s_top)
    out = {"ceiling_prefill_s": round(prefill, 3), "ceiling_speedup": round(speedup, 2),
           "ceiling_share_of_graph": round(speedup / graph["vs_1_row"][str(top)], 2)}
    later = many["requests"] - top
    floor = float(np.percentile([k * prefill for k in range(1, top + 1)] + [prefill] * later, 95))
    out["ceiling_ttft_p95_s"] = round(floor, 3)
    if b1 and floor > 0:
        out["ceiling_ttft_cut"] = round(b1["ttft_p95_s"] / floor, 1)
    return out


def table(result: dict) -> str:
    rows = ["| engine | format | slots | clients | agg tok/s | TTFT p50 s | TTFT p95 s | per-answer tok/s |"
            " tokens | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["runs"], key=lambda r: (r["engine"], r["clients"])):
        slots = f"--max_batch {r['max_batch']}" if r["kind"] == "ours" else f"--parallel {r['parallel']}"
        rows.append(f"| {r['kind']} | {r['format']} | {slots} | {r['clients']} | {r['agg_tok_s']:.1f} | "
                    f"{r['ttft_p50_s']:.2f} | {r['ttft_p95_s']:.2f} | {r['per_stream_decode_tok_s']} | "
                    f"{r['completion_tokens']} | {r['wall_s']:.0f} |")
    return "\n".join(rows)
