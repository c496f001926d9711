"""``deitlab eval``: any checkpoint on any data set, per-head accuracies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from deitlab.config import config_from_dict
from deitlab.data import EvalAugment, load_dataset
from deitlab.engine.builders import check_precision, eval_batches, resolve_device
from deitlab.engine.evaluate import evaluate, summarize
from deitlab.engine.tuning import tune_for_eval
from deitlab.errors import CheckpointError, ConfigError
from deitlab.io import read_checkpoint
from deitlab.models import create_model


def _locate(target: Path) -> tuple[Path, dict[str, Any] | None]:
    """A weights file and, when it sits in a run directory, that run's config."""
    if target.is_dir():
        weights = next((target / n for n in ("best.safetensors", "model.safetensors") if (target / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{target} holds no best.safetensors or model.safetensors to evaluate")
        run_dir = target
    elif target.is_file():
        weights, run_dir = target, target.parent
    else:
        raise CheckpointError(f"checkpoint not found: {target}")
    cfg_path = run_dir / "config.yaml"
    return weights, (yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None)


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
    """Evaluate a deitlab checkpoint (file or run directory) on ``dataset``/``split``.

    The model is rebuilt from the checkpoint's metadata (registry name + constructor overrides); checkpoints
    without metadata (timm, official DeiT) need ``model_name``. Returns the model name, data set, image count
    and the metrics of :func:`deitlab.engine.evaluate.summarize`.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size} must be >= 1")
    weights, run_cfg = _locate(Path(checkpoint))
    cfg = config_from_dict(run_cfg) if run_cfg else None
    _, meta = read_checkpoint(weights)
    name = model_name or meta.get("model")
    if not name:
        raise ConfigError(f"{weights} does not say which model it holds; pass --model NAME")
    kwargs = json.loads(meta.get("model_kwargs", "{}")) if name == meta.get("model") else {}
    dataset = dataset or (cfg.data.dataset if cfg else None)
    if not dataset:
        raise ConfigError("which data set? pass --data-set")
    data_path = data_path or (cfg.data.path if cfg and dataset == cfg.data.dataset else None)
    data = load_dataset(dataset, split=split, root=data_path)
    pad = cfg.data.pad if cfg and dataset == cfg.data.dataset else 0
    if pad:  # evaluate the way the run saw its data (e.g. Fashion-MNIST zero-padded to 32 px)
        data.images = torch.nn.functional.pad(data.images, (pad, pad, pad, pad))
    if "num_classes" in kwargs and kwargs["num_classes"] != data.num_classes:
        raise ConfigError(f"{weights} predicts {kwargs['num_classes']} classes but {data.name} has {data.num_classes}")
    model = create_model(name, checkpoint=weights, **kwargs)
    device = resolve_device("auto")
    check_precision(precision, device)
    model.to(device)
    img_size = int(kwargs.get("img_size", data.img_size[0]))
    crop = cfg.aug.eval_crop_pct if cfg else 1.0
    interp = cfg.aug.interpolation if cfg else "bicubic"
    transform = EvalAugment(img_size=img_size, mean=data.mean, std=data.std, crop_pct=crop, interpolation=interp)
    precision = tune_for_eval(model, precision, device=device, in_chans=data.in_chans, img_size=img_size,
                              batch_size=batch_size, images=len(data))  # fmt: skip
    with torch.inference_mode():
        counts, _ = evaluate(
            model, eval_batches(data, batch_size), transform, num_classes=data.num_classes, device=device,
            precision=precision,
        )  # fmt: skip
    return {"model": name, "dataset": data.name, "images": counts.n, "metrics": summarize(counts)}
