"""``deitlab analyze ...`` and ``deitlab sweep`` through ``main()``: JSON + PNG on disk, a table on stdout, and one
``error:`` line with the right exit code for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import deitlab
from deitlab.analysis.sweep import RESULTS_FILE
from deitlab.cli import main
from deitlab.io import save_weights

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["data.dataset=synthetic", "model.kwargs.depth=1", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2",
        "data.limit_train=64", "data.limit_eval=32", "data.batch_size=32", "train.epochs=1", "aug.rand_augment=null",
        "aug.mixup=0", "aug.cutmix=0", "aug.re_prob=0", "optim.warmup_epochs=0"]  # fmt: skip


def check_outputs(folder: Path, names: set[str]) -> None:
    assert {f.name for f in folder.iterdir()} >= names
    for name in names:
        data = (folder / name).read_bytes()
        if name.endswith(".png"):
            assert data[:8] == PNG, name
        else:
            json.loads(data, parse_constant=lambda t, name=name: pytest.fail(f"{t} in {name}"))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished-looking run: a 2-block distilled student on synthetic 32 px images, its teacher and its log."""
    root = tmp_path_factory.mktemp("cli") / "student"
    root.mkdir()
    shape = dict(num_classes=10, in_chans=3, img_size=32)
    save_weights(deitlab.create_model("deit_micro_distilled_patch4_28", depth=2, **shape), root / "model.safetensors")
    save_weights(deitlab.create_model("resnet9_w16", **shape), root / "teacher.safetensors")
    config = {"model": {"name": "deit_micro_distilled_patch4_28", "kwargs": {"depth": 2}},
              "teacher": {"path": str(root / "teacher.safetensors")}, "distill": {"type": "hard"},
              "data": {"dataset": "synthetic"}, "aug": {"eval_crop_pct": 1.0}}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"epoch": i, "train_loss": 2.0 / (i + 1), "acc": 30.0 + 10 * i} for i in range(3)]
    (root / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.slow  # four analyses, nine PNGs
def test_analyze_kinds_on_a_run_directory(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "collapse", str(run_dir), "--num-images", "3", "--weights", "final"]) == 0
    out = capsys.readouterr().out
    assert "similar blocks" in out and "wrote 3 files" in out
    check_outputs(run_dir / "analysis", {"collapse.json", "collapse_similarity.png", "collapse_curves.png"})
    collapse = json.loads((run_dir / "analysis" / "collapse.json").read_text())["student"]
    assert collapse["num_blocks"] == 2 and len(collapse["similarity"]) == 2

    assert main(["analyze", "tokens", str(run_dir), "--num-images", "3", "--weights", "final"]) == 0
    assert "block 2" in capsys.readouterr().out
    check_outputs(run_dir / "analysis", {"tokens.json", "tokens.png"})

    out_dir = run_dir.parent / "agree"
    args = ["analyze", "agreement", str(run_dir), "--num-images", "40", "--weights", "final", "--output-dir"]
    assert main([*args, str(out_dir), "--batch-size", "16"]) == 0
    assert "agree w/ teacher" in capsys.readouterr().out  # the run's own teacher, from its config
    check_outputs(out_dir, {"agreement.json", "confusion_cls.png", "confusion_dist.png", "confusion_fused.png"})
    agreement = json.loads((out_dir / "agreement.json").read_text())
    assert agreement["num_images"] == 40 and set(agreement["teacher_agreement"]) == {"cls", "dist", "fused"}

    assert main(["analyze", "attention", str(run_dir), "--num-images", "2", "--output-dir", str(out_dir)]) == 0
    check_outputs(out_dir, {"attention.json", "attention_0.png", "attention_1.png"})


@pytest.mark.slow  # two PNGs per model
def test_analyze_collapse_compares_registry_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "deep.safetensors"
    save_weights(deitlab.create_model("deepvit_micro_patch4_28", depth=3, in_chans=3, img_size=32), ckpt)
    # A checkpoint alone: its metadata names the model.
    assert main(["analyze", "collapse", "--checkpoint", str(ckpt), "--data-set", "synthetic", "--num-images", "2",
                 "--output-dir", str(tmp_path / "out")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "sim_prev_mixed" in out  # re-attention: the similarity of both maps, labelled
    check_outputs(tmp_path / "out", {"collapse.json", "collapse_similarity.png", "collapse_curves.png"})


def test_analyze_curves_overlays_logs(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "curves"
    assert main(["analyze", "curves", str(run_dir), str(run_dir), "--labels", "a", "b", "--output-dir", str(out)]) == 0
    table = capsys.readouterr().out
    assert "best acc" in table and "50" in table
    check_outputs(out, {"curves.json", "curves.png"})
    assert list(json.loads((out / "curves.json").read_text())) == ["a", "b"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["analyze"], 2, "required: KIND"),
        (["analyze", "shapes"], 2, "invalid choice"),
        (["analyze", "collapse", "--data-set", "synthetic"], 2, "give a run directory, or --model"),
        (["analyze", "tokens", "RUN", "--model", "deit_micro_patch4_28"], 2, "not both"),
        (["analyze", "attention", "A", "B", "--output-dir", "x"], 2, "takes one run directory"),
        (["analyze", "collapse", "A", "B"], 2, "pass --output-dir"),
        (["analyze", "collapse", "--model", "deit_micro_patch4_28", "--data-set", "synthetic", "--threshold", "2"],
         2, "--threshold"),
        (["analyze", "collapse", "--model", "deit_micro_patch4_28"], 2, "pass --data-set"),
        (["analyze", "collapse", "--model", "no_such_vit", "--data-set", "synthetic"], 2, "no_such_vit"),
        (["analyze", "collapse", "--model", "resnet9_w16", "--data-set", "synthetic", "--num-images", "1"], 2,
         "not a vision transformer"),
        (["analyze", "curves", "NOWHERE", "--output-dir", "x"], 1, "no epoch records"),
        (["sweep", "--models", "deit_micro_patch4_28"], 2, "--output-dir"),
        (["sweep", "--output-dir", "x", "--models", "m", "--range", "2,1"], 2, "0 < LOW <= 1 <= HIGH"),
        (["sweep", "--output-dir", "x", "--models", "m", "--adamw-centre", "fast"], 2, "comma-separated"),
        (["sweep", "--output-dir", "x", "--models", "m", "--sgd-centre", "0.1,1e-4", "--optimizers", "adamw"], 2,
         "not among --optimizers"),
        (["sweep", "--output-dir", "x", "--models", "m", "--epoch-budgets", "2,0"], 2, "must be >= 1 epoch"),
        (["sweep", "--output-dir", "x", "--models", "m", "--runs", "0"], 2, "--runs"),
        (["sweep", "--output-dir", "x", "--models", "no_such_vit", "--set", "data.dataset=synthetic"], 2,
         "no_such_vit"),
        (["sweep", "--output-dir", "x", "--models", "m", "--set", "optim.lr=-1"], 2, "optim.lr"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(
    argv: list[str], code: int, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    assert message in one_error_line(capsys)
    assert not (tmp_path / "x").exists()  # nothing written for input refused up front


@pytest.mark.slow  # three tiny trainings
def test_sweep_writes_edf_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--output-dir",
        str(out),
        "--models",
        "deit_micro_patch4_28",
        "--optimizers",
        "adamw",
        "--runs",
        "2",
        "--adamw-centre",
        "1e-3,0.05",
        "--epoch-budgets",
        "1",
    ]
    argv += [a for o in TINY for a in ("--set", o)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "deit_micro_patch4_28" in table and "F(1)" in table
    check_outputs(out, {"summary.json", "edf.png", "lr.png", "wd.png", "epochs.png"})
    records = [json.loads(line) for line in (out / "lr_wd" / RESULTS_FILE).read_text().splitlines()]
    assert len(records) == 2 and all(1e-3 / 8 <= r["lr"] <= 4e-3 for r in records)
    assert len((out / "epochs" / RESULTS_FILE).read_text().splitlines()) == 1
    before = (out / "lr_wd" / RESULTS_FILE).read_text()
    assert main(argv) == 0  # everything recorded: nothing retrained, the plots redrawn
    assert (out / "lr_wd" / RESULTS_FILE).read_text() == before
