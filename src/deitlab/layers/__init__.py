"""Reusable building blocks: attention, re-attention, transformer blocks, MLP, stems, position-embedding
resampling, drop path, weight initialisation."""

from deitlab.layers.attention import Attention, ReAttention
from deitlab.layers.block import LN_EPS, Block, ScaledBlock
from deitlab.layers.drop import DropPath, drop_path, drop_path_schedule
from deitlab.layers.mlp import Mlp
from deitlab.layers.patch_embed import CnnPatchEmbed, ConvBnAct, ConvStem, PatchEmbed
from deitlab.layers.pos_embed import resample_pos_embed
from deitlab.layers.weight_init import he_fan_out, init_modules, normal, trunc_normal, unit_norm

__all__ = [
    "LN_EPS",
    "Attention",
    "Block",
    "CnnPatchEmbed",
    "ConvBnAct",
    "ConvStem",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "ReAttention",
    "ScaledBlock",
    "drop_path",
    "drop_path_schedule",
    "he_fan_out",
    "init_modules",
    "normal",
    "resample_pos_embed",
    "trunc_normal",
    "unit_norm",
]
