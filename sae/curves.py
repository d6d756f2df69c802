"""RUN/curves.png: loss, FVE (training batches and held-out), L0, dead fraction and lr against
training tokens, from the history kept in metrics.json."""

from __future__ import annotations

from pathlib import Path

from sae.io import atomic_path


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [h["tokens"] for h in history]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    panels = [("loss", "loss (FVU + AuxK)", True), ("fve", "FVE", False), ("l0", "L0", False),
              ("dead", "dead fraction", False), ("lr", "learning rate", False)]
    for ax, (key, label, log) in zip(axes.flat, panels):
        ax.plot(tokens, [h.get(key) for h in history], lw=1.2, label="train batch")
        if key == "fve":
            pts = [(h["tokens"], h["fve_heldout"]) for h in history if h.get("fve_heldout") is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, lw=1, label="held-out")
            ax.legend(fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("tokens", fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
