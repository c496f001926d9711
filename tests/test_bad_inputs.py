"""Bad inputs, table-driven: each gives one `error:` line, exit code 2 (usage/config) or 1 (runtime), no
traceback, and leaves no partial output behind."""

from __future__ import annotations

import errno
import gzip
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import deitlab
from deitlab.cli import main
from deitlab.io import save_weights

SYN = ["--data-set", "synthetic", "--set", "data.limit_train=64", "--set", "data.limit_eval=32",
       "--set", "model.kwargs.depth=1", "--set", "model.kwargs.embed_dim=32", "--set", "model.kwargs.num_heads=2",
       "--set", "train.progress=false", "--set", "data.test_at_end=false", "--batch-size", "16",
       "--model", "deit_micro_patch4_28", "--epochs", "1"]  # fmt: skip


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("touch /tmp/deitlab-pwned",))


def _idx(tmp: Path, truncate: bool) -> None:
    d = tmp / "fm"
    d.mkdir()
    header = (2051).to_bytes(4, "big") + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    body = bytes(28 * 28 * 10)  # far fewer images than the header claims
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + (body if truncate else b""))
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write((2049).to_bytes(4, "big") + (60000).to_bytes(4, "big") + bytes(60000))
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (d / name).write_bytes(b"")


def _imagefolder(tmp: Path, corrupt: bool) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = tmp / "if" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (i * 40, 10, 10)).save(d / f"{i}.png")
    if corrupt:
        (tmp / "if" / "train" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


def _teacher(tmp: Path, classes: int) -> None:
    save_weights(deitlab.create_model("resnet9_w16", in_chans=3, num_classes=classes), tmp / "t.safetensors")


def _other_run(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "config.yaml").write_text("model: {name: x}\n")


def _evil_teacher(tmp: Path) -> None:
    with (tmp / "evil.pth").open("wb") as f:
        pickle.dump({"model": _Evil()}, f, protocol=2)


def _nan_npz(tmp: Path) -> None:
    x = np.random.rand(40, 28, 28).astype(np.float32)
    x[7, 3, 3] = np.nan
    np.savez(tmp / "d.npz", x_train=x, y_train=np.arange(40) % 4, x_test=x[:8], y_test=np.arange(8) % 4)


def _student_ckpt(tmp: Path) -> None:
    save_weights(deitlab.create_model("deit_micro_patch4_28"), tmp / "s.safetensors")


def _bad_yaml(tmp: Path) -> None:
    (tmp / "c.yaml").write_text("optim:\n  lr: [unclosed\n")


def _typo_yaml(tmp: Path) -> None:
    (tmp / "c.yaml").write_text("optim:\n  weight_decai: 0.1\n")


def _wrong_type_yaml(tmp: Path) -> None:
    (tmp / "c.yaml").write_text("train:\n  epochs: three\n")


def _empty_dir(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def _no_checkpoints(tmp: Path) -> None:
    (tmp / "run").mkdir()


def _corrupt_resume(tmp: Path) -> None:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "ckpt-000000004.pt").write_bytes(b"PK\x03\x04truncated")


def _nothing(tmp: Path) -> None:
    pass


CASES: list[tuple[str, Callable[[Path], None], list[str], int, str]] = [
    ("missing data path", _nothing, ["--data-set", "fashion_mnist", "--data-path", "{tmp}/nope"], 1, "nope"),
    ("empty image folder", _empty_dir, ["--data-set", "imagefolder", "--data-path", "{tmp}/empty"], 1, "empty"),
    (
        "corrupt image",
        lambda t: _imagefolder(t, True),
        ["--data-set", "imagefolder", "--data-path", "{tmp}/if", "--set", "model.img_size=28"],
        1,
        "bad.png",
    ),  # fmt: skip
    (
        "truncated idx file",
        lambda t: _idx(t, True),
        ["--data-set", "fashion_mnist", "--data-path", "{tmp}/fm"],
        1,
        "train-images-idx3-ubyte.gz",
    ),  # fmt: skip
    ("image size not divisible by patch", _nothing, ["--set", "model.img_size=30"], 2, "not divisible by patch_size"),
    ("unknown model", _nothing, ["--model", "deit_tiny_patch4_82"], 2, "did you mean"),
    (
        "unknown teacher",
        lambda t: _teacher(t, 10),
        ["--distillation-type", "hard", "--teacher-model", "resnet99", "--teacher-path", "{tmp}/t.safetensors"],
        2,
        "unknown model 'resnet99'",
    ),  # fmt: skip
    ("config typo", _typo_yaml, ["-c", "{tmp}/c.yaml"], 2, "did you mean 'optim.weight_decay'"),
    ("invalid yaml", _bad_yaml, ["-c", "{tmp}/c.yaml"], 2, "not valid YAML"),
    ("wrong type in config", _wrong_type_yaml, ["-c", "{tmp}/c.yaml"], 2, "train.epochs expects an int"),
    ("missing config file", _nothing, ["-c", "{tmp}/none.yaml"], 2, "config file not found"),
    ("negative lr", _nothing, ["--lr", "-1e-3"], 2, "optim.lr=-0.001 is out of range"),
    ("batch size 0", _nothing, ["--batch-size", "0"], 2, "data.batch_size=0 is out of range"),
    ("epochs 0", _nothing, ["--epochs", "0"], 2, "train.epochs=0 is out of range"),
    ("unknown flag", _nothing, ["--learning-rate", "1"], 2, "unknown flag"),
    ("unknown data set", _nothing, ["--data-set", "fashon_mnist"], 2, "did you mean fashion_mnist"),
    (
        "teacher class-count mismatch",
        lambda t: _teacher(t, 7),
        ["--distillation-type", "hard", "--teacher-path", "{tmp}/t.safetensors"],
        2,
        "predicts 7 classes",
    ),  # fmt: skip
    (
        "teacher is another architecture",
        _student_ckpt,
        ["--distillation-type", "hard", "--teacher-model", "resnet9_w16", "--teacher-path", "{tmp}/s.safetensors"],
        1,
        "another architecture",
    ),  # fmt: skip
    (
        "pickled-code checkpoint",
        _evil_teacher,
        ["--distillation-type", "hard", "--teacher-model", "resnet9_w16", "--teacher-path", "{tmp}/evil.pth"],
        1,
        "pickled code",
    ),  # fmt: skip
    ("unwritable output dir", _nothing, ["--output-dir", "/proc/deitlab-out"], 2, "cannot write to output dir"),
    ("output dir holds another run", _other_run, ["--output-dir", "{tmp}/out"], 2, "already holds a run"),
    (
        "RA on a dataset smaller than a batch",
        _nothing,
        ["--batch-size", "256", "--repeated-aug", "3"],
        2,
        "fewer than one batch",
    ),  # fmt: skip
    ("mixup with a 1-image batch", _nothing, ["--batch-size", "1", "--mixup", "0.8"], 2, "batch of 1"),
    ("NaN in the input data", _nan_npz, ["--data-set", "npz", "--data-path", "{tmp}/d.npz"], 1, "NaN"),
    ("distillation type typo", _nothing, ["--distillation-type", "hrad"], 2, "did you mean 'hard'"),
    ("tau <= 0", _nothing, ["--distillation-tau", "0"], 2, "distill.tau=0.0 is out of range"),
    ("alpha outside [0, 1]", _nothing, ["--distillation-alpha", "1.5"], 2, "distill.alpha=1.5 is out of range"),
    ("half precision without a GPU", _nothing, ["--precision", "fp16"], 2, "needs a CUDA device"),
    ("precision typo", _nothing, ["--precision", "bf61"], 2, "did you mean 'bf16'"),
    ("model override typo", _nothing, ["--set", "model.kwargs.dept=2"], 2, "did you mean 'depth'"),
    ("resume without checkpoints", _no_checkpoints, ["--resume", "{tmp}/run"], 1, "no checkpoint"),
    ("corrupt resume file", _corrupt_resume, ["--resume", "{tmp}/run"], 1, "no readable checkpoint"),
    ("value missing after flag", _nothing, ["--lr"], 2, "--lr needs a value"),
]


@pytest.mark.parametrize(("setup", "args", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, setup, args, code, message
) -> None:
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["train", *SYN, "--output-dir", str(tmp_path / "run_out"), *(a.format(tmp=tmp_path) for a in args)]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, "partial output left behind"
    assert not Path("/tmp/deitlab-pwned").exists()


def test_disk_full_while_writing_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deitlab.io as ck

    real = ck.os.fdopen

    class _Full:
        def __init__(self, f):  # noqa: ANN001
            self.f = f

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *a):  # noqa: ANN002
            self.f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck.os, "fdopen", lambda fd, mode="r": _Full(real(fd, mode)))
    rc = main(["train", *SYN, "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: could not write") and "No space left on device" in err, err
    assert not list((tmp_path / "run").rglob("*.tmp")), "temp files left behind"


@pytest.mark.slow
def test_subprocess_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    for args, code in ((["train", "--epochs", "0"], 2), (["eval", str(tmp_path / "nope")], 1)):
        proc = subprocess.run([sys.executable, "-m", "deitlab", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == code and "Traceback" not in proc.stderr and proc.stderr.startswith("error:")
    proc = subprocess.run([sys.executable, "-m", "deitlab", "--debug", "train", "--epochs", "0"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "Traceback" in proc.stderr  # --debug shows it
