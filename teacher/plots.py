"""Figures of a training run (matplotlib, imported lazily, Agg backend: no display needed)."""
from __future__ import annotations

import json
from pathlib import Path


def loss_curve(metrics_jsonl: str | Path, out_png: str | Path, key: str = "loss") -> str | None:
    """Plot ``key`` (and l_diff / l_imp when present) against step; returns the PNG path, or None
    when there is nothing to plot."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if key in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [r["step"] for r in rows]
    for k, style in ((key, "-"), ("l_diff", "--"), ("l_imp", ":")):
        if all(k in r for r in rows):
            ax.plot(steps, [r[k] for r in rows], style, label=k, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return str(out_png)
