"""The functions behind ``deitlab analyze``: a run directory or a registry name in, valid JSON and PNGs out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import deitlab
from deitlab.analysis.report import (
    analyze_agreement,
    analyze_attention,
    analyze_collapse,
    analyze_curves,
    analyze_tokens,
    load_subject,
)
from deitlab.errors import CheckpointError, ConfigError
from deitlab.io import save_weights

PNG = b"\x89PNG\r\n\x1a\n"


def check_files(files: list[Path]) -> None:
    assert files
    for f in files:
        assert f.is_file(), f
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == PNG
        else:
            json.loads(f.read_text(), parse_constant=lambda t, f=f: pytest.fail(f"{t} in {f}"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished-looking run: a 2-block distilled student on 32 px synthetic images, and its teacher."""
    root = tmp_path_factory.mktemp("run")
    shape = dict(num_classes=10, in_chans=3, img_size=32)
    save_weights(deitlab.create_model("deit_micro_distilled_patch4_28", depth=2, **shape), root / "model.safetensors")
    save_weights(deitlab.create_model("resnet9_w16", **shape), root / "teacher.safetensors")
    config = {
        "model": {"name": "deit_micro_distilled_patch4_28"},
        "teacher": {"path": str(root / "teacher.safetensors")},
        "distill": {"type": "hard"},
        "data": {"dataset": "synthetic"},
        "aug": {"eval_crop_pct": 1.0},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.mark.slow  # three PNGs: about 2.5 s on 2 cores
def test_collapse_of_an_untrained_registry_model(tmp_path: Path) -> None:
    s = load_subject(model="deepvit_micro_patch4_28", data_set="synthetic", num_images=3)
    assert s.images.shape == (3, 3, 32, 32) and s.raw.dtype.__str__() == "torch.uint8"
    report = analyze_collapse(s, tmp_path)
    check_files(report.files)
    assert {f.name for f in report.files} == {"collapse.json", "collapse_similarity.png", "collapse_curves.png"}
    assert "similar blocks" in report.table and "sim_prev_mixed" in report.table  # re-attention: both maps
    assert report.data["deepvit_micro_patch4_28"]["num_blocks"] == 6
    plain = load_subject(model="deit_micro_patch4_28", data_set="synthetic", num_images=2)
    both = analyze_collapse([s, plain, plain], tmp_path / "both")  # a model twice: labelled apart
    check_files(both.files)
    assert list(both.data) == ["deepvit_micro_patch4_28", "deit_micro_patch4_28", "deit_micro_patch4_28#2"]
    assert len(both.files) == 5 and both.table.split()[0] == "model"  # one summary row per model


@pytest.mark.slow  # three PNGs: about 2.5 s on 2 cores
def test_tokens_and_attention_of_a_run_directory(run_dir: Path, tmp_path: Path) -> None:
    s = load_subject(run_dir, num_images=2, weights="final")
    assert s.name == "deit_micro_distilled_patch4_28" and s.config is not None and s.label == run_dir.name
    tokens = analyze_tokens(s, tmp_path)
    check_files(tokens.files)
    assert len(tokens.data[run_dir.name]["block_cosine"]) == 2 and "heads" in tokens.table
    attention = analyze_attention(s, tmp_path)
    check_files(attention.files)
    assert [f.name for f in attention.files] == ["attention.json", "attention_0.png", "attention_1.png"]
    assert attention.data["grid"] == [8, 8]


@pytest.mark.slow  # four PNGs
def test_agreement_uses_the_runs_own_teacher(run_dir: Path, tmp_path: Path) -> None:
    report = analyze_agreement(load_subject(run_dir, num_images=64), tmp_path, batch_size=32)
    check_files(report.files)
    assert {f.name for f in report.files} == {"agreement.json", "confusion_cls.png", "confusion_dist.png",
                                              "confusion_fused.png"}  # fmt: skip
    assert report.data["num_images"] == 64 and "teacher" in report.data and "cls|dist agree" in report.table


def test_curves_overlay_run_logs(tmp_path: Path) -> None:
    runs = []
    for name, accs in (("a", [50.0, 60.0]), ("b", [40.0, 70.0])):
        d = tmp_path / name
        d.mkdir()
        rows = [{"epoch": i, "train_loss": 2.0 - i, "acc": a} for i, a in enumerate(accs)]
        (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 2, "trai')
        runs.append(d)
    report = analyze_curves(runs, tmp_path / "out", labels=["first", "second"])
    check_files(report.files)
    assert list(report.data) == ["first", "second"] and len(report.data["first"]) == 2  # torn line skipped
    assert "70" in report.table
    with pytest.raises(ConfigError, match="one label per run"):
        analyze_curves(runs, tmp_path / "out", labels=["only one"])


def test_bad_sources_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either a run directory or --model"):
        load_subject()
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_subject(tmp_path)
    with pytest.raises(ConfigError, match="pass --data-set"):
        load_subject(model="deit_micro_patch4_28")
    with pytest.raises(ConfigError, match="num-images"):
        load_subject(model="deit_micro_patch4_28", data_set="synthetic", num_images=0)
