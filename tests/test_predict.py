"""``deitlab predict`` and the preprocessing behind it: any image file, size or mode -> the model's input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deitlab
from deitlab.cli import main
from deitlab.data import EvalAugment
from deitlab.data.readers.imagefolder import decode_image
from deitlab.errors import ConfigError, DataError
from deitlab.preprocess import Preprocessing, fit_to_size

GREY = Preprocessing(input_size=(1, 32, 32), mean=(0.286,), std=(0.353,), color_mode="L", pad=2)  # Fashion-MNIST
RGB = Preprocessing(input_size=(3, 24, 24), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_pct=0.875)
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _smooth(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 image (H, W, C): photos are smooth, so resampling paths agree closely on them."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, c, 4, 4, generator=g)
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return (big[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = deitlab.create_model("vit_c_micro_distilled_32", depth=1, embed_dim=32, num_heads=2)
    folder = tmp_path_factory.mktemp("m") / "model"
    return deitlab.save_pretrained(model, folder, preprocessing=GREY, label_names=LABELS)


def test_a_png_of_a_data_image_is_exactly_the_evaluated_tensor(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    paths = [tmp_path / f"{i}.png" for i in range(5)]
    for p, img in zip(paths, images):
        Image.fromarray(img[0].numpy(), mode="L").save(p)
    evaluated = EvalAugment(img_size=32, mean=(0.286,), std=(0.353,), crop_pct=1.0)(
        torch.nn.functional.pad(images, (2, 2, 2, 2))
    )
    assert torch.equal(GREY(paths), evaluated)
    assert torch.equal(GREY(list(images)), evaluated)  # uint8 tensors
    assert torch.equal(GREY([im.float() / 255 for im in images]), evaluated)  # [0, 1] float tensors


def test_images_are_brought_to_the_native_size_as_the_imagefolder_reader_does(tmp_path: Path) -> None:
    for i, (h, w) in enumerate([(50, 40), (17, 60), (28, 28), (300, 200)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(_smooth(h, w, 3, seed=i)).save(path)
        jpg = tmp_path / f"{i}.jpg"
        Image.fromarray(_smooth(h, w, 3, seed=i)).save(jpg, quality=90)
        for p in (path, jpg):  # JPEGs too: same draft-mode decode
            for c, mode in ((1, "L"), (3, "RGB")):
                prep = Preprocessing(input_size=(c, 28, 28), mean=(0.5,) * c, std=(0.5,) * c, color_mode=mode)
                want = torch.from_numpy(np.array(decode_image(str(p), 28, c))).permute(2, 0, 1)
                assert torch.equal(prep.to_pixels(p), want), (p, mode)


def test_modes_are_flattened_sensibly(tmp_path: Path) -> None:
    rgb = _smooth(30, 30, 3)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    base = RGB.to_pixels(Image.fromarray(rgb))
    rgba = np.concatenate([rgb, np.full((30, 30, 1), 255, np.uint8)], axis=2)
    assert torch.equal(RGB.to_pixels(Image.fromarray(rgba, "RGBA")), base)  # opaque alpha changes nothing
    rgba[:, :, 3] = 0
    assert int(RGB.to_pixels(Image.fromarray(rgba, "RGBA")).max()) == 0  # transparent = black background
    p = Image.fromarray(rgb).quantize(16)
    assert torch.equal(RGB.to_pixels(p), RGB.to_pixels(p.convert("RGB")))
    sixteen = tmp_path / "i16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen)  # 16-bit greyscale PNG
    assert Image.open(sixteen).mode.startswith("I")
    l_pixels = GREY.to_pixels(Image.fromarray(grey))
    assert torch.equal(GREY.to_pixels(sixteen), l_pixels)  # PIL's own convert("L") would clip to 255
    assert torch.equal(GREY.to_pixels(Image.fromarray(rgb)), l_pixels)  # colour -> grey: ITU-R 601-2 luma
    assert torch.equal(RGB.to_pixels(Image.fromarray(grey)), RGB.to_pixels(Image.fromarray(grey).convert("RGB")))
    f = Image.fromarray(grey.astype(np.float32) / 255, mode="F")
    assert torch.equal(GREY.to_pixels(f), l_pixels)


def test_fit_to_size_centre_crops_non_square_targets() -> None:
    img = Image.fromarray(np.arange(40 * 20, dtype=np.uint8).reshape(40, 20))  # H 40, W 20
    assert fit_to_size(img, (10, 20)).size == (20, 10)  # width already right: a centre crop of rows only
    assert np.array_equal(np.asarray(fit_to_size(img, (10, 20))), np.asarray(img)[15:25])


def test_predict_mixed_images_matches_the_model_on_the_preprocessed_batch(grey_model: Path, tmp_path: Path) -> None:
    rgb = _smooth(64, 48, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).convert("L").resize((20, 20)).save(tmp_path / "b.jpg")
    Image.fromarray(np.concatenate([rgb, np.full((64, 48, 1), 200, np.uint8)], 2), "RGBA").save(tmp_path / "c.png")
    Image.fromarray(rgb).quantize(8).save(tmp_path / "d.png")
    Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257).save(tmp_path / "e.png")
    paths = sorted(tmp_path.iterdir())
    predictor = deitlab.from_pretrained(grey_model)
    x = predictor.preprocess(paths)
    assert x.shape == (5, 1, 32, 32)
    for head in ("fused", "cls", "dist"):
        values, indices = predictor.logits(x, head).softmax(-1).topk(3)
        preds = predictor.predict(paths, top_k=3, head=head, batch_size=2)  # batches of 2, 2, 1
        assert [pr.image for pr in preds] == [str(p) for p in paths]
        for pred, v, i in zip(preds, values, indices, strict=True):
            assert [t["label"] for t in pred.top_k] == [LABELS[j] for j in i.tolist()]
            assert [t["prob"] for t in pred.top_k] == pytest.approx(v.tolist(), abs=1e-6)
    with torch.no_grad():
        out = predictor.model(x)
    assert torch.allclose(predictor.logits(x, "fused"), (out.cls_logits + out.dist_logits) / 2)


def test_predictor_precision_runs_logits_under_autocast_and_tune_chooses_one(grey_model: Path) -> None:
    predictor = deitlab.from_pretrained(grey_model)
    x = torch.rand(4, 1, 32, 32)
    full = predictor.logits(x)
    predictor.precision = "bf16"
    low = predictor.logits(x)
    assert low.dtype == torch.float32 and not torch.equal(low, full)  # really ran in bf16 ...
    assert torch.allclose(low, full, atol=0.1, rtol=0.05)  # ... and close to fp32
    assert predictor.tune(images=3, batch_size=4) == "fp32"  # one batch: not worth measuring
    assert predictor.tune(images=3, batch_size=4, precision="bf16") == "bf16"  # asked for, kept


def test_unreadable_images_raise_or_are_skipped(grey_model: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(_smooth(28, 28, 1)[:, :, 0]).save(tmp_path / "good.png")
    predictor = deitlab.from_pretrained(grey_model)
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        predictor.predict([tmp_path / "bad.png"])
    preds = predictor.predict([tmp_path / "bad.png", tmp_path / "good.png"], on_error="skip")
    assert preds[0].error and not preds[0].top_k and preds[1].top_k
    with pytest.raises(ConfigError, match="head='both' is not one of"):
        predictor.predict([tmp_path / "good.png"], head="both")


def _images(folder: Path, bad: bool) -> None:
    folder.mkdir(parents=True)
    Image.fromarray(_smooth(28, 28, 1)[:, :, 0]).save(folder / "a.png")
    (folder / "sub").mkdir()
    Image.fromarray(_smooth(100, 60, 3, seed=1)).save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("not an image, not picked up")
    if bad:
        (folder / "sub" / "c.png").write_bytes(b"not a png")


def test_cli_predict_prints_writes_and_exits_0(grey_model: Path, tmp_path: Path, capsys) -> None:
    _images(tmp_path / "imgs", bad=False)
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(grey_model), str(tmp_path / "imgs"), "--top-k", "2", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path / 'imgs' / 'a.png'}: ")
    assert any(name in lines[0] for name in LABELS) and lines[0].endswith("%")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["top_k"]) for r in records] == [2, 2] and records[1]["image"].endswith("b.jpg")
    want = deitlab.from_pretrained(grey_model).predict([tmp_path / "imgs" / "a.png"], top_k=2)[0]
    assert records[0]["top_k"] == want.top_k  # the CLI and the Python API agree
    csv_out = tmp_path / "preds.csv"
    assert main(["predict", str(grey_model), str(tmp_path / "imgs" / "a.png"), "--output", str(csv_out)]) == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert rows[0]["label_1"] == want.top_k[0]["label"] and len(rows) == 1 and "prob_5" in rows[0]


def test_cli_predict_skips_a_corrupt_image_and_exits_1(grey_model: Path, tmp_path: Path, capsys) -> None:
    _images(tmp_path / "imgs", bad=True)
    assert main(["predict", str(grey_model), str(tmp_path / "imgs")]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2
    err = captured.err.strip().splitlines()
    skipped = [line for line in err if line.startswith("skipped: ")]
    assert len(skipped) == 1 and "c.png" in skipped[0]
    assert "predicted 2 image(s), skipped 1 unreadable (exit code 1)" in err[-1]


def _broken_folder(grey_model: Path, tmp_path: Path, what: str) -> Path:
    import shutil

    folder = Path(shutil.copytree(grey_model, tmp_path / "copy"))
    config = json.loads((folder / "config.json").read_text())
    if what == "no weights":
        (folder / "model.safetensors").unlink()
    elif what == "unknown model":
        config["architecture"] = "vit_c_micro_distiled_32"
    elif what == "unknown key":
        config["temperature"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("what", "extra", "code", "message"),
    [
        ("no weights", [], 1, "has config.json but no model.safetensors"),
        ("unknown model", [], 2, "unknown model 'vit_c_micro_distiled_32'; did you mean vit_c_micro_distilled_32"),
        ("unknown key", [], 2, "unknown key 'temperature'"),
        ("nothing", ["--head", "both"], 2, "invalid choice: 'both'"),
        ("nothing", ["--output", "p.txt"], 2, "use a .jsonl or .csv file name"),
        ("empty folder", [], 1, "holds no image files"),
    ],
)
def test_cli_predict_bad_inputs_are_one_line(
    grey_model: Path, tmp_path: Path, capsys, what: str, extra: list[str], code: int, message: str
) -> None:
    folder = _broken_folder(grey_model, tmp_path, what)
    (tmp_path / "empty").mkdir()
    target = tmp_path / "empty" if what == "empty folder" else tmp_path / "x.png"
    Image.fromarray(_smooth(28, 28, 1)[:, :, 0]).save(tmp_path / "x.png")
    assert main(["predict", str(folder), str(target), *extra]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err


def test_cli_predict_head_dist_needs_a_distilled_model(tmp_path: Path, capsys) -> None:
    model = deitlab.create_model("resnet9_w16")
    deitlab.save_pretrained(model, tmp_path / "cnn")
    Image.fromarray(_smooth(28, 28, 1)[:, :, 0]).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "cnn"), str(tmp_path / "x.png"), "--head", "dist"]) == 2
    assert "has one head" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "cnn"), str(tmp_path / "x.png"), "--top-k", "20"]) == 0
    assert capsys.readouterr().out.count("%") == 10  # top-k is capped at the class count
