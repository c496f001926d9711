"""PNG plots (matplotlib Agg, no display needed): training curves, confusion matrices, the analyses of
:mod:`deitlab.analysis` (cross-layer similarity, entropy, token cosine, attention over the image) and the stability
studies (EDF curves, lr/wd scatter, accuracy against epoch budget or training-set size)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullLocator  # noqa: E402


def _save(fig: plt.Figure, path: str | Path, title: str = "") -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    return _save(fig, path, title)


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
    return _save(fig, path)


# ---- analyses (collapse, tokens, attention) -------------------------------------------------------------------
def plot_similarity(collapse: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Heatmap of the cross-layer similarity ``M^{p,q}`` (softmax maps; beside it the mixed maps, if any)."""
    panels = [("softmax maps", collapse)]
    if "mixed" in collapse:
        panels.append(("mixed maps Norm(Θᵀ·A)", collapse["mixed"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (name, part) in zip(axes[0], panels):
        m = torch.tensor(part["similarity"])
        im = ax.imshow(m.numpy(), cmap="viridis", vmin=min(0.0, float(m.min())), vmax=1, origin="lower")
        ticks = range(0, len(m), max(1, len(m) // 8))
        ax.set_xticks(list(ticks), [str(t + 1) for t in ticks])
        ax.set_yticks(list(ticks), [str(t + 1) for t in ticks])
        ax.set(xlabel="block q", ylabel="block p", title=f"{name}: {part['similar_blocks']} similar blocks")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path, title)


def plot_collapse_curves(results: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Per block: similarity to the previous block, attention entropy, and feature-to-final similarity."""
    fig, (ax_sim, ax_ent, ax_fin) = plt.subplots(1, 3, figsize=(14, 4))
    for label, r in results.items():
        blocks = range(1, len(r["entropy"]) + 1)
        line = ax_sim.plot(list(blocks)[1:], r["adjacent"], marker="o", ms=3,
                           label=f"{label} ({r['similar_blocks']} similar)")[0]  # fmt: skip
        if "mixed" in r:
            ax_sim.plot(list(blocks)[1:], r["mixed"]["adjacent"], ls="--", color=line.get_color(),
                        label=f"{label}, mixed maps ({r['mixed']['similar_blocks']} similar)")  # fmt: skip
        ax_ent.plot(blocks, r["entropy"], marker="o", ms=3, color=line.get_color(), label=label)
        ax_ent.axhline(r["max_entropy"], color=line.get_color(), lw=0.8, ls=":")
        ax_fin.plot(blocks, r["feature_to_final"], marker="o", ms=3, color=line.get_color(), label=label)
    threshold = next(iter(results.values()))["threshold"] if results else 0.9
    ax_sim.axhline(threshold, color="grey", lw=1, ls="-.", label=f"threshold {threshold}")
    ax_sim.set(xlabel="block l", ylabel="M^{l-1,l}", title="similarity to the previous block")
    ax_ent.set(xlabel="block", ylabel="nats", title="attention entropy (dotted: log N, uniform)")
    ax_ent.ticklabel_format(axis="y", useOffset=False)  # near-uniform maps: show log N itself, not an offset
    ax_fin.set(xlabel="block", ylabel="cosine", title="block output vs final output")
    for ax in (ax_sim, ax_ent, ax_fin):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path, title)


def plot_token_cosine(results: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Cosine of the class and distillation tokens: input (block 0), after each block, and after the final norm."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in results.items():
        depth = len(r["block_cosine"])
        line = ax.plot(range(depth + 1), [r["input_cosine"], *r["block_cosine"]], marker="o", ms=3,
                       label=f"{label} (heads {r['head_cosine']:.2f})")[0]  # fmt: skip
        ax.plot([depth + 0.5], [r["final_cosine"]], marker="*", ms=9, color=line.get_color())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="block (0: learned input tokens; star: after the final norm)", ylabel="cos(cls, dist)",
           title="class vs distillation token", ylim=(-1.05, 1.05))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def _show_image(ax: plt.Axes, image: torch.Tensor) -> tuple[int, int]:
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray")
    else:
        ax.imshow(img[:3].permute(1, 2, 0).numpy())
    ax.set_axis_off()
    return int(img.shape[-2]), int(img.shape[-1])


def _overlay(ax: plt.Axes, image: torch.Tensor, grid_map: torch.Tensor, title: str) -> None:
    size = _show_image(ax, image)
    m = torch.nn.functional.interpolate(grid_map[None, None].float(), size=size, mode="bilinear")[0, 0]
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    ax.imshow(m.numpy(), cmap="inferno", alpha=0.55)
    ax.set_title(title, fontsize=8)


def plot_attention(image: torch.Tensor, maps: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """The image, its attention rollout, and each block's class-token attention (mean over heads) over it."""
    per_block = maps["cls_attention"]
    cols = 2 + len(per_block)
    fig, axes = plt.subplots(1, cols, figsize=(1.7 * cols, 2.0), squeeze=False)
    _show_image(axes[0, 0], image)
    axes[0, 0].set_title("image", fontsize=8)
    _overlay(axes[0, 1], image, maps["cls_rollout"], "rollout")
    for i, m in enumerate(per_block):
        _overlay(axes[0, 2 + i], image, m, f"block {i + 1}")
    return _save(fig, path, title)


# ---- stability studies -------------------------------------------------------------------------------------------
def plot_edf(curves: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """EDF step curves ``F(x)`` (``{label: edf(...)}``), x = error minus the group's best error."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, e in curves.items():
        xs = [0.0, *e["x"]]
        fs = [0.0, *e["F"]]
        ax.step(xs, fs, where="post", label=f"{label} (n={e['n']}, best {e['best']:.1f}%)")
    ax.set(xlabel="error − best error (percentage points)", ylabel="cumulative fraction of runs", ylim=(0, 1.02),
           title="EDF of top-1 error (Xiao et al.)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def plot_scatter(
    groups: Mapping[str, Sequence[Mapping[str, Any]]], x: str, path: str | Path, *, title: str = ""
) -> Path:
    """Error of every run against hyper-parameter ``x`` (``"lr"`` or ``"wd"``), log x, one colour per group."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in groups.items():
        pts = [(r[x], r["error"]) for r in rows if r.get(x) is not None]
        if pts:
            ax.scatter(*zip(*pts), s=16, alpha=0.8, label=label)
    ax.set_xscale("log")
    ax.set(xlabel={"lr": "learning rate", "wd": "weight decay"}.get(x, x), ylabel="top-1 error (%)",
           title=f"error vs {x} (diverged runs at 100%)")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def plot_metric_vs(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    x: str,
    path: str | Path,
    *,
    xlabel: str = "",
    ylabel: str = "top-1 accuracy (%)",
    logx: bool = False,
    title: str = "",
) -> Path:
    """Mean ± std (error bars) against ``x``, one line per series (rows from ``stability.aggregate``)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ticks: set[float] = set()
    for label, rows in series.items():
        pts = sorted((float(r[x]), r["mean"], r.get("std", 0.0), r["n"]) for r in rows if "mean" in r)
        if pts:
            xs, means, stds, ns = zip(*pts)
            runs = f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}-{max(ns)}"
            ax.errorbar(xs, means, yerr=stds, marker="o", ms=4, capsize=3, label=f"{label} (n={runs} per point)")
            ticks.update(xs)
    if logx:
        ax.set_xscale("log")
    if 0 < len(ticks) <= 12:  # label the measured points themselves, in plain numbers
        ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel=xlabel or x, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, title)
