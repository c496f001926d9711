"""What ``deitlab analyze collapse|tokens|agreement|attention|curves`` runs: load, measure, write JSON + PNG, tabulate.

:func:`load_subject` turns plain arguments — a model source (a run directory, or a registry name with an optional
checkpoint) and a data set (name, path, split, number of images) — into a :class:`Subject`; each ``analyze_*``
function takes it and an output folder, writes its JSON and PNG files there and returns a :class:`Report` whose
``table`` the CLI prints. ``analyze_curves`` reads run directories' logs instead.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deitlab.analysis import plots
from deitlab.analysis._output import Report, format_table, write_json
from deitlab.analysis.agreement import agreement
from deitlab.analysis.collapse import attention_collapse
from deitlab.analysis.rollout import attention_maps
from deitlab.analysis.tokens import token_similarity
from deitlab.config import Config, build_config
from deitlab.data import EvalAugment, ImageSet, load_dataset
from deitlab.errors import CheckpointError, ConfigError
from deitlab.io import read_checkpoint
from deitlab.models import create_model

log = logging.getLogger(__name__)

WEIGHTS = {"best": ("best.safetensors", "model.safetensors"), "final": ("model.safetensors", "best.safetensors")}


@dataclass
class Subject:
    """A model to analyse, with the run it came from (if any) and a batch of its data set's images."""

    model: nn.Module
    name: str
    config: Config | None
    images: torch.Tensor  # normalised, model-ready (B, C, H, W)
    raw: torch.Tensor  # the same images, uint8 as stored (B, C, H, W)
    labels: torch.Tensor
    classes: list[str]
    transform: EvalAugment
    label: str = ""  # how plots and tables name it: the run directory's name, or the model's

    def __post_init__(self) -> None:
        self.label = self.label or self.name


def _run_weights(run_dir: Path, weights: str) -> tuple[Path, Config]:
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml); pass --model NAME --checkpoint FILE")
    path = next((run_dir / f for f in WEIGHTS[weights] if (run_dir / f).is_file()), None)
    if path is None:
        raise CheckpointError(f"{run_dir} holds no best.safetensors or model.safetensors")
    return path, build_config(files=[cfg_file])


def _images(
    cfg: Config | None, data_set: str | None, data_path: str | None, split: str, num_images: int | None, seed: int
) -> ImageSet:
    name = data_set or (cfg.data.dataset if cfg else None)
    if not name:
        raise ConfigError("which data set? pass --data-set (a run directory remembers its own)")
    same = cfg is not None and name == cfg.data.dataset
    data = load_dataset(name, split=split, root=data_path or (cfg.data.path if same else None))
    if same and cfg.data.pad:  # the images as the run saw them (e.g. Fashion-MNIST zero-padded to 32 px)
        p = cfg.data.pad
        data.images = torch.nn.functional.pad(data.images, (p, p, p, p))
    if num_images is not None:
        if num_images < 1:
            raise ConfigError(f"--num-images={num_images} must be >= 1")
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:num_images]
        data = data.subset(pick.sort().values)
    return data


def load_subject(
    run: str | Path | None = None,
    *,
    model: str | None = None,
    checkpoint: str | Path | None = None,
    weights: str = "best",
    data_set: str | None = None,
    data_path: str | None = None,
    split: str = "test",
    num_images: int | None = 64,
    seed: int = 0,
    device: str = "cpu",
) -> Subject:
    """The model of a run directory (``config.yaml`` + weights) or of a registry name (+ checkpoint), and images.

    A registry name without a checkpoint gives an untrained model shaped for the data set (useful as a baseline:
    what do random maps look like?); a checkpoint without a name uses the name saved in its metadata.
    ``num_images`` images are drawn at random (seeded) from the split; ``None`` takes them all. ``device``: where
    the model runs (``cpu``, ``cuda``, ``auto``); results always come back on the CPU.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if (run is None) == (model is None and checkpoint is None):
        raise ConfigError("give either a run directory or --model NAME and/or --checkpoint FILE")
    cfg = None
    if run is not None:
        checkpoint, cfg = _run_weights(Path(run), weights)
    data = _images(cfg, data_set, data_path, split, num_images, seed)
    meta = read_checkpoint(checkpoint)[1] if checkpoint is not None else {}
    name = model or meta.get("model") or (cfg.model.name if cfg else None)
    if not name:
        raise ConfigError(f"{checkpoint} does not say which model it holds; pass --model NAME")
    if checkpoint is None:
        log.warning("no checkpoint: analysing an untrained %s", name)
        kwargs = dict(num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.img_size[0])
    else:
        kwargs = json.loads(meta.get("model_kwargs", "{}")) if name == meta.get("model") else {}
    net = create_model(name, checkpoint=checkpoint, **kwargs).to(device).eval()
    size = getattr(getattr(net, "patch_embed", None), "img_size", (kwargs.get("img_size") or data.img_size[0],))
    transform = EvalAugment(
        img_size=int(size[0]), mean=data.mean, std=data.std, crop_pct=cfg.aug.eval_crop_pct if cfg else 1.0,
        interpolation=cfg.aug.interpolation if cfg else "bicubic",
    )  # fmt: skip
    label = Path(run).resolve().name if run is not None else name
    images = transform(data.images)
    return Subject(net, name, cfg, images, data.images, data.labels, list(data.classes), transform, label)


# ---- the verbs ------------------------------------------------------------------------------------------------
def _labelled(subjects: Subject | Sequence[Subject]) -> dict[str, Subject]:
    """``{label: subject}``; labels repeated across subjects get ``#2``, ``#3``, ..."""
    out: dict[str, Subject] = {}
    for s in [subjects] if isinstance(subjects, Subject) else list(subjects):
        label, k = s.label, 2
        while label in out:
            label, k = f"{s.label}#{k}", k + 1
        out[label] = s
    if not out:
        raise ConfigError("nothing to analyse: give at least one run directory or --model")
    return out


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def _collapse_rows(r: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    mixed = r.get("mixed", {}).get("adjacent")
    rows = [
        [b + 1, r["adjacent"][b - 1] if b else None, *([mixed[b - 1] if b else None] if mixed else []),
         r["entropy"][b], r["feature_to_final"][b]]
        for b in range(r["num_blocks"])
    ]  # fmt: skip
    return ["block", "sim_prev", *(["sim_prev_mixed"] if mixed else []), "entropy", "to_final"], rows


def analyze_collapse(
    subjects: Subject | Sequence[Subject], output_dir: str | Path, *, threshold: float = 0.9
) -> Report:
    """Cross-layer similarity, similar blocks, entropy, feature-to-final of one or more models.

    Writes ``collapse.json`` (``{label: result}``), one similarity heatmap per model
    (``collapse_similarity[_<label>].png``) and ``collapse_curves.png`` overlaying all models. The table lists the
    blocks of a single model, or one summary row per model.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    subjects = _labelled(subjects)
    results = {label: attention_collapse(s.model, s.images, threshold) for label, s in subjects.items()}
    files = [write_json(out / "collapse.json", {k: {"model": subjects[k].name, **r} for k, r in results.items()})]
    for label, r in results.items():
        name = "collapse_similarity.png" if len(results) == 1 else f"collapse_similarity_{_slug(label)}.png"
        files.append(plots.plot_similarity(r, out / name, title=label))
    files.append(plots.plot_collapse_curves(results, out / "collapse_curves.png"))
    summary = [[k, r["similar_blocks"], r.get("mixed", {}).get("similar_blocks"), r["entropy"][0], r["entropy"][-1],
                r["max_entropy"]] for k, r in results.items()]  # fmt: skip
    table = format_table(["model", "similar blocks", "(mixed maps)", "entropy 1st", "last", "log N"], summary)
    if len(results) == 1:
        table = format_table(*_collapse_rows(next(iter(results.values())))) + "\n" + table
    return Report(f"{table}\nsimilar: blocks l >= 2 with M^(l-1,l) > {threshold}; entropy in nats", files, results)


def analyze_tokens(subjects: Subject | Sequence[Subject], output_dir: str | Path) -> Report:
    """Class vs distillation token cosine through depth of one or more distilled models → ``tokens.json/png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    subjects = _labelled(subjects)
    results = {label: token_similarity(s.model, s.images) for label, s in subjects.items()}
    data = {k: {"model": subjects[k].name, **r} for k, r in results.items()}
    files = [write_json(out / "tokens.json", data), plots.plot_token_cosine(results, out / "tokens.png")]
    depth = max(len(r["block_cosine"]) for r in results.values())
    rows = [["input", *[r["input_cosine"] for r in results.values()]]]
    rows += [[f"block {i + 1}", *[_at(r["block_cosine"], i) for r in results.values()]] for i in range(depth)]
    rows += [["final norm", *[r["final_cosine"] for r in results.values()]]]
    rows += [["heads", *[r["head_cosine"] for r in results.values()]]]
    return Report(format_table(["cos(cls, dist)", *results], rows), files, results)


def _at(values: list[float], i: int) -> float | None:
    return values[i] if i < len(values) else None


def _teacher(s: Subject, name: str | None, path: str | None) -> Any:
    from deitlab.distill.teacher import FrozenTeacher, load_teacher

    if name is None and path is None and s.config is not None:
        name, path = s.config.teacher.model, s.config.teacher.path
    if name is None and path is None:
        return None
    size = int(s.images.shape[-1])
    net = load_teacher(name, path, num_classes=len(s.classes), in_chans=int(s.images.shape[1]), img_size=size)
    return FrozenTeacher(net.to(next(s.model.parameters()).device))


def analyze_agreement(
    s: Subject,
    output_dir: str | Path,
    *,
    teacher: str | None = None,
    teacher_checkpoint: str | None = None,
    batch_size: int = 256,
) -> Report:
    """Per head: accuracy, agreement with the teacher and the other heads → ``agreement.json`` + confusion PNGs.

    The teacher is the run's own (``teacher.model``/``teacher.path`` of its config) unless given; none is fine.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = _teacher(s, teacher, teacher_checkpoint)
    loader = list(zip(s.images.split(batch_size), s.labels.split(batch_size)))
    r = agreement(s.model, t, loader)
    data = {"model": s.name, "classes": s.classes, **r}
    files = [write_json(out / "agreement.json", data)]
    for head, cm in r["confusion"].items():
        path = out / f"confusion_{head}.png"
        files.append(plots.plot_confusion(torch.tensor(cm), s.classes, path, title=f"{s.name}: {head} head"))
    rows = [[h, r["accuracy"][h], r.get("teacher_agreement", {}).get(h, "")] for h in r["heads"]]
    if "teacher" in r:
        rows.append(["teacher", r["teacher"]["accuracy"], ""])
    rows += [[f"{pair} agree", v, ""] for pair, v in r["head_agreement"].items()]
    return Report(format_table(["head", "acc %", "agree w/ teacher %"], rows), files, data)


def analyze_attention(s: Subject, output_dir: str | Path) -> Report:
    """Per-block class-token attention and rollout over each image → ``attention.json`` + ``attention_<i>.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, per_image, rows = [], [], []
    for i, (image, raw) in enumerate(zip(s.images, s.raw)):
        m = attention_maps(s.model, image)
        label = s.classes[int(s.labels[i])]
        files.append(plots.plot_attention(raw, m, out / f"attention_{i}.png", title=f"{s.name}: {label}"))
        per_image.append({"label": label, "cls_rollout": m["cls_rollout"].tolist(),
                          "cls_attention": m["cls_attention"].tolist()})  # fmt: skip
        peak = divmod(int(m["cls_rollout"].argmax()), m["grid"][1])
        rows.append([i, label, f"{peak[0]},{peak[1]}", float(m["cls_rollout"].max())])
    data = {"model": s.name, "grid": list(m["grid"]), "images": per_image}
    files.insert(0, write_json(out / "attention.json", data))
    return Report(format_table(["image", "class", "rollout peak (row,col)", "peak weight"], rows), files, data)


def analyze_curves(runs: Sequence[str | Path], output_dir: str | Path, *, labels: Sequence[str] = ()) -> Report:
    """Overlay runs' ``log.jsonl`` (training loss, evaluation accuracy per epoch) → ``curves.png``/``curves.json``."""
    if labels and len(labels) != len(runs):
        raise ConfigError(f"{len(labels)} labels for {len(runs)} runs; give one label per run or none")
    histories: dict[str, list[dict[str, Any]]] = {}
    for i, run in enumerate(runs):
        path = Path(run) / "log.jsonl"
        rows = _read_log(path)
        if not rows:
            raise CheckpointError(f"{path} has no epoch records; is {run} a run directory?")
        histories[labels[i] if labels else Path(run).name] = rows
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [write_json(out / "curves.json", histories), plots.plot_curves(histories, out / "curves.png")]
    table = [[k, len(v), v[-1].get("train_loss", ""), v[-1].get("acc", ""), max(r.get("acc", 0.0) for r in v)]
             for k, v in histories.items()]  # fmt: skip
    return Report(format_table(["run", "epochs", "last loss", "last acc %", "best acc %"], table), files, histories)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows
