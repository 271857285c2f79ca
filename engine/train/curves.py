"""Loss curves: the run's history as a PNG (matplotlib, from the `train` extra)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def plot_losses(history: list[dict[str, float]], path: Path, title: str) -> Path | None:
    """One line per logged quantity (other than "step") against the step; None without matplotlib.

    Args:
        history: records like {"step": 10, "loss": 2.3, "lr": 1e-3}; "lr" goes on its own axis.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no loss curve (pip install '.[train]')")
        return None
    if not history:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = sorted({k for h in history for k in h} - {"step", "lr"})
    steps = [h["step"] for h in history]
    for k in keys:
        ax.plot(steps, [h.get(k, float("nan")) for h in history], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
