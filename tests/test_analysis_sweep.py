"""The resumable sweep runner: a crash loses at most the run in progress, diverged runs count as 100% error,
and ``sweep`` writes its JSON summary and PNG plots. Fast tests use a stand-in for ``train``; one slow test trains."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deitlab.analysis import lr_wd_specs, space_around
from deitlab.analysis.sweep import RESULTS_FILE, read_records, run_specs, sweep
from deitlab.engine import TrainingDiverged, train
from deitlab.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n"
BASE = ["data.dataset=synthetic", "model.name=deit_micro_patch4_28"]


@dataclass
class FakeResult:
    final: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    teacher: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.01
    images_per_second: float = 100.0
    stopped_early: bool = False


class FakeTrain:
    """Accuracy peaks at lr = 1e-3; can crash, diverge or stop on chosen calls."""

    def __init__(self, crash_at: int | None = None, diverge: set[int] = frozenset(), nan: set[int] = frozenset(),
                 stop_at: int | None = None) -> None:  # fmt: skip
        self.calls: list[str] = []
        self.crash_at, self.diverge, self.nan, self.stop_at = crash_at, diverge, nan, stop_at

    def __call__(self, cfg: Any) -> FakeResult:
        i = len(self.calls)
        self.calls.append(Path(cfg.train.output_dir).name)
        if i == self.crash_at:
            raise RuntimeError("simulated crash (power cut)")
        if i in self.diverge:
            raise TrainingDiverged("training diverged at step 3")
        acc = float("nan") if i in self.nan else 90.0 - 5 * abs(math.log10(cfg.optim.lr / 1e-3))
        history = [{"epoch": 0, "train_loss": 1.0, "acc": acc, "img_per_s": 5.0}]
        return FakeResult({"acc": acc, "test_acc": acc}, history, stopped_early=i == self.stop_at)


def specs(n: int = 2) -> list:
    spaces = {"adamw": space_around(1e-3, 0.05), "sgd": space_around(0.1, 1e-4)}
    return lr_wd_specs(["deit_micro_patch4_28"], ["adamw", "sgd"], n, spaces=spaces)


def strict_lines(path: Path) -> list[dict]:
    def no_nan(token: str) -> None:
        raise AssertionError(f"{token} in strict JSON")

    return [json.loads(line, parse_constant=no_nan) for line in path.read_text().splitlines()]


def test_a_crash_loses_only_the_run_in_progress_and_a_rerun_does_the_rest(tmp_path: Path, caplog) -> None:
    crashing = FakeTrain(crash_at=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_specs(specs(), tmp_path, base_overrides=BASE, train_fn=crashing)
    assert len(strict_lines(tmp_path / RESULTS_FILE)) == 3
    again = FakeTrain()
    with caplog.at_level(logging.INFO, logger="deitlab.analysis.sweep"):
        records = run_specs(specs(), tmp_path, base_overrides=BASE, train_fn=again)
    assert again.calls == ["deit_micro_patch4_28-sgd-001"]  # only the run that crashed
    lines = strict_lines(tmp_path / RESULTS_FILE)
    assert len(lines) == 4 and [r["name"] for r in records] == [s.name for s in specs()]
    assert "3 already done, 1 to run" in caplog.text and "4/4 done, 0 left, ETA" in caplog.text
    r = records[0]
    assert r["model"] == "deit_micro_patch4_28" and r["optimizer"] == "adamw" and not r["diverged"]
    assert r["error"] == pytest.approx(100 - r["acc"]) and r["metric"] == "test_acc" and r["wall_seconds"] >= 0
    assert r["lr"] == pytest.approx(float(next(o for o in r["overrides"] if "optim.lr=" in o).split("=")[1]))
    assert run_specs(specs(), tmp_path, base_overrides=BASE, train_fn=FakeTrain()) == records  # nothing left


def test_diverged_and_nan_runs_count_as_error_100(tmp_path: Path) -> None:
    records = run_specs(specs(), tmp_path, base_overrides=BASE, train_fn=FakeTrain(diverge={0}, nan={2}))
    assert [r["diverged"] for r in records] == [True, False, True, False]
    assert records[0]["error"] == records[2]["error"] == 100.0 and records[0]["acc"] is None
    assert strict_lines(tmp_path / RESULTS_FILE)[2]["final"]["acc"] is None  # NaN stored as null


def test_a_clean_stop_is_not_recorded(tmp_path: Path) -> None:
    stopping = FakeTrain(stop_at=1)
    records = run_specs(specs(), tmp_path, base_overrides=BASE, train_fn=stopping)
    assert len(records) == 1 and len(stopping.calls) == 2  # the stopped run is redone next time


def test_a_torn_last_line_is_skipped_and_changed_specs_are_refused(tmp_path: Path) -> None:
    run_specs(specs(1)[:1], tmp_path, base_overrides=BASE, train_fn=FakeTrain())
    path = tmp_path / RESULTS_FILE
    path.write_text(path.read_text() + '{"name": "deit_micro_patch4_28-sgd-000", "lr": 0.0')  # cut by a crash
    assert len(read_records(path)) == 1
    rerun = FakeTrain()
    run_specs(specs(1), tmp_path, base_overrides=BASE, train_fn=rerun)
    assert rerun.calls == ["deit_micro_patch4_28-sgd-000"] and len(strict_lines(path)) == 2
    changed = lr_wd_specs(["deit_micro_patch4_28"], ["adamw"], 1, spaces={"adamw": space_around(5e-3, 0.05)})
    with pytest.raises(ConfigError, match="different overrides"):
        run_specs(changed, tmp_path, base_overrides=BASE, train_fn=FakeTrain())
    refused = FakeTrain()  # the same specs on a changed base recipe: the recorded runs no longer answer it
    with pytest.raises(ConfigError, match="different base recipe.*train.epochs=3"):
        run_specs(specs(1), tmp_path, base_overrides=[*BASE, "train.epochs=3"], train_fn=refused)
    assert refused.calls == []


def test_a_bad_spec_fails_before_any_run(tmp_path: Path) -> None:
    fake = FakeTrain()
    with pytest.raises(ConfigError, match="optim.nme"):
        run_specs(specs(1), tmp_path, base_overrides=[*BASE, "optim.nme=sgd"], train_fn=fake)
    assert fake.calls == []


@pytest.mark.slow  # five PNGs: about 3 s
def test_sweep_writes_summary_edf_and_scatter_plots(tmp_path: Path) -> None:
    report = sweep(
        tmp_path, models=["deit_micro_patch4_28", "vit_c_micro_28"], n=3, overrides=["data.dataset=synthetic"],
        centres={"adamw": (1e-3, 0.05)}, epoch_budgets=[1, 2], budget_seeds=[0, 1], train_fn=FakeTrain(),
    )  # fmt: skip
    names = {p.name for p in report.files}
    assert names == {"summary.json", "edf.png", "lr.png", "wd.png", "epochs.png"}
    for p in report.files:
        assert p.is_file() and (p.suffix != ".png" or p.read_bytes()[:8] == PNG)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(g["model"], g["optimizer"]) for g in summary["lr_wd"]} == {
        (m, o) for m in ("deit_micro_patch4_28", "vit_c_micro_28") for o in ("adamw", "sgd")
    }
    assert len(summary["epochs"]) == 2 * 2 * 2 and all(g["n"] == 2 for g in summary["epochs"])
    sgd = [r for r in report.data["lr_wd"] if r["optimizer"] == "sgd"]
    assert all(0.1 * 256 / 2048 <= r["lr"] <= 3.2 * 256 / 2048 for r in sgd)  # paper range at batch 256
    assert len(read_records(tmp_path / "lr_wd" / RESULTS_FILE)) == 12
    assert "vit_c_micro_28" in report.table and "best err" in report.table


@pytest.mark.slow
def test_real_micro_trainings_resume_after_a_crash(tmp_path: Path) -> None:
    base = [
        *BASE, "data.limit_train=64", "data.limit_eval=32", "data.batch_size=32", "train.epochs=1",
        "model.kwargs.depth=1", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2", "aug.rand_augment=null",
        "aug.re_prob=0", "aug.mixup=0", "aug.cutmix=0", "optim.warmup_epochs=0", "train.threads=1",
    ]  # fmt: skip
    calls: list[str] = []

    def crash_on_fourth(cfg: Any) -> Any:
        calls.append(cfg.train.output_dir)
        result = train(cfg)
        if len(calls) == 4:
            raise RuntimeError("killed before the record was written")
        return result

    with pytest.raises(RuntimeError, match="killed"):
        run_specs(specs(), tmp_path, base_overrides=base, train_fn=crash_on_fourth)
    assert len(read_records(tmp_path / RESULTS_FILE)) == 3
    calls.clear()
    records = run_specs(specs(), tmp_path, base_overrides=base, train_fn=lambda c: calls.append(1) or train(c))
    assert len(calls) == 1 and len(strict_lines(tmp_path / RESULTS_FILE)) == 4
    assert all(0 <= r["error"] <= 100 and r["history"] for r in records)
    assert not (Path(records[0]["run_dir"]) / "checkpoints").exists()  # resume files removed once recorded
    assert (Path(records[0]["run_dir"]) / "model.safetensors").is_file()


def peaked_train(cfg: Any) -> FakeResult:
    """A picklable stand-in for ``train`` (parallel runs execute in spawned processes): accuracy peaks at lr 1e-3."""
    if cfg.optim.lr > 1.0:
        raise RuntimeError("simulated failure in a worker")
    acc = 90.0 - 5 * abs(math.log10(cfg.optim.lr / 1e-3))
    return FakeResult({"acc": acc, "test_acc": acc}, [{"epoch": 0, "train_loss": 1.0, "acc": acc}])


def test_parallel_jobs_record_every_run_once_with_the_serial_results(tmp_path: Path) -> None:
    serial = run_specs(specs(3), tmp_path / "serial", base_overrides=BASE, train_fn=peaked_train)
    parallel = run_specs(specs(3), tmp_path / "parallel", base_overrides=BASE, train_fn=peaked_train, jobs=3)
    key = ("name", "error", "lr", "weight_decay")
    assert [{k: r.get(k) for k in key} for r in parallel] == [{k: r.get(k) for k in key} for r in serial]
    lines = read_records(tmp_path / "parallel" / RESULTS_FILE)
    assert sorted(r["name"] for r in lines) == sorted(s.name for s in specs(3))  # each once, in finishing order
    with pytest.raises(ConfigError, match="jobs=0"):
        run_specs(specs(1), tmp_path / "x", base_overrides=BASE, train_fn=peaked_train, jobs=0)


def test_a_failing_parallel_run_is_raised_after_the_others_are_recorded(tmp_path: Path) -> None:
    failing = lr_wd_specs(
        ["deit_micro_distilled_patch4_28"], ["sgd"], 1, spaces={"sgd": space_around(8.0, 1e-4, low=1, high=1)}
    )
    bad = [*specs(1), *failing]
    with pytest.raises(RuntimeError, match="simulated failure"):
        run_specs(bad, tmp_path, base_overrides=BASE, train_fn=peaked_train, jobs=2)
    assert {r["name"] for r in read_records(tmp_path / RESULTS_FILE)} <= {s.name for s in bad[:-1]}
