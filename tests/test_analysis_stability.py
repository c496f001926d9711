"""EDF against a constructed case, log-uniform (lr, wd) sampling, run-spec builders and summaries."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deitlab.analysis import RunSpec, edf, edf_at, grid_specs, lr_wd_specs, paper_space, sample_lr_wd, space_around
from deitlab.analysis.stability import aggregate, summarize_lr_wd


def test_edf_of_a_constructed_set_of_errors() -> None:
    # errors 30, 32, 31, 40 -> best 30, gaps 0, 2, 1, 10 -> F(0)=1/4, F(1)=2/4, F(2)=3/4, F(10)=1
    e = edf([30.0, 32.0, 31.0, 40.0])
    assert e["best"] == 30.0 and e["n"] == 4
    assert e["x"] == [0.0, 1.0, 2.0, 10.0] and e["F"] == [0.25, 0.5, 0.75, 1.0]
    assert edf_at([30.0, 32.0, 31.0, 40.0], [-0.1, 0.5, 1.0, 9.9, 50]) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_diverged_runs_count_as_error_100() -> None:
    # NaN, None and a flagged run all become 100: gaps 0, 80, 80, 80
    e = edf([20.0, float("nan"), None, 25.0], diverged=[False, False, False, True])
    assert e["gaps"] == [0.0, 80.0, 80.0, 80.0] and e["F"] == [0.25, 1.0]
    assert edf([None, None])["best"] == 100.0
    with pytest.raises(ValueError, match="one per run"):
        edf([1.0], diverged=[True, False])
    with pytest.raises(ValueError, match="at least one"):
        edf([])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=30), st.integers(-2000, 2000))
def test_edf_is_a_distribution_function_and_ignores_a_shift(quarters: list[int], shift: int) -> None:
    errors = [h / 4 for h in quarters]  # quarters: exact in binary, so a shift changes no gap
    e = edf(errors)
    assert all(a <= b for a, b in zip(e["F"], e["F"][1:]))
    assert e["F"][-1] == 1.0 and e["F"][0] >= 1 / len(errors) and e["x"][0] == 0.0
    shifted = edf([v + shift / 4 for v in errors])
    assert shifted["F"] == e["F"] and shifted["x"] == e["x"]


def test_paper_space_scales_the_lr_linearly_from_batch_2048() -> None:
    s = paper_space("adamw", 256)
    assert s.lr == pytest.approx((2.5e-4 / 8, 8e-3 / 8)) and s.wd == (0.02, 0.8)
    assert paper_space("sgd", 2048).lr == (0.1, 3.2)
    assert space_around(1e-3, 0.05).lr == pytest.approx((1e-3 / 8, 4e-3))
    assert space_around(1e-3, 0.05).middle() == (1e-3, 0.05)
    assert paper_space("sgd", 2048).middle() == pytest.approx((0.8, 3.2e-5))  # 8 x the low ends
    assert paper_space("adamw", 2048).centre[0] * 4 == pytest.approx(8e-3)
    with pytest.raises(ValueError, match="no paper range"):
        paper_space("lamb", 256)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 40))
def test_samples_are_log_uniform_in_range_and_extendable(seed: int, n: int) -> None:
    space = space_around(1e-3, 0.05)
    pairs = sample_lr_wd(n, space, seed=seed)
    assert len(pairs) == n
    assert all(space.lr[0] <= lr <= space.lr[1] and space.wd[0] <= wd <= space.wd[1] for lr, wd in pairs)
    assert sample_lr_wd(n + 5, space, seed=seed)[:n] == pairs  # growing a sweep keeps its first runs


def test_samples_cover_the_log_range_evenly() -> None:
    lrs = [lr for lr, _ in sample_lr_wd(4000, space_around(1.0, 1.0, low=0.01, high=1.0), seed=1)]
    below = sum(lr < 0.1 for lr in lrs) / len(lrs)  # log-uniform on [1e-2, 1]: half the mass below 1e-1
    assert below == pytest.approx(0.5, abs=0.03)


def test_lr_wd_specs_pair_models_on_the_same_samples() -> None:
    spaces = {"adamw": space_around(1e-3, 0.05), "sgd": space_around(0.1, 1e-4)}
    specs = lr_wd_specs(["vit_p", "vit_c"], ["adamw", "sgd"], 3, spaces=spaces, extra=("train.epochs=2",))
    assert [s.name for s in specs[:4]] == ["vit_p-adamw-000", "vit_p-adamw-001", "vit_p-adamw-002", "vit_c-adamw-000"]
    assert len(specs) == 12 and len({s.name for s in specs}) == 12
    lr = {s.name: next(o for o in s.overrides if o.startswith("optim.lr=")) for s in specs}
    assert lr["vit_p-adamw-001"] == lr["vit_c-adamw-001"] != lr["vit_p-sgd-001"]
    assert "optim.scale_lr=false" in specs[0].overrides and specs[0].overrides[-1] == "train.epochs=2"
    with pytest.raises(ValueError, match="no search space"):
        lr_wd_specs(["m"], ["lamb"], 1, spaces=spaces)


def test_grid_specs_take_config_keys_and_named_bundles() -> None:
    axes = {
        "data.limit_train": [2500, 5000],
        "aug": [("none", ["aug.mixup=0", "aug.cutmix=0"]), ("deit", [])],
        "train.seed": [0, 1],
    }
    specs = grid_specs(axes, extra=["train.epochs=3"], study="distill")
    assert len(specs) == 8
    first = specs[0]
    assert first.name == "limit_train=2500,aug=none,seed=0"
    assert first.overrides == ("data.limit_train=2500", "aug.mixup=0", "aug.cutmix=0", "train.seed=0", "train.epochs=3")
    assert first.labels == {"study": "distill", "limit_train": 2500, "aug": "none", "seed": 0}
    assert grid_specs({"model.name": ["vit_c_micro_28"], "optim.lr": [1e-3]})[0].name == "model=vit_c_micro_28,lr=0.001"
    with pytest.raises(ValueError, match="letters, digits"):
        RunSpec("bad name/with slash")


def test_aggregate_and_summary() -> None:
    records = [
        {"labels": {"model": "a"}, "epochs": 1, "acc": 80.0, "error": 20.0, "lr": 1e-3, "wd": 0.1},
        {"labels": {"model": "a"}, "epochs": 1, "acc": 84.0, "error": 16.0, "lr": 2e-3, "wd": 0.2},
        {"labels": {"model": "a"}, "epochs": 1, "acc": None, "error": 100.0, "diverged": True, "lr": 9e-3, "wd": 0.3},
        {"labels": {"model": "b"}, "epochs": 1, "acc": 70.0, "error": 30.0, "lr": 1e-3, "wd": 0.1},
    ]
    by_model = aggregate(records, ["model", "epochs"])
    assert by_model[0] == {"model": "a", "epochs": 1, "n": 2, "mean": 82.0, "std": math.sqrt(8.0), "min": 80.0,
                           "max": 84.0}  # fmt: skip
    assert by_model[1]["n"] == 1 and by_model[1]["std"] == 0.0
    s = summarize_lr_wd(records, by=("model",))
    assert s[0]["n"] == 3 and s[0]["diverged"] == 1 and s[0]["best_error"] == 16.0 and s[0]["best_lr"] == 2e-3
    assert s[0]["median_error"] == 20.0 and s[0]["edf_at"]["5.0"] == pytest.approx(2 / 3)
