"""Who agrees with whom: a (distilled) student's heads, the teacher and the true labels (DeiT §5.2, Table 4).

For predictions ``ŷ^a_j = argmax_c z^a_j(c)`` of heads a, b over n images with labels ``y_j``:
accuracy ``100·(1/n)·#{j : ŷ^a_j = y_j}``, agreement ``100·(1/n)·#{j : ŷ^a_j = ŷ^b_j}``, per-class accuracy
``100·#{j : y_j = c, ŷ_j = c} / #{j : y_j = c}`` and the confusion matrix ``C_{y,ŷ}`` (true class per row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from itertools import combinations
from typing import Any

import torch
from torch import nn

from deitlab.analysis.maps import eval_mode, model_device
from deitlab.models import DistilledLogits

Batch = tuple[torch.Tensor, torch.Tensor]


def head_predictions(out: torch.Tensor | DistilledLogits, fusion: str = "logits") -> dict[str, torch.Tensor]:
    """``{"cls", "dist", "fused"}`` argmax predictions of a distilled model's output, ``{"cls"}`` of a plain one."""
    if isinstance(out, DistilledLogits):
        return {
            "cls": out.cls_logits.argmax(-1),
            "dist": out.dist_logits.argmax(-1),
            "fused": out.fused(fusion).argmax(-1),
        }
    return {"cls": out.argmax(-1)}


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[y, ŷ]`` = number of images of true class y predicted as ŷ, ``(K, K)`` int64."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    """``100·C[c, c] / Σ_ŷ C[c, ŷ]`` per class; ``None`` for a class without images."""
    totals = confusion.sum(1)
    return [None if t == 0 else 100.0 * float(confusion[c, c]) / float(t) for c, t in enumerate(totals)]


def rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """``100·(1/n)·#{j : a_j = b_j}``."""
    return 100.0 * float((a == b).double().mean()) if len(a) else float("nan")


def _collect(
    model: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None,
    loader: Iterable[Batch],
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
    fusion: str,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor, int]:
    device = model_device(model)
    preds: dict[str, list[torch.Tensor]] = {}
    teacher_preds, labels, width = [], [], 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(model))
        if isinstance(teacher, nn.Module):
            stack.enter_context(eval_mode(teacher))
        for images, y in loader:
            x = (transform(images) if transform is not None else images).to(device)
            out = model(x)
            width = (out.cls_logits if isinstance(out, DistilledLogits) else out).shape[-1]
            for head, p in head_predictions(out, fusion).items():
                preds.setdefault(head, []).append(p.cpu())
            if teacher is not None:
                t_out = teacher(x)
                t_logits = t_out.fused(fusion) if isinstance(t_out, DistilledLogits) else t_out
                teacher_preds.append(t_logits.argmax(-1).cpu())
            labels.append(y.cpu())
    if not labels:
        raise ValueError("the loader gave no batches: nothing to compare")
    t = torch.cat(teacher_preds) if teacher is not None else None
    return {h: torch.cat(p) for h, p in preds.items()}, t, torch.cat(labels), width


def agreement(
    model: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None,
    loader: Iterable[Batch],
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    fusion: str | None = None,
) -> dict[str, Any]:
    """Accuracy of each head, its agreement with the teacher and with the other heads, per-class accuracy, confusion.

    Args:
        model: a plain (head ``cls``) or distilled (heads ``cls``, ``dist``, ``fused``) classifier.
        teacher: any callable returning logits (a :class:`~deitlab.distill.teacher.FrozenTeacher`, a model), or
            ``None`` to skip the teacher comparisons. It sees exactly the images the student sees.
        loader: ``(images, labels)`` batches; images are model-ready unless ``transform`` is given.
        transform: applied to each image batch first (e.g. :class:`~deitlab.data.EvalAugment` on uint8 images).
        fusion: how the ``fused`` head combines the two (``"logits"`` or ``"softmax"``); default: the model's own.

    Returns:
        ``{"num_images", "num_classes", "heads", "accuracy": {head: %}, "head_agreement": {"a|b": %},
        "per_class_accuracy": {head: [%]}, "confusion": {head: K×K}}`` plus, with a teacher,
        ``"teacher_agreement": {head: %}`` and ``"teacher": {"accuracy", "per_class_accuracy", "confusion"}``.
    """
    fusion = fusion or getattr(model, "fusion", "logits")
    preds, teacher_preds, labels, width = _collect(model, teacher, loader, transform, fusion)
    k = max(width, int(labels.max()) + 1)
    confusion = {h: confusion_matrix(labels, p, k) for h, p in preds.items()}
    out: dict[str, Any] = {
        "num_images": len(labels),
        "num_classes": k,
        "heads": list(preds),
        "accuracy": {h: rate(p, labels) for h, p in preds.items()},
        "head_agreement": {f"{a}|{b}": rate(preds[a], preds[b]) for a, b in combinations(preds, 2)},
        "per_class_accuracy": {h: per_class_accuracy(c) for h, c in confusion.items()},
        "confusion": {h: c.tolist() for h, c in confusion.items()},
    }
    if teacher_preds is not None:
        t_conf = confusion_matrix(labels, teacher_preds, k)
        out["teacher_agreement"] = {h: rate(p, teacher_preds) for h, p in preds.items()}
        out["teacher"] = {
            "accuracy": rate(teacher_preds, labels),
            "per_class_accuracy": per_class_accuracy(t_conf),
            "confusion": t_conf.tolist(),
        }
    return out
