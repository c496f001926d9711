"""Loading weights into a model: position-embedding resampling, the head policy, architecture checks, and
fine-tuning (:func:`load_pretrained`: another resolution, another class count, plain -> distilled).

The file formats themselves (safetensors, weights-only ``.pth``) are read by :mod:`deitlab.io`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from deitlab.errors import CheckpointError
from deitlab.io import read_checkpoint
from deitlab.models.convert import adapt_pos_embed, is_head_key

log = logging.getLogger(__name__)


def load_checkpoint(model: nn.Module, path: str | Path, *, allow_new_head: bool = False) -> list[str]:
    """Load weights from ``path`` into ``model``; returns the keys left at their initial values.

    Position embeddings are resampled to the model's grid. A classifier of another class count is dropped with
    a warning when ``allow_new_head`` (the caller changed ``num_classes`` on purpose), otherwise it is an error
    naming both shapes. Any other missing, unexpected or mis-shaped key is an error listing them.
    """
    state, meta = read_checkpoint(path)
    return load_state(model, state, origin=_origin(path, meta), allow_new_head=allow_new_head)


def _origin(path: str | Path, meta: dict[str, str]) -> str:
    name = meta.get("model", "")
    return f"checkpoint {path}" + (f" (a {name} checkpoint)" if name else "")


def load_state(
    model: nn.Module, state: dict[str, torch.Tensor], *, origin: str, allow_new_head: bool = False
) -> list[str]:
    """:func:`load_checkpoint` for a state dict already read; ``origin`` names it in messages."""
    state = adapt_pos_embed(state, model)
    own = model.state_dict()
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]  # model order
    head_mismatch = sorted((k for k in mismatched if is_head_key(k)), key=lambda k: not k.endswith("weight"))
    other_mismatch = [k for k in mismatched if not is_head_key(k)]
    dropped: list[str] = []
    if head_mismatch:
        shapes = f"{tuple(state[head_mismatch[0]].shape)} in the checkpoint vs {tuple(own[head_mismatch[0]].shape)}"
        if not allow_new_head:
            raise CheckpointError(
                f"{origin} has a classifier of another class count ({head_mismatch[0]}: {shapes}); "
                "pass num_classes explicitly to train a new head"
            )
        dropped = [k for k in state if is_head_key(k)]
        log.warning(
            "dropping the checkpoint's classifier (%s: %s); the new head starts from scratch", head_mismatch[0], shapes
        )
        state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in own if k not in state and k not in dropped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    problems = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in other_mismatch[:4]]
    problems += [f"{len(other_mismatch) - 4} more shape mismatches"] if len(other_mismatch) > 4 else []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{label} {len(keys)} keys ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    if problems:
        raise CheckpointError(f"{origin} is for another architecture: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)
    return dropped


# ---- fine-tuning ------------------------------------------------------------------------------------------------
def resolve_weights(source: str | Path) -> Path:
    """The weights file a ``--finetune`` source names (today: a file; the one place to add run directories and
    model folders)."""
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"--finetune {source}: no such weights file (a .safetensors, timm or DeiT .pth file)")
    return path


def match_distillation_token(
    state: dict[str, torch.Tensor], distilled: bool
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Fit a ViT state dict to a model with (``distilled``) or without a distillation token; pure.

    Plain checkpoint -> distilled model: ``dist_token`` starts as a copy of ``cls_token``, its position embedding as
    a copy of the class token's (token order ``[cls, dist, patches]``), and ``head_dist`` as a copy of ``head``, so
    the fused prediction starts as the plain model's. Distilled checkpoint -> plain model: the distillation token,
    its position embedding and ``head_dist`` are dropped. Returns the new dict and what was done (``None``: nothing).
    """
    has_dist = "dist_token" in state
    if "cls_token" not in state or "pos_embed" not in state or has_dist == distilled:
        return state, None
    out = dict(state)
    pos = state["pos_embed"]  # (1, prefix + grid, D)
    if distilled:
        out["dist_token"] = state["cls_token"].clone()
        out["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
        for part in ("weight", "bias"):
            if f"head.{part}" in state:
                out[f"head_dist.{part}"] = state[f"head.{part}"].clone()
        return out, "initialised dist_token, its position embedding and head_dist from the class token and head"
    del out["dist_token"]
    out["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
    for part in ("weight", "bias"):
        out.pop(f"head_dist.{part}", None)
    return out, "dropped the checkpoint's dist_token, its position embedding and head_dist"


def load_pretrained(model: nn.Module, source: str | Path) -> list[str]:
    """Start ``model`` from the weights in ``source`` for fine-tuning; returns the keys left freshly initialised.

    Position embeddings are resampled to the model's patch grid (prefix tokens kept, bicubic; DeiT ``main.py``), a
    classifier of another class count is reset, and a plain checkpoint starts a distilled model
    (:func:`match_distillation_token`); each step is logged.
    """
    path = resolve_weights(source)
    state, meta = read_checkpoint(path)
    state, note = match_distillation_token(state, bool(getattr(model, "distilled", False)))
    if note:
        log.info("finetune: %s of %s", note, path)
    pos, own_pos = state.get("pos_embed"), getattr(model, "pos_embed", None)
    dropped = load_state(model, state, origin=_origin(path, meta), allow_new_head=True)
    if pos is not None and own_pos is not None and pos.shape != own_pos.shape:
        log.info("finetune: resampled pos_embed %s -> %s (prefix tokens kept)", tuple(pos.shape), tuple(own_pos.shape))
    log.info("finetune: loaded %s%s", path, f"; new classifier ({', '.join(dropped)})" if dropped else "")
    return dropped
