"""PNG plots of training runs: loss/accuracy curves and confusion matrices (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *, title: str = "") -> Path:
    """Training loss and evaluation accuracy per epoch, one line per run (``{label: history rows}``)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    teacher_drawn = False
    for label, rows in runs.items():
        epochs = [r["epoch"] + 1 for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label=label)
        for key, style in (("acc", "-"), ("acc_cls", ":"), ("acc_dist", "--")):
            if key == "acc" or any(key in r for r in rows) and len(runs) == 1:
                pts = [(r["epoch"] + 1, r[key]) for r in rows if key in r]
                if pts:
                    name = label if key == "acc" else f"{label} ({key.split('_')[1]} head)"
                    ax_acc.plot(*zip(*pts), style, marker="o" if key == "acc" else None, label=name)
        teacher = next((r["teacher_acc"] for r in rows if "teacher_acc" in r), None)
        if teacher is not None and not teacher_drawn:  # the same frozen teacher for every run: one line
            teacher_drawn = True
            ax_acc.axhline(teacher, color="grey", lw=1, ls="-.", label=f"teacher ({teacher:.1f}%)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss (each run's own objective)")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="evaluation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) with the counts' percentages printed."""
    cm = confusion.double()
    norm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                v = norm[i, j].item()
                if v >= 0.005:
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
