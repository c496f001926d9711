"""deitlab.optimize_for: the decision rules on injected timings, the per-machine cache, a real measurement on this
CPU that leaves the model untouched, and a training run that records its choice."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deitlab
from deitlab.config import build_config
from deitlab.engine import train
from deitlab.engine.eval_checkpoint import evaluate_checkpoint
from deitlab.engine.optim import build_optimizer
from deitlab.errors import ConfigError
from deitlab.optimize import choose, measure, plan_for
from deitlab.optimize.cache import TuneCache, cache_key, cpu_name
from deitlab.optimize.measure import Setting, StepTimer, precision_candidates

MICRO = dict(depth=1, embed_dim=32, num_heads=2)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DEITLAB_CACHE", str(root))
    monkeypatch.setattr("deitlab.optimize.tune._busy", lambda: False)  # the CI box may be loaded: still cache
    return root


def _model(**kw: object) -> torch.nn.Module:
    return deitlab.create_model("deit_micro_distilled_patch4_28", **{**MICRO, **kw})


class FakeClock:
    """Injected timings: seconds per step as a function of the setting; counts what was measured."""

    def __init__(self, cost) -> None:  # noqa: ANN001 - Setting -> seconds
        self.cost = cost
        self.compared: list[list[str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
        clock = self

        def compare(self: StepTimer, candidates: dict[str, Setting]) -> dict[str, float]:
            clock.compared.append(list(candidates))
            return {name: clock.cost(s) for name, s in candidates.items()}

        monkeypatch.setattr(StepTimer, "compare", compare)
        monkeypatch.setattr(StepTimer, "step", lambda self, s: None)
        monkeypatch.setattr(StepTimer, "timed", lambda self, s: clock.cost(s))
        monkeypatch.setattr(measure, "precision_candidates", lambda device: ["fp32", "bf16"])
        monkeypatch.setattr("deitlab.optimize.tune.precision_candidates", lambda device: ["fp32", "bf16"])
        return self


def _cost(fp32: float = 0.1, bf16: float = 0.05, sdpa: float = 1.0, explicit: float = 1.0, half: float = 1.0):
    """Step time: a precision's base time x the kernel's factor x the thread factor (``half`` for fewer threads)."""
    n = torch.get_num_threads()

    def cost(s: Setting) -> float:
        t = {"fp32": fp32, "bf16": bf16}[s.precision]
        t *= {None: 1.0, "sdpa": sdpa, "explicit": explicit}[s.attention]
        return t * (half if s.threads is not None and s.threads < n else 1.0)

    return cost


# ---- decision rules ------------------------------------------------------------------------------------------------
def test_pick_preferred_moves_off_the_precise_choice_only_by_a_margin() -> None:
    pref = choose.PRECISION_PREFERENCE
    assert choose.pick_preferred({"fp32": 1.0, "bf16": 0.5}, pref, 0.05) == "bf16"
    assert choose.pick_preferred({"fp32": 1.0, "bf16": 0.97}, pref, 0.05) == "fp32"  # 3% is noise
    assert choose.pick_preferred({"fp32": 1.0, "bf16": 1.6}, pref, 0.05) == "fp32"  # the Intel-without-AMX case
    # fp16 a hair faster than bf16: bf16 (no loss scaler, wider range) stays
    assert choose.pick_preferred({"fp32": 1.0, "bf16": 0.52, "fp16": 0.50}, pref, 0.05) == "bf16"
    assert choose.pick_preferred({"fp32": 1.0, "bf16": 0.7, "fp16": 0.5}, pref, 0.05) == "fp16"
    with pytest.raises(ValueError):
        choose.pick_preferred({}, pref, 0.05)


def test_measuring_and_compiling_must_pay_for_themselves() -> None:
    assert not choose.worth_measuring(0.1, expected_steps=5, candidates=4)  # 0.5 s of run, 1.6 s of measuring
    assert choose.worth_measuring(0.1, expected_steps=1000, candidates=4)
    assert choose.worth_measuring(0.1, expected_steps=None, candidates=4)
    # 3,744 steps of 90 ms (the demo student): 337 s eager saves at most 78 s < 2 x 90 s of compiling
    assert not choose.should_try_compile(0.09, 3744, choose.compile_prior("cpu", "train", None))[0]
    assert choose.should_try_compile(0.09, 100_000, choose.compile_prior("cpu", "train", None))[0]
    # its teacher's forward (3,440 steps of ~40 ms): an inference graph compiles in seconds, worth trying
    assert choose.should_try_compile(0.04, 3440, choose.compile_prior("cpu", "infer", None))[0]
    assert not choose.should_try_compile(0.09, None, 60.0)[0]
    assert choose.compile_prior("cpu", "train", 10.0) == pytest.approx(10.0 * (1 + choose.LATER_GRAPHS_FRACTION))
    assert choose.keep_compiled(1.0, 0.7, 30.0, 10_000)[0]
    assert not choose.keep_compiled(1.0, 0.98, 30.0, 10_000)[0]  # not faster by the margin
    assert not choose.keep_compiled(1.0, 0.7, 30.0, 10)[0]  # saves 3 s, the eval graphs cost more


# ---- plan_for with injected timings --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cost", "precision", "attention", "threads"),
    [
        (_cost(fp32=0.1, bf16=0.05), "bf16", "sdpa", None),  # bf16 2x faster; kernels tie -> fused
        (_cost(fp32=0.1, bf16=0.098), "fp32", "sdpa", None),  # 2% is not worth bf16
        (_cost(fp32=0.1, bf16=0.16, sdpa=1.4), "fp32", "explicit", None),  # CPU flash backward is slow
        (_cost(half=0.8), "bf16", "sdpa", 1),  # fewer threads win by 20% (a loaded machine)
        (_cost(half=0.95), "bf16", "sdpa", None),  # 5%: within the thread margin, keep them
    ],
)
def test_plan_follows_the_measured_times(monkeypatch, cost, precision, attention, threads) -> None:
    torch.set_num_threads(2)
    FakeClock(cost).install(monkeypatch)
    plan = plan_for(_model(), torch.randn(8, 1, 28, 28), "train", expected_steps=10_000, compile="never")
    assert (plan.precision, plan.attention, plan.threads) == (precision, attention, threads)
    assert plan.source == "measured" and set(plan.times) >= {"precision", "attention", "threads", "best"}
    assert "fp32" in plan.reasons["precision"] and "ms" in plan.reasons["precision"]


def test_fixed_settings_are_not_measured(monkeypatch) -> None:
    clock = FakeClock(_cost()).install(monkeypatch)
    plan = plan_for(_model(), torch.randn(8, 1, 28, 28), precision="fp32", attention="explicit", threads="keep",
                    compile="never", expected_steps=10_000)  # fmt: skip
    assert (plan.precision, plan.attention, plan.threads, clock.compared) == ("fp32", "explicit", None, [])
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        plan_for(_model(), torch.randn(2, 1, 28, 28), precision="fp16")
    with pytest.raises(ConfigError, match="mode='eval' is not one of"):
        plan_for(_model(), torch.randn(2, 1, 28, 28), mode="eval")


def test_a_short_run_is_not_measured(monkeypatch) -> None:
    clock = FakeClock(_cost()).install(monkeypatch)
    plan = plan_for(_model(), torch.randn(8, 1, 28, 28), expected_steps=3)
    assert plan.precision == "fp32" and plan.source == "short run" and clock.compared == []
    assert "too short" in plan.reasons["precision"] and not plan.compile


def test_a_short_pass_logs_its_plan_only_at_debug_level(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    """`deitlab predict one.png` measures nothing, so optimize_for says nothing at INFO; a measured plan does."""
    FakeClock(_cost()).install(monkeypatch)
    with caplog.at_level(logging.INFO, logger="deitlab.optimize.tune"):
        deitlab.optimize_for(_model(), torch.randn(8, 1, 28, 28), "infer", expected_steps=1, cache=False)
        assert "optimize_for" not in caplog.text
        deitlab.optimize_for(_model(), torch.randn(8, 1, 28, 28), "infer", expected_steps=10_000, cache=False,
                             compile="never")  # fmt: skip
        assert "optimize_for(infer, measured)" in caplog.text


def test_compile_is_tried_for_long_runs_and_kept_when_it_pays(monkeypatch) -> None:
    FakeClock(_cost()).install(monkeypatch)
    compiled: list[bool] = []

    def fake_compile(self: StepTimer, s: Setting, **_: object) -> float:
        compiled.append(True)
        return 40.0

    monkeypatch.setattr(StepTimer, "compile", fake_compile)
    monkeypatch.setattr(StepTimer, "drop_compiled", lambda self: compiled.append(False))
    monkeypatch.setattr(deitlab.optimize.tune, "apply_plan", lambda m, p: m)
    x = torch.randn(8, 1, 28, 28)
    short = plan_for(_model(), x, expected_steps=2000, cache=False)  # 100 s of bf16 steps: do not even try
    assert not short.compile and compiled == [] and "compile" in short.reasons["compile"]
    real_compare = StepTimer.compare

    def compare(self: StepTimer, candidates: dict[str, Setting]) -> dict[str, float]:
        times = real_compare(self, candidates)
        return {k: v * (0.7 if k == "compiled" else 1.0) for k, v in times.items()}

    monkeypatch.setattr(StepTimer, "compare", compare)
    long = plan_for(_model(), x, expected_steps=200_000, cache=True)
    assert long.compile and compiled == [True] and long.compile_seconds == 40.0
    assert "1.43x eager" in long.reasons["compile"]
    again = plan_for(_model(), x, expected_steps=200_000)  # from the cache: weighed without compiling again
    assert again.source == "cache" and again.compile and compiled == [True]


# ---- cache ---------------------------------------------------------------------------------------------------------
def test_cache_hit_and_what_changes_the_key(monkeypatch, _cache: Path) -> None:
    clock = FakeClock(_cost()).install(monkeypatch)
    x = torch.randn(8, 1, 28, 28)
    first = plan_for(_model(), x, expected_steps=10_000, compile="never")
    n = len(clock.compared)
    second = plan_for(_model(), x, expected_steps=10_000, compile="never")
    assert (first.source, second.source, len(clock.compared)) == ("measured", "cache", n)  # nothing re-measured
    assert second.precision == first.precision and second.times == first.times
    stored = json.loads((_cache / "optimize.json").read_text())
    assert len(stored["entries"]) == 1
    for changed in (
        dict(x=torch.randn(16, 1, 28, 28)),  # batch shape
        dict(mode="infer"),
        dict(model=_model(depth=2)),  # model kwargs
    ):
        kw = {"x": x, "mode": "train", "model": _model(), **changed}
        assert plan_for(kw["model"], kw["x"], kw["mode"], expected_steps=10_000, compile="never").source == "measured"
    torch.set_num_threads(1)  # the thread count is part of the key
    try:
        assert plan_for(_model(), x, expected_steps=10_000, compile="never").source == "measured"
    finally:
        torch.set_num_threads(2)
    key = cache_key(_model(), x, "train", {"precision": "auto"})
    assert key["machine"] == cpu_name() and key["torch"] == torch.__version__ and key["batch"] == [8, 1, 28, 28]


def test_cache_survives_corruption_and_can_be_switched_off(monkeypatch, _cache: Path) -> None:
    FakeClock(_cost()).install(monkeypatch)
    _cache.mkdir(parents=True)
    (_cache / "optimize.json").write_text("{not json")
    x = torch.randn(8, 1, 28, 28)
    assert plan_for(_model(), x, expected_steps=10_000, compile="never").source == "measured"
    assert plan_for(_model(), x, expected_steps=10_000, compile="never").source == "cache"  # rewritten
    cache = TuneCache(_cache)
    key = cache_key(_model(), x, "train", {"x": 1})
    assert cache.get(key) is None
    monkeypatch.setenv("DEITLAB_CACHE", "off")
    (_cache / "optimize.json").unlink()
    assert plan_for(_model(), x, expected_steps=10_000, compile="never").source == "measured"
    assert not (_cache / "optimize.json").exists()


def test_a_plan_measured_on_a_busy_machine_is_used_but_not_cached(monkeypatch, _cache: Path) -> None:
    FakeClock(_cost()).install(monkeypatch)
    monkeypatch.setattr("deitlab.optimize.tune._busy", lambda: True)
    plan = plan_for(_model(), torch.randn(8, 1, 28, 28), expected_steps=10_000, compile="never")
    assert plan.busy and plan.precision == "bf16" and not (_cache / "optimize.json").exists()


# ---- real measurement on this CPU ----------------------------------------------------------------------------------
def test_auto_resolves_to_a_valid_precision_here_and_leaves_the_model_untouched() -> None:
    model = deitlab.create_model("resnet9_w16", num_classes=10, in_chans=1, img_size=32)  # BatchNorm buffers move
    vit = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 32, 32)
    rng = torch.get_rng_state()
    out, precision = deitlab.optimize_for(model, x, "train", compile="never", threads="keep")
    assert out is model and precision in precision_candidates(torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert all(p.grad is None for p in model.parameters())
    _, precision = deitlab.optimize_for(vit.eval(), torch.randn(8, 1, 28, 28), "infer", compile="never")
    assert precision in ("fp32", "bf16") and not vit.training
    kernels = {m.attn_impl for m in measure.plain_attention(vit)}
    assert kernels <= {"sdpa", "explicit"} and len(kernels) == 1


# ---- a training run records its choice -----------------------------------------------------------------------------
def _run_cfg(tmp: Path, *extra: str):
    return build_config(overrides=[
        "model.name=deit_micro_distilled_patch4_28", "data.dataset=synthetic", "data.batch_size=32",
        "data.limit_train=64", "data.limit_eval=32", "train.epochs=1", f"train.output_dir={tmp}",
        "model.kwargs.depth=1", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2", "train.progress=false",
        "aug.rand_augment=null", "aug.re_prob=0", "data.test_at_end=false", *extra,
    ])  # fmt: skip


@pytest.mark.slow
def test_a_run_logs_and_records_its_choice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _run_cfg(tmp_path / "run")
    assert cfg.train.precision == "auto" and cfg.train.compile == "auto"  # the defaults
    with caplog.at_level(logging.INFO, logger="deitlab"):
        train(cfg)
    assert "student: optimize_for(train, short run) -> precision fp32" in caplog.text
    plans = json.loads((tmp_path / "run" / "optimize.json").read_text())
    assert plans["student"]["precision"] == "fp32" and "too short" in plans["student"]["reasons"]["precision"]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "precision: fp32" in saved  # the resolved value: a resume runs the same precision
    report = evaluate_checkpoint(tmp_path / "run", split="val", precision="auto")  # deitlab eval's default
    assert report["images"] > 0 and 0 <= report["metrics"]["acc"] <= 100


def test_optimizers_use_fused_kernels_on_the_cpu() -> None:
    """Fused AdamW/SGD: one kernel over all parameters (AdamW's step 20 -> 1.7 ms for the demo student)."""
    for name in ("adamw", "sgd"):
        opt = build_optimizer(_model(), name=name, lr=1e-3, weight_decay=0.05)
        assert opt.defaults["fused"] is True and not opt.defaults["foreach"]


@pytest.mark.slow
def test_a_measured_run_records_the_times_and_a_resume_replays_them(tmp_path: Path, monkeypatch) -> None:
    FakeClock(_cost(fp32=0.1, bf16=0.04)).install(monkeypatch)
    cfg = _run_cfg(tmp_path / "run", "train.compile=never")
    monkeypatch.setattr(choose, "worth_measuring", lambda *a: True)  # a 2-step run, measured anyway
    train(cfg)
    plans = json.loads((tmp_path / "run" / "optimize.json").read_text())
    assert plans["student"]["precision"] == "bf16" and plans["student"]["times"]["precision"]["fp32"] == 0.1
    assert "precision: bf16" in (tmp_path / "run" / "config.yaml").read_text()
    monkeypatch.setattr(StepTimer, "compare", lambda *a: pytest.fail("a resume must not measure"))
    resumed = build_config(overrides=[f"train.resume={tmp_path / 'run'}", "train.epochs=2", "train.progress=false"])
    train(resumed)
    assert json.loads((tmp_path / "run" / "optimize.json").read_text())["student"]["source"] == "resumed"


def test_compile_covers_only_the_planned_mode(monkeypatch) -> None:
    """A training plan compiles the training graph; evaluation stays eager (no second compile, no recompiles)."""
    calls: list[str] = []

    def fake_compile(fn):  # noqa: ANN001, ANN202
        def compiled(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append("compiled")
            return fn(*args, **kwargs)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    model, x = _model(), torch.randn(2, 1, 28, 28)
    keys = list(model.state_dict())
    measure.compile_in_mode(model, "train")
    model.train()(x)
    model.eval()(x)
    assert calls == ["compiled"] and list(model.state_dict()) == keys
    other = _model()
    measure.compile_in_mode(other, "infer")
    other.eval()(x)
    other.train()(x)
    assert calls == ["compiled", "compiled"]


@pytest.mark.slow
def test_a_real_compile_is_measured_and_kept_when_asked() -> None:
    # a deitlab model: dynamo skips frames that are all torch.nn code (an nn.Sequential would "compile" to nothing)
    model, x = _model(drop_path_rate=0.0), torch.randn(8, 1, 28, 28)
    eager = model.train()(x)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    plan = plan_for(model, x, "train", precision="fp32", threads="keep", compile="always", cache=False)
    assert plan.compile and plan.compile_seconds > 0 and set(plan.times["compile"]) == {"eager", "compiled"}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # a graph was really compiled
    deitlab.optimize.apply_plan(model, plan)
    assert model._compiled_call_impl is not None
    torch.testing.assert_close(model.train()(x), eager, rtol=1e-4, atol=1e-5)


_FAULTS = """
import json, resource, sys
import torch
from deitlab.optimize.memory import retain_freed_memory
applied = retain_freed_memory()
def churn():  # activations that come and go: 40 MB blocks (above glibc's 32 MB dynamic mmap limit), written, freed
    for _ in range(10):
        torch.ones(10 << 20).add_(1)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_retained_memory_removes_the_page_faults_of_repeated_large_blocks() -> None:
    got = {}
    for side, env in (("system", "system"), ("retain", "")):
        out = subprocess.run([sys.executable, "-c", _FAULTS], env={**os.environ, "DEITLAB_MALLOC": env},
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        got[side] = json.loads(out.strip().splitlines()[-1])
    assert got["system"]["applied"] is False and got["retain"]["applied"] is True
    # 10 fresh 40 MB blocks -> ~10,000 faults each with the default allocator; none once freed blocks stay
    assert got["system"]["faults"] > 50_000
    assert got["retain"]["faults"] < 500
