"""The bench bar chart: warm decode and prefill speed (the second generation in each process), and peak
memory, per engine and format."""
from __future__ import annotations

from pathlib import Path


def draw(records: list[dict], setup: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines
    import matplotlib.pyplot as plt

    labels = [f"{r['engine']}\n{r['format']}" + (f" ({r['graph']} graph)" if r.get("graph") else "")
              + (f"\n+ {r['draft']} draft" if r.get("draft") else "") + f"\n{r['size_mb']} MB" for r in records]
    colours = ["#d62728" if r["engine"] == "ours" else "#7f7f7f" for r in records]
    panels = [("decode_tok_s", "decode tokens/s (warm)"), ("prefill_tok_s", "prefill tokens/s (warm)"),
              ("peak_rss_mb", "peak RSS (MB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6))
    for ax, (key, title) in zip(axes, panels):
        values = [r[key] for r in records]
        bars = ax.bar(range(len(records)), values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(records)), labels, fontsize=7, rotation=45, ha="right")
        ax.set_title(title)
        ax.margins(y=0.15)
    fig.suptitle(f"Qwen2.5-Coder-0.5B-Instruct on CPU: {setup['prompt_tokens']}-token prompt, "
                 f"{setup['new_tokens']} greedy tokens, {setup['threads']} threads, median of {setup['repeats']}")
    save(fig, out)


def save(fig, out: Path) -> None:
    """Lay the figure out, write it as a PNG at the bench charts' resolution and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
