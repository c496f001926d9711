"""Measurements that show what the seed papers' mechanisms do (issue 10; definitions in SPEC §7).

Plain functions on a model and a batch of normalised images, returning dicts:
:func:`attention_collapse` (DeepViT), :func:`token_similarity` and :func:`agreement` (DeiT), :func:`attention_maps`
and :func:`attention_rollout`, and :func:`edf` (Xiao et al.'s stability studies). Submodules: ``plots`` (PNG
figures), ``stability`` (search spaces and run specs), ``sweep`` (the resumable runner and ``deitlab sweep``),
``report`` (what ``deitlab analyze`` runs: load a model and data, write JSON + PNG, return a table).
"""

from deitlab.analysis.agreement import agreement, confusion_matrix, per_class_accuracy
from deitlab.analysis.collapse import (
    adjacent_similarity,
    attention_collapse,
    attention_entropy,
    count_similar_blocks,
    cross_layer_similarity,
    feature_to_final,
)
from deitlab.analysis.maps import Captured, capture
from deitlab.analysis.rollout import attention_maps, attention_rollout
from deitlab.analysis.stability import (
    RunSpec,
    SearchSpace,
    edf,
    edf_at,
    grid_specs,
    lr_wd_specs,
    paper_space,
    sample_lr_wd,
    space_around,
)
from deitlab.analysis.tokens import head_cosine, token_similarity

__all__ = [
    "Captured",
    "RunSpec",
    "SearchSpace",
    "adjacent_similarity",
    "agreement",
    "attention_collapse",
    "attention_entropy",
    "attention_maps",
    "attention_rollout",
    "capture",
    "confusion_matrix",
    "count_similar_blocks",
    "cross_layer_similarity",
    "edf",
    "edf_at",
    "feature_to_final",
    "grid_specs",
    "head_cosine",
    "lr_wd_specs",
    "paper_space",
    "per_class_accuracy",
    "sample_lr_wd",
    "space_around",
    "token_similarity",
]
