"""``deitlab export``: ONNX (checked with onnxruntime) and torch.export (.pt2) for every registry family."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import deitlab
from deitlab.cli import main
from deitlab.errors import ConfigError
from deitlab.export import ExportModule, export_model, onnx_session, require_onnx
from test_pretrained import FAMILIES, tiny  # tests/ is on sys.path (rootdir conftest)

try:
    require_onnx()
    HAVE_ONNX, WHY = True, ""
except ConfigError as e:
    HAVE_ONNX, WHY = False, f"the optional extra deitlab[export] is not installed ({e})"
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason=WHY)


def _predictor(family: str) -> deitlab.Predictor:
    model, shape = tiny(family)
    return deitlab.Predictor(model, deitlab.Preprocessing.default_for(shape[0], shape[1:]), source=family)


def _check_against_torch(run: callable, predictor: deitlab.Predictor, shape: tuple[int, ...], heads: str) -> None:
    """The exported program on a fresh batch size (5: neither checked size) against the PyTorch model."""
    x = torch.randn(5, *shape)
    with torch.no_grad():
        want = ExportModule(predictor.model, heads)(x)
    want = list(want) if isinstance(want, tuple) else [want]
    got = run(x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and float((torch.as_tensor(g) - w).abs().max()) <= 1e-4


@pytest.mark.slow
@needs_onnx
@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_export_matches_pytorch(family: str, tmp_path: Path) -> None:
    predictor = _predictor(family)
    heads = "both" if getattr(predictor.model, "distilled", False) else "fused"
    report = export_model(predictor, tmp_path / "m.onnx", fmt="onnx", heads=heads, batch_size=4)
    assert report.ok and report.max_abs_diff <= 1e-4 and report.checked_batches == [4, 1]
    assert report.opset == 17 and report.inputs == ["images"]
    session = onnx_session(report.path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == report.outputs
    assert session.get_inputs()[0].shape[0] == "batch"  # the dynamic axis
    meta = json.loads(session.get_modelmeta().custom_metadata_map["deitlab"])
    assert meta["architecture"] == FAMILIES[family][0] and meta["heads"] == heads
    shape = FAMILIES[family][2]
    _check_against_torch(lambda x: session.run(None, {"images": x.numpy()}), predictor, shape, heads)
    if family == "regnety":  # the dynamo exporter cannot down-convert RegNetY's graph to 17: the fallback says so
        assert report.exporter == "torchscript" and "opset 17" in report.notes[0]
    else:
        assert report.exporter == "dynamo" and not report.notes


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_pt2_export_matches_pytorch(family: str, tmp_path: Path) -> None:
    predictor = _predictor(family)
    report = export_model(predictor, tmp_path / "m.pt2", fmt="pt2", batch_size=3)
    assert report.ok and report.exporter == "torch.export" and report.checked_batches == [3, 1]
    extra = {"deitlab.json": ""}
    program = torch.export.load(str(report.path), extra_files=extra).module()
    assert json.loads(extra["deitlab.json"])["architecture"] == FAMILIES[family][0]

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [program(x)]

    _check_against_torch(run, predictor, FAMILIES[family][2], "fused")


def test_export_module_outputs() -> None:
    model, shape = tiny("deit")
    x = torch.randn(2, *shape)
    out = model(x)
    assert torch.equal(ExportModule(model)(x), out.fused())
    cls, dist = ExportModule(model, "both")(x)
    assert torch.equal(cls, out.cls_logits) and torch.equal(dist, out.dist_logits)
    with pytest.raises(ConfigError, match="needs a distilled model"):
        ExportModule(tiny("resnet9")[0], "both")


def test_export_without_the_extra_says_how_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    deitlab.save_pretrained(tiny("resnet9")[0], tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ONNX export needs ") and "onnxruntime" in err and len(err.splitlines()) == 1
    assert err.endswith(": pip install 'deitlab[export]'")
    assert not (tmp_path / "m.onnx").exists()


@needs_onnx
def test_export_rejects_a_low_opset(tmp_path: Path, capsys) -> None:
    deitlab.save_pretrained(tiny("resnet9")[0], tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--opset", "13", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "opset >= 17" in capsys.readouterr().err


@pytest.mark.slow
@needs_onnx
def test_cli_export_prints_the_check(tmp_path: Path, capsys) -> None:
    deitlab.save_pretrained(tiny("vit_c")[0], tmp_path / "m", label_names=[str(i) for i in range(10)])
    out = tmp_path / "student.onnx"
    assert main(["export", str(tmp_path / "m"), "--format", "onnx", "--output", str(out), "--heads", "both"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (ONNX opset 17, dynamo exporter" in text
    assert "outputs cls_logits, dist_logits" in text and "onnxruntime vs PyTorch on batches of 8 and 1" in text
    assert "OK" in text and out.is_file() and not list(tmp_path.glob(".*.tmp"))
