"""Model folders (save_pretrained / from_pretrained), the model resolver, timm-style create_model/list_models,
and the model folders every training run writes."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import pytest
import torch
from PIL import Image

import deitlab
from deitlab.cli import main
from deitlab.config import build_config
from deitlab.data import EvalAugment, load_dataset
from deitlab.distill.teacher import load_teacher
from deitlab.engine import train
from deitlab.errors import CheckpointError, ConfigError
from deitlab.io import read_checkpoint, save_weights
from deitlab.models import DistilledLogits
from deitlab.pretrained import read_config
from deitlab.sources import resolve_model, split_foreign

# One tiny configuration per registry family (and DeepViT's two stems); (name, overrides, input (C, H, W)).
FAMILIES = {
    "deit": ("deit_micro_distilled_patch4_28", dict(depth=1, embed_dim=32, num_heads=2), (1, 28, 28)),
    "vit_c": ("vit_c_micro_distilled_32", dict(depth=1, embed_dim=32, num_heads=2), (1, 32, 32)),
    "deepvit": ("deepvit_micro_distilled_patch4_28", dict(depth=2, embed_dim=32, num_heads=2), (1, 28, 28)),
    "deepvit_cnn_stem": (
        "deepvit_s",
        dict(depth=2, embed_dim=24, num_heads=2, reattention=(False, True), img_size=32),
        (3, 32, 32),
    ),  # fmt: skip
    "regnety": ("regnety_002", dict(img_size=32, num_classes=10), (3, 32, 32)),
    "resnet9": ("resnet9_w16", dict(), (1, 28, 28)),
}


def tiny(family: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    name, kw, shape = FAMILIES[family]
    model = deitlab.create_model(name, **kw).eval()
    for p in model.parameters():  # move every weight off its init, BatchNorm statistics too
        p.data.add_(0.01 * torch.randn_like(p))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model, shape


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, DistilledLogits) else [out]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_load_round_trip_gives_identical_outputs(family: str, tmp_path: Path) -> None:
    model, shape = tiny(family)
    labels = [f"class {i}" for i in range(model.num_classes)]
    deitlab.save_pretrained(model, tmp_path / "m", label_names=labels, provenance={"epoch": 3})
    loaded = deitlab.from_pretrained(tmp_path / "m")
    assert not loaded.model.training
    x = torch.randn(3, *shape)
    for got, want in zip(_outputs(loaded.model, x), _outputs(model, x), strict=True):
        assert torch.equal(got, want)
    assert loaded.label_names == labels and loaded.preprocessing.input_size == shape
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == FAMILIES[family][0] and config["model_args"] == FAMILIES[family][1] | (
        {"reattention": [False, True]} if family == "deepvit_cnn_stem" else {}
    )
    assert config["provenance"]["epoch"] == 3 and config["deitlab_version"] == deitlab.__version__


def test_config_json_uses_timm_field_names(tmp_path: Path) -> None:
    model, _ = tiny("vit_c")
    prep = deitlab.Preprocessing(input_size=(1, 32, 32), mean=(0.286,), std=(0.353,), color_mode="L", pad=2)
    deitlab.save_pretrained(model, tmp_path, preprocessing=prep, label_names=list("abcdefghij"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pretrained_cfg"] == {
        "input_size": [1, 32, 32], "mean": [0.286], "std": [0.353], "interpolation": "bicubic", "crop_pct": 1.0,
        "crop_mode": "center",
    }  # fmt: skip
    assert config["preprocessing"] == {"color_mode": "L", "native_size": [28, 28], "pad": 2}
    assert config["num_classes"] == 10 and config["label_names"][1] == "b"
    _, meta = read_checkpoint(tmp_path / "model.safetensors")  # the weights file names its model too
    assert meta["model"] == "vit_c_micro_distilled_32"


def _folder(tmp_path: Path) -> Path:
    model, _ = tiny("deit")
    return deitlab.save_pretrained(model, tmp_path / "m")


def _edit(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(architechture="x"), ConfigError, "unknown key 'architechture' (did you mean 'architecture'?)"),
        (dict(architecture="deit_micro_distiled_patch4_28"), ConfigError, "did you mean deit_micro_distilled"),
        (dict(model_args={"depth": 1, "embed_dim": 32, "num_heads": 2, "dept": 3}), ConfigError, "'dept'"),
        (dict(model_args={"depth": 2, "embed_dim": 32, "num_heads": 2}), CheckpointError, "missing 12 tensors"),
        (dict(model_args={"depth": 1, "embed_dim": 64, "num_heads": 2}), CheckpointError, "does not fit"),
        (dict(label_names=["a", "b"]), ConfigError, "label_names must list 10 names"),
        (dict(pretrained_cfg={"input_size": [1, 28, 28], "mean": [0.5], "std": [0.5], "crop": 1}), ConfigError,
         "unknown pretrained_cfg field(s) crop"),
        (dict(format_version=99), ConfigError, "newer deitlab"),
    ],
)  # fmt: skip
def test_bad_model_folders_are_one_clear_error(tmp_path: Path, change: dict, error: type, message: str) -> None:
    folder = _folder(tmp_path)
    _edit(folder, **change)
    with pytest.raises(error) as e:
        deitlab.from_pretrained(folder)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_folder_without_weights_or_config(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has config.json but no model.safetensors"):
        deitlab.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="neither a model folder"):
        resolve_model(folder)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve_model(tmp_path / "nothing")


def test_create_model_timm_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEITLAB_PRETRAINED_DIR", str(tmp_path / "hub"))
    with pytest.raises(
        ConfigError, match="no pretrained weights for 'resnet9_w16' are available offline.*checkpoint_path"
    ):
        deitlab.create_model("resnet9_w16", pretrained=True)
    assert deitlab.list_models("resnet*", pretrained=True) == []
    model, _ = tiny("resnet9")
    deitlab.save_pretrained(model, tmp_path / "hub" / "resnet9_w16")  # a model folder in the local hub
    assert deitlab.list_models("resnet*", pretrained=True) == ["resnet9_w16"]
    x = torch.randn(2, 1, 28, 28)
    for loaded in (
        deitlab.create_model("resnet9_w16", pretrained=True),
        deitlab.create_model("resnet9_w16", checkpoint_path=tmp_path / "hub" / "resnet9_w16"),  # a folder
        deitlab.create_model("resnet9_w16", checkpoint=tmp_path / "hub" / "resnet9_w16" / "model.safetensors"),
    ):
        assert torch.equal(loaded.eval()(x), model(x))
    with pytest.raises(ConfigError, match="not both"):
        deitlab.create_model("resnet9_w16", checkpoint_path="a", checkpoint="b")


def test_list_models_filters_like_timm() -> None:
    assert deitlab.list_models(filter="deit_tiny_*") == sorted(deitlab.list_models("deit_tiny*"))
    both = deitlab.list_models(["resnet*", "regnety_00*"])
    assert "resnet9" in both and "regnety_002" in both and "deit_tiny_patch16_224" not in both
    assert "resnet9_w16" not in deitlab.list_models("resnet*", exclude_filters="*_w16")


def _run_dir(tmp_path: Path) -> Path:
    """A run directory as training writes it (weights + model folders), without training."""
    run = tmp_path / "run"
    model, _ = tiny("deit")
    prep = deitlab.Preprocessing(input_size=(1, 28, 28), mean=(0.3,), std=(0.35,), color_mode="L")
    for name, epochs in (("model", 2), ("model_best", 1)):
        prov = {"weights": "raw", "epochs_trained": epochs}
        deitlab.save_pretrained(model, run / name, preprocessing=prep, label_names=list("ABCDEFGHIJ"), provenance=prov)
    save_weights(model, run / "model.safetensors")
    return run


def test_resolver_takes_runs_folders_and_files(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    assert resolve_model(run).config["provenance"]["epochs_trained"] == 1  # best by default
    assert resolve_model(run, prefer="final").config["provenance"]["epochs_trained"] == 2
    assert resolve_model(run / "model" / "config.json").source == str(run / "model")
    p = resolve_model(run / "model.safetensors")  # a weights file borrows its run's preprocessing and names
    assert p.label_names[0] == "A" and p.preprocessing.input_size == (1, 28, 28)
    bare = tmp_path / "bare.pth"  # a state dict without metadata, as timm and DeiT publish them
    net = deitlab.create_model("deit_micro_distilled_patch4_28", num_classes=7, in_chans=3).eval()
    torch.save({"model": net.state_dict()}, bare)
    with pytest.raises(ConfigError, match="does not say which model"):
        resolve_model(bare)
    q = resolve_model(bare, model_name="deit_micro_distilled_patch4_28")  # classes and channels from the file
    assert q.preprocessing is None and q.model.num_classes == 7 and q.model.patch_embed.in_chans == 3
    x = torch.randn(2, 3, 28, 28)
    assert torch.equal(q.model(x).fused(), net(x).fused())
    with pytest.raises(ConfigError, match="does not record how to preprocess"):
        q.predict([torch.zeros(3, 28, 28, dtype=torch.uint8)])


def test_urls_keep_their_slashes_and_fail_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEITLAB_CACHE", str(tmp_path / "cache"))
    url = "https://weights.invalid/deit/teacher.pth"
    with pytest.raises(CheckpointError) as e:
        resolve_model(url)
    msg = str(e.value)
    assert msg.startswith(f"cannot download {url} (") and "download it elsewhere" in msg and "\n" not in msg


def test_url_download_from_a_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEITLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "www").mkdir()
    model, _ = tiny("resnet9")
    save_weights(model, tmp_path / "www" / "t.safetensors")
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/t.safetensors"
        got = load_teacher(None, url, num_classes=10, in_chans=1, img_size=28)
    finally:
        server.shutdown()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(got(x), model(x))
    assert len(list((tmp_path / "cache" / "downloads").iterdir())) == 1


def test_foreign_sources_parse() -> None:
    assert split_foreign("timm:resnet18=/w/a=b.pth") == ("timm", "resnet18", "/w/a=b.pth")
    assert split_foreign("timm:resnet18") == ("timm", "resnet18", None)
    assert split_foreign("runs/x") is None and split_foreign("https://x/y") is None
    with pytest.raises(ConfigError, match="has no weights.*timm:regnety_002=FILE"):
        resolve_model("timm:regnety_002")


def test_timm_teacher_with_local_weights(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm", reason="timm is the optional extra deitlab[timm]")
    net = timm.create_model("resnet10t", num_classes=10, in_chans=1).eval()
    save_weights(net, tmp_path / "r.safetensors")
    x = torch.randn(2, 1, 32, 32)
    for name, path in (
        ("timm:resnet10t", tmp_path / "r.safetensors"),
        (None, f"timm:resnet10t={tmp_path}/r.safetensors"),
    ):
        teacher = load_teacher(name, path, num_classes=10, in_chans=1, img_size=32)
        assert torch.allclose(teacher(x), net(x))
    with pytest.raises(ConfigError, match="predicts 10 classes but the dataset has 7"):
        load_teacher("timm:resnet10t", tmp_path / "r.safetensors", num_classes=7, in_chans=1, img_size=32)


@pytest.mark.parametrize(
    ("in_chans", "num_classes", "img_size", "message"),
    [
        (3, 10, 28, "takes 1-channel images but the data has 3 channel(s)"),
        (1, 5, 28, "predicts 10 classes but the dataset has 5"),
    ],
)
def test_teacher_that_does_not_fit_the_data(tmp_path: Path, in_chans: int, num_classes: int, img_size: int,
                                            message: str) -> None:  # fmt: skip
    folder = _folder(tmp_path)  # a 1-channel 28-px ViT with 10 classes
    with pytest.raises(ConfigError) as e:
        load_teacher(None, folder, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_vit_teacher_of_another_resolution_is_fed_at_its_own(tmp_path: Path) -> None:
    """A 28 px ViT teacher for 32 px data is not refused: it keeps its patch grid and is fed resized batches
    (issue 13: the teacher stays at its own resolution when the student is fine-tuned at a new one)."""
    from deitlab.distill.teacher import own_input_size, teacher_input_size

    teacher = load_teacher(None, _folder(tmp_path), num_classes=10, in_chans=1, img_size=32)
    assert own_input_size(teacher) == 28 and teacher_input_size(teacher, None, 32) == 28


def test_teacher_url_on_the_command_line_keeps_its_slashes(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DEITLAB_CACHE", str(tmp_path / "cache"))
    url = "https://weights.invalid/regnety_160.pth"
    argv = ["train", "--data-set", "synthetic", "--set", "data.limit_train=32", "--model", "deit_micro_patch4_28",
            "--distillation-type", "hard", "--teacher-path", url, "--output-dir", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot download {url} (") and len(err.splitlines()) == 1


@pytest.mark.slow
def test_training_writes_model_folders_that_reproduce_evaluation(tmp_path: Path) -> None:
    """A short run on the 8x8 digits, zero-padded to 12 px and resized to 16: its model folders record that
    pipeline, and a PNG of a test image becomes exactly the tensor the run evaluated."""
    cfg = build_config(overrides=[
        "model.name=deit_micro_distilled_patch4_28", "model.img_size=16", "data.dataset=digits", "data.pad=2",
        "data.batch_size=32", "data.limit_train=256", "data.limit_eval=64", "train.epochs=1", "aug.crop_scale=[0.9, 1]",
        "aug.rand_augment=null", "aug.re_prob=0", "aug.mixup=0", "aug.cutmix=0", "aug.eval_crop_pct=1.0",
        "model.kwargs.depth=1", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2", "train.progress=false",
        "train.ema=true", f"train.output_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    result = train(cfg)
    run = tmp_path / "run"
    for name in ("model", "model_best", "model_ema"):
        assert (run / name / "config.json").is_file() and (run / name / "model.safetensors").is_file()
    assert (run / "model.safetensors").is_file() and (run / "best.safetensors").is_file()  # still written
    config = read_config(run / "model")
    prov = config["provenance"]
    assert prov["dataset"] == "digits" and prov["epochs_trained"] == 1 and prov["weights"] == "raw"
    assert prov["test_acc"] == pytest.approx(result.final["test_acc"], abs=1e-3)
    assert read_config(run / "model_ema")["provenance"]["weights"] == "ema"
    assert config["pretrained_cfg"]["input_size"] == [1, 16, 16]
    assert config["preprocessing"] == {"color_mode": "L", "native_size": [8, 8], "pad": 2}
    assert config["label_names"] == [str(i) for i in range(10)]
    a, _ = read_checkpoint(run / "model.safetensors")
    b, _ = read_checkpoint(run / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    test = load_dataset("digits", split="test")
    images = test.images[:6]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img[0].numpy(), mode="L").save(paths[-1])
    predictor = deitlab.from_pretrained(run / "model")
    evaluated = EvalAugment(img_size=16, mean=test.mean, std=test.std, crop_pct=1.0, interpolation="bicubic")(
        torch.nn.functional.pad(images, (2, 2, 2, 2))
    )  # what build_augment's evaluation transform gives the run
    assert torch.equal(predictor.preprocess(paths), evaluated)
    values, indices = predictor.logits(evaluated).softmax(-1).topk(3)
    for pred, v, i in zip(predictor.predict(paths, top_k=3), values, indices, strict=True):
        assert [t["index"] for t in pred.top_k] == i.tolist()
        assert [t["prob"] for t in pred.top_k] == pytest.approx(v.tolist(), abs=1e-6)

    assert main(["eval", str(run / "model"), "--split", "test"]) == 0  # the folder knows its data set


def test_overwriting_a_run_removes_its_model_folders(tmp_path: Path) -> None:
    from deitlab.engine.builders import create_run_dir

    run = _run_dir(tmp_path)
    for name in ("steps.jsonl", "ema.safetensors", "tensorboard/events.out"):  # what the replaced run also wrote
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("old")
    cfg = build_config(overrides=[f"train.output_dir={run}", "train.overwrite=true"])
    create_run_dir(run, cfg, is_main=True)
    assert not (run / "model").exists() and not (run / "model_best").exists() and (run / "config.yaml").is_file()
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert left == ["config.yaml"], left
