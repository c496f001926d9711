"""torch.compile that cannot run on this machine (no C++ compiler, an operation the compiler rejects): ``auto`` falls
back to eager, says why, and does not try again; ``always`` stops with one line; a cached plan that compiles falls
back at its first call; the model's own errors still surface as themselves."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import deitlab
from deitlab.cli import main
from deitlab.errors import ConfigError
from deitlab.optimize import apply_plan, measure, plan_for

NO_CXX = "InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx: ('g++',)"
ERROR = f"RuntimeError: {NO_CXX}"  # what the plan records: the type and the message's first line


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEITLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("deitlab.optimize.tune._busy", lambda: False)
    return tmp_path / "cache"


def _failing_compile(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch.compile as on a machine without a C++ compiler: the first call of the compiled function raises."""
    calls: list[int] = []

    def fake_compile(fn):  # noqa: ANN001, ANN202
        def compiled(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(1)
            raise RuntimeError(f"{NO_CXX}\n\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace")

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


def _model() -> torch.nn.Module:
    return deitlab.create_model("deit_micro_distilled_patch4_28", depth=1, embed_dim=32, num_heads=2)


def test_auto_falls_back_to_eager_says_why_and_does_not_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _failing_compile(monkeypatch)
    model, x = _model(), torch.randn(4, 1, 28, 28)
    before = [t.clone() for t in model.state_dict().values()]
    plan = plan_for(model, x, "train", precision="fp32", threads="keep", expected_steps=10**9)
    assert calls == [1] and not plan.compile and plan.compile_error == ERROR
    assert plan.reasons["compile"] == f"torch.compile failed here ({ERROR}): eager"
    assert model._compiled_call_impl is None  # the model runs eager and is as it was
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))
    model.train()(x)
    again = plan_for(_model(), x, "train", precision="fp32", threads="keep", expected_steps=10**9)
    assert again.source == "cache" and calls == [1] and not again.compile
    assert again.reasons["compile"] == f"torch.compile failed here before ({ERROR})"
    monkeypatch.setattr("deitlab.optimize.tune._toolchain", lambda: "/usr/local/bin/g++")  # a compiler installed
    retried = plan_for(_model(), x, "train", precision="fp32", threads="keep", expected_steps=10**9)
    assert calls == [1, 1] and not retried.compile and retried.compile_toolchain == "/usr/local/bin/g++"


def test_always_stops_with_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_compile(monkeypatch)
    model, x = _model(), torch.randn(4, 1, 28, 28)
    with pytest.raises(ConfigError, match=r"torch.compile fails on this machine \(RuntimeError: InvalidCxx") as e:
        plan_for(model, x, "train", precision="fp32", threads="keep", compile="always", cache=False)
    assert "install a C++ compiler" in str(e.value) and "\n" not in str(e.value)
    assert model._compiled_call_impl is None


def test_a_compiled_plan_falls_back_at_its_first_call(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    calls = _failing_compile(monkeypatch)
    model, x = _model().train(), torch.randn(4, 1, 28, 28)
    torch.manual_seed(1)
    expected = model(x)
    plan = plan_for(model, x, "train", precision="fp32", attention="keep", threads="keep", compile="never")
    plan.compile = True  # as read from the cache of a machine that compiled (its compiler since removed)
    apply_plan(model, plan)
    torch.manual_seed(1)
    with caplog.at_level(logging.WARNING, logger="deitlab.optimize.measure"):
        got = model(x)
    torch.testing.assert_close(got, expected)
    assert calls == [1] and model._compiled_call_impl is None
    assert f"torch.compile failed here ({ERROR}): the model runs eager" in caplog.text
    model(x)
    assert calls == [1]


def test_the_models_own_error_is_not_mistaken_for_the_compilers(monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_compile(monkeypatch)
    model = _model().train()
    measure.compile_in_mode(model, "train")
    with pytest.raises(ValueError, match="does not fit this model") as e:
        model(torch.randn(4, 3, 28, 28))  # 3 channels into a 1-channel stem: the eager error is raised
    assert "InvalidCxxCompiler" not in str(e.value)


@pytest.mark.slow
def test_a_real_compile_without_a_compiler(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Inductor itself, pointed at a compiler that does not exist (and with no cached kernels to reuse)."""
    no_cxx = {"cpp.cxx": (str(tmp_path / "no-such-g++"),), "fx_graph_cache": False}
    argv = ["train", "--model", "deit_micro_distilled_patch4_28", "--data-set", "synthetic", "--epochs", "1",
            "--set", "train.compile=always", "--output-dir", str(tmp_path / "run")]  # fmt: skip
    torch._dynamo.reset()
    try:
        with torch._inductor.config.patch(no_cxx):
            model, x = _model(), torch.randn(4, 1, 28, 28)
            plan = plan_for(model, x, "train", precision="fp32", threads="keep", expected_steps=10**9)
            assert not plan.compile and "InvalidCxxCompiler" in (plan.compile_error or "")
            torch._dynamo.reset()
            assert main(argv) == 2
    finally:
        torch._dynamo.reset()  # no graph compiled under the patch outlives it
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: compile 'always' was asked, but torch.compile fails") and "InvalidCxx" in last
