"""Vision Transformer (Dosovitskiy et al., 2021) and DeiT (Touvron et al., 2021), built from parts (SPEC §1).

A ViT is ``stem + tokens + blocks + norm + heads``:

1. a stem (the *patch embedding*) turns an image into N tokens of width D: non-overlapping P×P patches
   (:class:`~deitlab.layers.PatchEmbed`), ViT_C's convolutions (:class:`~deitlab.layers.ConvStem`) or DeepViT's
   CNN embedding (:class:`~deitlab.layers.CnnPatchEmbed`);
2. a learnable class token, and for distilled models DeiT's distillation token, go in front; learnable position
   embeddings (one per token, prefix tokens included) are added;
3. L pre-norm blocks (:func:`vit_blocks`);
4. a final LayerNorm;
5. ``head`` on the class token and, for distilled models, ``head_dist`` on the distillation token.

:class:`VisionTransformer` receives the stem and the blocks as modules. The registry's builders (:func:`vit` here,
``vit_c`` and ``deepvit_cnn`` in their families' files) choose the stem; :func:`build_vit` builds the rest from the
keyword arguments every ViT accepts (:class:`ViTArgs`). State-dict keys and their order are timm's
(``patch_embed.*``, ``cls_token``, ``pos_embed``, ``dist_token``, ``blocks.{i}.norm1|attn.qkv|attn.proj|norm2|
mlp.fc1|mlp.fc2``, ``norm``, ``head``, ``head_dist``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple, TypedDict

import torch
from torch import nn
from typing_extensions import Unpack  # typing.Unpack from Python 3.11; torch depends on typing_extensions

from deitlab.layers import (
    LN_EPS,
    Attention,
    Block,
    PatchEmbed,
    ReAttention,
    ScaledBlock,
    drop_path_schedule,
    init_modules,
    trunc_normal,
    unit_norm,
)

FUSIONS = ("logits", "softmax")
TOKEN_STD = 0.02  # trunc-normal std of the tokens, position embeddings and Linear weights (DeiT/timm)
INIT_RULES = {nn.Linear: trunc_normal(TOKEN_STD), nn.LayerNorm: unit_norm}  # convs and BatchNorm: PyTorch's


class DistilledLogits(NamedTuple):
    """The two heads of a distilled model; the same type in train and eval mode."""

    cls_logits: torch.Tensor  # (B, classes), class-token head
    dist_logits: torch.Tensor  # (B, classes), distillation-token head

    def fused(self, how: str = "logits") -> torch.Tensor:
        """Fuse the heads for inference.

        ``"logits"`` averages the logits (the official DeiT code); ``"softmax"`` averages the softmax outputs
        (the paper's description) and returns their log, so the result is still logit-like (same argmax,
        ``softmax`` of it gives the averaged probabilities).
        """
        if how == "logits":
            return (self.cls_logits + self.dist_logits) / 2
        if how == "softmax":
            probs = (self.cls_logits.float().softmax(-1) + self.dist_logits.float().softmax(-1)) / 2
            return probs.clamp_min(torch.finfo(torch.float32).tiny).log()
        raise ValueError(f"fusion how={how!r} is not one of {FUSIONS}")


class Intermediates(NamedTuple):
    """What :meth:`VisionTransformer.forward_intermediates` returns."""

    tokens: list[torch.Tensor]  # each block's output, (B, N, D), before the final norm
    attentions: list[torch.Tensor] | None  # each block's attention map (B, heads, N, N), when asked
    features: torch.Tensor  # final normed tokens (B, N, D)


class VisionTransformer(nn.Module):
    """stem -> [cls] (+ [dist]) + tokens + pos_embed -> blocks -> LayerNorm -> head(cls) (+ head_dist(dist)).

    A distilled model is a :class:`DistilledVisionTransformer`: this class with ``distilled = True``, so one more
    prefix token and a second head; ``forward`` then returns :class:`DistilledLogits` in train and eval mode.

    Args:
        patch_embed: the stem, images ``(B, C, H, W)`` -> tokens ``(B, N, D)``; it exposes ``embed_dim`` (D),
            ``num_patches`` (N), ``grid_size``, ``img_size`` and ``in_chans``.
        blocks: the transformer blocks, tokens ``(B, prefix + N, D)`` -> the same shape (:func:`vit_blocks`).
        num_classes: classifier outputs; 0 gives identity heads (features).
        drop_rate: dropout after adding the position embeddings.
        fusion: how :meth:`predict` fuses a distilled model's two heads, ``"logits"`` or ``"softmax"``.
    """

    distilled = False

    def __init__(
        self,
        patch_embed: nn.Module,
        blocks: nn.Sequential,
        *,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        fusion: str = "logits",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r} is not one of {FUSIONS}")
        self.fusion = fusion
        self.embed_dim = self.num_features = dim = patch_embed.embed_dim
        self.patch_embed = patch_embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + patch_embed.num_patches, dim))
        if self.distilled:  # after pos_embed: timm's key order
            self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = blocks
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self._new_heads(num_classes)
        self.init_weights()

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens in front of the patch tokens: the class token, and the distillation token if distilled."""
        return 2 if self.distilled else 1

    def _prefix_tokens(self) -> list[nn.Parameter]:
        return [self.cls_token, self.dist_token] if self.distilled else [self.cls_token]

    def _new_heads(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes={num_classes!r} must be a non-negative integer")
        self.num_classes = num_classes
        for name in self._head_names():
            setattr(self, name, nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity())

    def _head_names(self) -> tuple[str, ...]:
        return ("head", "head_dist") if self.distilled else ("head",)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head(s) with freshly initialised ones for ``num_classes`` outputs (0: identity)."""
        self._new_heads(num_classes)
        for name in self._head_names():
            init_modules(getattr(self, name), INIT_RULES)

    def init_weights(self) -> None:
        """DeiT/timm init: tokens and position embeddings trunc-normal(0.02); Linear trunc-normal(0.02), zero
        bias; LayerNorm weight 1, bias 0. Convolutions and BatchNorm keep PyTorch's defaults."""
        for p in (self.pos_embed, *self._prefix_tokens()):
            nn.init.trunc_normal_(p, std=TOKEN_STD)
        init_modules(self, INIT_RULES)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay besides norms and biases (timm convention)."""
        return {"pos_embed", "cls_token", "dist_token"}

    # ---- forward ---------------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, D)
        prefix = torch.cat(self._prefix_tokens(), dim=1).expand(x.shape[0], -1, -1)  # (B, prefix, D)
        x = torch.cat([prefix, x], dim=1)  # (B, prefix + N, D)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> final normed tokens ``(B, prefix + N, D)``."""
        return self.norm(self.blocks(self._embed(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor | DistilledLogits:
        """Final tokens -> logits ``(B, classes)`` from the class token, or both heads for a distilled model."""
        logits = self.head(x[:, 0])  # (B, classes)
        if not self.distilled:
            return logits
        return DistilledLogits(logits, self.head_dist(x[:, 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor | DistilledLogits:
        return self.forward_head(self.forward_features(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits ``(B, classes)`` (for distilled models, the heads fused as ``fusion`` says)."""
        out = self.forward(x)
        return out.fused(self.fusion) if isinstance(out, DistilledLogits) else out

    def forward_intermediates(self, x: torch.Tensor, *, return_attention: bool = False) -> Intermediates:
        """Every block's output tokens and, if asked, every block's attention map ``(B, heads, N, N)``.

        With ``return_attention`` the explicit attention path is used (the fused kernel cannot return maps);
        the tokens equal those of the fused path to float precision.
        """
        x = self._embed(x)
        tokens: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        for blk in self.blocks:
            if return_attention:
                x, attn = blk.forward_with_attn(x)
                attentions.append(attn)
            else:
                x = blk(x)
            tokens.append(x)
        return Intermediates(tokens, attentions if return_attention else None, self.norm(x))


class DistilledVisionTransformer(VisionTransformer):
    """DeiT's distilled ViT: tokens ``[cls, dist, patches]``, ``head`` on cls and ``head_dist`` on dist.

    ``forward`` returns :class:`DistilledLogits` in both train and eval mode; :meth:`predict` fuses them.
    """

    distilled = True


# ---- building the parts from keyword arguments ------------------------------------------------------------------
def _reattention_flags(reattention: bool | Sequence[bool], depth: int) -> list[bool]:
    if isinstance(reattention, bool):
        return [reattention] * depth
    flags = [bool(f) for f in reattention]
    if len(flags) != depth:
        raise ValueError(f"reattention lists {len(flags)} blocks but depth={depth}; give one flag per block")
    return flags


def vit_blocks(
    dim: int,
    *,
    depth: int = 12,
    num_heads: int = 12,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    reattention: bool | Sequence[bool] = False,
    transform_scale: bool = False,
    scale_adjustment: float = 1.0,
    attn_impl: str = "auto",
) -> nn.Sequential:
    """The ``depth`` pre-norm blocks of a ViT of width ``dim`` (SPEC §1), the ``i``-th with stochastic depth
    ``drop_path_rate · i / (depth - 1)`` (DeiT/timm).

    Args:
        drop_rate: dropout after the attention projection and the MLP layers.
        attn_drop_rate: dropout on the attention maps.
        reattention: DeepViT re-attention for all blocks (bool) or per block (one flag each).
        transform_scale: multiply re-attention maps by ``head_dim ** -0.5`` (DeepViT-S).
        scale_adjustment: DeepViT-S/L residual scaling (:class:`~deitlab.layers.ScaledBlock`); 1.0 is the plain
            block.
        attn_impl: kernel of the plain-attention blocks: ``"auto"`` (explicit when training on the CPU, fused
            SDPA otherwise), ``"sdpa"`` or ``"explicit"``.
    """
    for arg, value in dict(embed_dim=dim, depth=depth, num_heads=num_heads).items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}={value!r} must be a positive integer")
    if dim % num_heads:
        raise ValueError(
            f"embed_dim={dim} is not divisible by num_heads={num_heads}; "
            f"choose num_heads from {[h for h in range(1, dim + 1) if dim % h == 0][:12]}"
        )
    attn_kw = dict(num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=drop_rate)

    def attention(reattend: bool) -> nn.Module:
        if reattend:
            return ReAttention(dim, transform_scale=transform_scale, **attn_kw)
        return Attention(dim, attn_impl=attn_impl, **attn_kw)

    block = Block if scale_adjustment == 1.0 else partial(ScaledBlock, scale_adjustment=scale_adjustment)
    flags = _reattention_flags(reattention, depth)
    rates = drop_path_schedule(drop_path_rate, depth)
    blocks = [
        block(dim, attention(f), mlp_ratio=mlp_ratio, proj_drop=drop_rate, drop_path=r) for f, r in zip(flags, rates)
    ]
    return nn.Sequential(*blocks)


class BlockArgs(TypedDict, total=False):
    """The keyword arguments of :func:`vit_blocks` besides ``dim`` and ``drop_rate``."""

    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    attn_drop_rate: float
    drop_path_rate: float
    reattention: bool | Sequence[bool]
    transform_scale: bool
    scale_adjustment: float
    attn_impl: str


class ViTArgs(BlockArgs, total=False):
    """The keyword arguments every ViT builder accepts besides its stem's own (those of :func:`build_vit`).

    The builders declare them as ``**kwargs: Unpack[ViTArgs]`` (PEP 692); the registry checks overrides against
    them, so a misspelt argument is an error naming the closest one.
    """

    img_size: int | Sequence[int]
    in_chans: int
    embed_dim: int
    num_classes: int
    drop_rate: float
    distilled: bool
    fusion: str


StemFactory = Callable[..., nn.Module]  # called with img_size=, in_chans=, embed_dim=; returns the stem


def build_vit(
    stem: StemFactory,
    *,
    img_size: int | Sequence[int] = 224,
    in_chans: int = 3,
    embed_dim: int = 768,
    num_classes: int = 1000,
    drop_rate: float = 0.0,
    distilled: bool = False,
    fusion: str | None = None,
    **block_args: Unpack[BlockArgs],
) -> VisionTransformer:
    """A ViT with the stem ``stem(img_size=, in_chans=, embed_dim=)`` and :func:`vit_blocks` (``block_args``).

    ``distilled=True`` gives a :class:`DistilledVisionTransformer` (DeiT's distillation token and ``head_dist``);
    ``fusion`` (default ``"logits"``) only applies to those.
    """
    if fusion is not None and not distilled:
        raise ValueError("fusion= only applies to distilled models (distilled=True)")
    patch_embed = stem(img_size=img_size, in_chans=in_chans, embed_dim=embed_dim)
    blocks = vit_blocks(embed_dim, drop_rate=drop_rate, **block_args)
    model_cls = DistilledVisionTransformer if distilled else VisionTransformer
    return model_cls(patch_embed, blocks, num_classes=num_classes, drop_rate=drop_rate, fusion=fusion or "logits")


def vit(*, patch_size: int = 16, **kwargs: Unpack[ViTArgs]) -> VisionTransformer:
    """Registry builder of the patchify ViT (ViT_P, DeiT): non-overlapping ``patch_size`` patches, a linear embedding.

    Every other argument is :func:`build_vit`'s.
    """
    return build_vit(partial(PatchEmbed, patch_size=patch_size), **kwargs)
