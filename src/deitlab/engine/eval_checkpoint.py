"""``deitlab eval``: any model (run, model folder, weights file) on any data set, per-head accuracies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from deitlab.config import Config, config_from_dict
from deitlab.data import EvalAugment, ImageSet, load_dataset
from deitlab.engine.builders import check_precision, eval_batches, resolve_device
from deitlab.engine.evaluate import evaluate, summarize
from deitlab.errors import ConfigError
from deitlab.optimize import precision_for_pass
from deitlab.predictor import Predictor
from deitlab.pretrained import model_input_size
from deitlab.sources import is_url, resolve_model


def _run_config(source: str | Path) -> Config | None:
    """The config of the run a source sits in (a run directory, or a file or model folder inside one)."""
    if is_url(str(source)):
        return None
    p = Path(source)
    for d in ([p] if p.is_dir() else []) + [p.parent]:
        if (d / "config.yaml").is_file():
            return config_from_dict(yaml.safe_load((d / "config.yaml").read_text()))
    return None


def _transform(src: Predictor, cfg: Config | None, data: ImageSet, same_data: bool) -> tuple[EvalAugment, int]:
    """The evaluation transform and zero padding: the model's own preprocessing when it records one, else the
    run's settings (older runs), else timm's defaults with the data's statistics."""
    prep = src.preprocessing
    if prep is not None:
        if data.in_chans != prep.input_size[0]:
            raise ConfigError(
                f"{src.source} takes {prep.input_size[0]}-channel images but {data.name} has {data.in_chans}"
            )
        return prep.eval_augment(), prep.pad if data.img_size == prep.native else 0
    _, h, _ = model_input_size(src.model)
    crop, interp = (cfg.aug.eval_crop_pct, cfg.aug.interpolation) if cfg else (1.0, "bicubic")
    pad = cfg.data.pad if cfg and same_data else 0
    return EvalAugment(img_size=h, mean=data.mean, std=data.std, crop_pct=crop, interpolation=interp), pad


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    data_path: str | None = None,
    split: str = "test",
    batch_size: int = 512,
    precision: str = "auto",
    model_name: str | None = None,
) -> dict[str, Any]:
    """Evaluate a model on ``dataset``/``split``.

    ``checkpoint`` is anything :func:`deitlab.sources.resolve_model` takes; weights files without deitlab
    metadata (timm, official DeiT) need ``model_name``. The data set defaults to the one the model was trained
    on (its model folder's provenance, or its run's config). Returns the model name, data set, image count and
    the metrics of :func:`deitlab.engine.evaluate.summarize`.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size} must be >= 1")
    src = resolve_model(checkpoint, model_name=model_name)
    cfg = _run_config(checkpoint)
    prov = src.config.get("provenance", {})
    trained_on = prov.get("dataset") or (cfg.data.dataset if cfg else None)
    dataset = dataset or trained_on
    if not dataset:
        raise ConfigError("which data set? pass --data-set")
    same = dataset == trained_on
    data_path = data_path or ((prov.get("data_path") or (cfg.data.path if cfg else None)) if same else None)
    prep = src.preprocessing
    opts = {"img_size": prep.native[0], "in_chans": prep.input_size[0]} if prep and dataset == "imagefolder" else {}
    data = load_dataset(dataset, split=split, root=data_path, **opts)
    n = getattr(src.model, "num_classes", data.num_classes)
    if n != data.num_classes:
        raise ConfigError(f"{src.source} predicts {n} classes but {data.name} has {data.num_classes}")
    transform, pad = _transform(src, cfg, data, same)
    if pad:  # evaluate the way the run saw its data (e.g. Fashion-MNIST zero-padded to 32 px)
        data.images = torch.nn.functional.pad(data.images, (pad, pad, pad, pad))
    device = resolve_device("auto")
    check_precision(precision, device)
    model = src.model.to(device)
    size = (data.in_chans, transform.img_size, transform.img_size)
    precision = precision_for_pass(model, precision, input_size=size, device=device, batch_size=batch_size,
                                   images=len(data))  # fmt: skip
    with torch.inference_mode():
        counts, _ = evaluate(
            model, eval_batches(data, batch_size), transform, num_classes=data.num_classes, device=device,
            precision=precision,
        )  # fmt: skip
    name = getattr(model, "model_name", type(model).__name__)
    return {"model": name, "dataset": data.name, "images": counts.n, "metrics": summarize(counts)}
