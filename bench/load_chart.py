"""The load chart: aggregate completion tokens/s and p95 time to first token against concurrent clients,
one line per server (bench/load.py's results)."""
from __future__ import annotations

from pathlib import Path

# ours in reds (solid: --max_batch 8, dashed: --max_batch 1), llama-server in greys, as in chart.py
STYLE = {
    "ours:int4:b8": ("#d62728", "-", "o"), "ours:int4:b1": ("#d62728", "--", "o"),
    "ours:fp32:b8": ("#8c1c13", "-", "s"), "ours:fp32:b1": ("#8c1c13", "--", "s"),
    "llama-server:gguf": ("#7f7f7f", "-", "^"), "llama-server:q4_0": ("#3f3f3f", "-", "v"),
}


def label(r: dict) -> str:
    if r["kind"] == "ours":
        return f"ours {r['format']} cpu graph, --max_batch {r['max_batch']}"
    return f"llama-server {r['format']}, --parallel = clients"


def draw(result: dict, out: Path) -> None:
    from chart import save  # run beside it as bench/load.py's helper, like chart.py beside bench.py

    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs = result["runs"]
    names = list(dict.fromkeys(r["engine"] for r in runs))
    clients = sorted({r["clients"] for r in runs})
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.8))
    for ax, key, title in ((axes[0], "agg_tok_s", "aggregate completion tokens/s"),
                           (axes[1], "ttft_p95_s", "p95 time to first token (s, log scale)")):
        for name in names:
            points = sorted((r["clients"], r[key], r) for r in runs if r["engine"] == name)
            colour, line, marker = STYLE.get(name, ("#1f77b4", "-", "x"))
            ax.plot([p[0] for p in points], [p[1] for p in points], color=colour, linestyle=line, marker=marker,
                    label=label(points[0][2]))
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent streaming clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[0].legend(fontsize=7)
    s = result["setup"]
    prompts = {"long": "~142-token prompts", "short": "~55-token prompts"}[s.get("prompts", "long")]
    fig.suptitle(f"Qwen2.5-Coder-0.5B-Instruct served on CPU, {prompts}: {s['requests_per_client']} request{'s' if s['requests_per_client'] != 1 else ''} per client, "
                 f"at most {s['max_tokens']} greedy tokens each, {s['threads']} threads per server")
    save(fig, out)
