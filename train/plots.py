"""Plots for training and evaluation reports."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss(log_history: list[dict], path: Path, title: str = "Chandler LoRA fine-tuning",
              ylabel: str = "loss per reply token") -> None:
    """Training and validation loss against step (the original project's Figure 1)."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    validation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axes = plt.subplots(figsize=(7, 4))
    for points, label, style in ((train, "training", "-"), (validation, "validation", "o-")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set(xlabel="step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
