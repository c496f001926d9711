"""Loading weights into a model: position-embedding resampling, the head policy, architecture checks.

The file formats themselves (safetensors, weights-only ``.pth``) are read by :mod:`deitlab.io`.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
    state = adapt_pos_embed(state, model)
    own = model.state_dict()
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]  # model order
    head_mismatch = sorted((k for k in mismatched if is_head_key(k)), key=lambda k: not k.endswith("weight"))
    other_mismatch = [k for k in mismatched if not is_head_key(k)]
    name = meta.get("model", "")
    origin = f" (a {name} checkpoint)" if name else ""
    dropped: list[str] = []
    if head_mismatch:
        shapes = f"{tuple(state[head_mismatch[0]].shape)} in the checkpoint vs {tuple(own[head_mismatch[0]].shape)}"
        if not allow_new_head:
            raise CheckpointError(
                f"checkpoint {path}{origin} has a classifier of another class count ({head_mismatch[0]}: {shapes}); "
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
        raise CheckpointError(f"checkpoint {path}{origin} is for another architecture: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)
    return dropped
