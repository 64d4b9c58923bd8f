"""Plots for training and evaluation reports."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss(log_history: list[dict], path: Path) -> None:
    """Training and validation loss against step (the original project's Figure 1)."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    validation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axes = plt.subplots(figsize=(7, 4))
    for points, label, style in ((train, "training", "-"), (validation, "validation", "o-")):
        if points:
            axes.plot(*zip(*points), style, label=label)
    axes.set(xlabel="step", ylabel="loss per reply token", title="Chandler LoRA fine-tuning")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
