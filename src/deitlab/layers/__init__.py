"""Reusable building blocks: attention, re-attention, MLP, stems, position-embedding resampling, drop path."""

from deitlab.layers.attention import Attention, ReAttention
from deitlab.layers.drop import DropPath, drop_path, drop_path_schedule
from deitlab.layers.mlp import Mlp
from deitlab.layers.patch_embed import CnnPatchEmbed, ConvBnAct, ConvStem, PatchEmbed
from deitlab.layers.pos_embed import resample_pos_embed

__all__ = [
    "Attention",
    "CnnPatchEmbed",
    "ConvBnAct",
    "ConvStem",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "ReAttention",
    "drop_path",
    "drop_path_schedule",
    "resample_pos_embed",
]
