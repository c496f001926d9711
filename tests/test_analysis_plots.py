"""Plots write real PNG files (the ones the slow report/sweep tests do not already draw)."""

from __future__ import annotations

from pathlib import Path

from deitlab.analysis import edf, plots
from deitlab.analysis.stability import aggregate

PNG = b"\x89PNG\r\n\x1a\n"


def test_accuracy_vs_training_set_size_and_edf(tmp_path: Path) -> None:
    records = [
        {"labels": {"size": n, "teacher": t}, "acc": 70.0 + n / 1000 + (2 if t == "hard" else 0) + s}
        for n in (2500, 5000) for t in ("none", "hard") for s in (0.0, 1.0)
    ]  # fmt: skip
    stats = aggregate(records, ["teacher", "size"])
    series = {t: [r for r in stats if r["teacher"] == t] for t in ("none", "hard")}
    size = plots.plot_metric_vs(series, "size", tmp_path / "size.png", xlabel="training images", logx=True)
    curves = plots.plot_edf({"a": edf([20.0, 21.0, None]), "b": edf([22.0])}, tmp_path / "edf.png")
    for p in (size, curves):
        assert p.read_bytes()[:8] == PNG
