"""RegNetY (Radosavovic et al., 2020, "Designing Network Design Spaces"), the CNN teacher of DeiT.

Built as timm 1.0 builds it (``timm/models/regnet.py``), so that timm's RegNetY checkpoints, including
``regnety_160.deit_in1k`` (the DeiT teacher), load with ``strict=True``:

- stem: 3×3 conv (stride 2, or 1 for small images) -> BN -> ReLU, width ``stem_width``;
- stages ``s1..sN`` of Y blocks ``b1..bK``: 1×1 conv-BN-ReLU -> 3×3 grouped conv-BN-ReLU (stride on the
  first block) -> squeeze-excitation -> 1×1 conv-BN, plus the shortcut (1×1 conv-BN when the shape changes),
  ReLU after the add;
- global average pool -> dropout -> ``head.fc``.

Keys: ``stem.conv|bn``, ``s{i}.b{j}.conv1|conv2|conv3.conv|bn``, ``s{i}.b{j}.se.fc1|fc2``,
``s{i}.b{j}.downsample.conv|bn``, ``head.fc``. timm also has a parameter-free ``final_conv`` (an identity for
RegNetY) that we leave out.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deitlab.layers import DropPath, drop_path_schedule, he_fan_out, init_modules, normal, unit_norm
from deitlab.models._registry import register_model

STEM_STRIDES = (1, 2)
HEAD_STD = 0.01  # normal std of the classifier's weights (pycls/timm)


@dataclass(frozen=True)
class StageSpec:
    """One stage of a RegNet: ``depth`` blocks of output width ``width`` and group width ``group_width``."""

    width: int
    depth: int
    group_width: int


def regnet_stages(*, depth: int, w0: int, wa: float, wm: float, group_width: int, quant: int = 8) -> list[StageSpec]:
    """Stage widths and depths from RegNet's quantized linear parameterisation (paper §3.3, eqs. 2-4).

    1. Per-block linear widths ``u_j = w0 + wa·j`` for ``j = 0..depth-1``.
    2. ``s_j = round(log(u_j / w0) / log(wm))``: the number of times ``wm`` is applied to reach ``u_j``.
    3. Quantized widths ``w_j = round(w0 · wm^s_j / quant) · quant``; consecutive equal widths form a stage.
    4. Make each stage width a multiple of its group width: ``g = min(group_width, w)``,
       ``w = round(w / g) · g`` (pycls ``adjust_ws_gs_comp`` with bottleneck ratio 1, as in RegNetY).

    Rounding is round-half-to-even as in timm/pycls (``torch.round``/``round``). timm computes steps 1-3 in
    float32; we use float64, which gives the same widths for every registered configuration (tested).

    Args:
        depth: total number of blocks ``d``.
        w0: initial width, a positive multiple of ``quant``.
        wa: width slope ``w_a >= 0``.
        wm: width multiplier ``w_m > 1``.
        group_width: channels per group of the 3×3 conv (``g``).
        quant: the widths are multiples of this (8 in the paper).

    Returns:
        The stages in order (widths non-decreasing), their depths summing to ``depth``.

    Raises:
        ValueError: a parameter outside the ranges above.
    """
    checks = {
        "depth": (depth, isinstance(depth, int) and depth >= 1, "a positive integer"),
        "quant": (quant, isinstance(quant, int) and quant >= 1, "a positive integer"),
        "group_width": (group_width, isinstance(group_width, int) and group_width >= 1, "a positive integer"),
        "wa": (wa, wa >= 0, ">= 0"),
        "wm": (wm, wm > 1, "> 1"),
    }
    for arg, (value, ok, allowed) in checks.items():
        if not ok:
            raise ValueError(f"{arg}={value!r} must be {allowed}")
    if not isinstance(w0, int) or w0 <= 0 or w0 % quant:
        raise ValueError(
            f"w0={w0!r} must be a positive multiple of quant={quant}, e.g. {max(quant, w0 // quant * quant)}"
        )
    widths: list[int] = []
    for j in range(depth):
        u = w0 + wa * j
        s = round(math.log(u / w0) / math.log(wm))
        widths.append(int(round(w0 * wm**s / quant) * quant))
    stages: list[StageSpec] = []
    # torch.unique in timm sorts the widths; they are already non-decreasing since wa >= 0 and wm > 1.
    for w in sorted(set(widths)):
        g = min(group_width, w)
        stages.append(StageSpec(width=int(round(w / g) * g), depth=widths.count(w), group_width=g))
    return stages


class ConvBn(nn.Sequential):
    """conv (no bias) -> BatchNorm2d [-> ReLU]; keys ``conv``/``bn`` as timm's ``ConvNormAct``."""

    def __init__(
        self, in_chans: int, out_chans: int, *, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        # timm's symmetric padding ((stride - 1) + (k - 1)) // 2: 1 for every 3×3, 0 for the 1×1 convs.
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): ``x · sigmoid(fc2(ReLU(fc1(mean_hw(x)))))``, 1×1 convs with bias."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class YBlock(nn.Module):
    """RegNetY block (bottleneck ratio 1): ``ReLU(DropPath(conv3(SE(conv2(conv1(x))))) + shortcut(x))``.

    The SE reduction width is ``round(se_ratio · in_chans)`` — a fraction of the block's *input* width, not of
    the 3×3 conv's width (pycls and timm both do this; paper §5 leaves it implicit).
    """

    def __init__(
        self, in_chans: int, out_chans: int, *, stride: int, group_width: int, se_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.conv1 = ConvBn(in_chans, out_chans, kernel_size=1)
        self.conv2 = ConvBn(out_chans, out_chans, kernel_size=3, stride=stride, groups=out_chans // group_width)
        se_chans = int(round(in_chans * se_ratio))
        self.se = SqueezeExcite(out_chans, se_chans) if se_chans > 0 else nn.Identity()
        self.conv3 = ConvBn(out_chans, out_chans, kernel_size=1, act=False)
        self.act3 = nn.ReLU(inplace=True)
        shape_changes = in_chans != out_chans or stride != 1
        self.downsample = (
            ConvBn(in_chans, out_chans, kernel_size=1, stride=stride, act=False) if shape_changes else nn.Identity()
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(self.drop_path(y) + self.downsample(x))


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> ``fc`` (key ``head.fc`` as timm); ``num_classes=0`` gives features."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean((2, 3)))  # (B, C)
        return x if pre_logits else self.fc(x)


class RegNet(nn.Module):
    """RegNetY: stem -> stages of Y blocks -> global average pool -> linear head.

    Args:
        depth, w0, wa, wm, group_width: the design-space parameters, see :func:`regnet_stages`.
        se_ratio: SE width as a fraction of each block's input width (0.25 for RegNetY; 0 gives RegNetX).
        stem_width: output channels of the stem conv.
        stem_stride: 2 as in the paper (ImageNet); 1 keeps resolution for 28×28/32×32 images.
        img_size: the input size this model is meant for; recorded only (a CNN accepts any size), so the
            registry API is the same for every family.
        in_chans: input channels.
        num_classes: classifier outputs; 0 gives pooled features.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this value (as timm).
        zero_init_last: start each block's last BN with weight 0, so blocks begin as identities (timm's default).
    """

    def __init__(
        self,
        *,
        depth: int = 13,
        w0: int = 24,
        wa: float = 36.44,
        wm: float = 2.49,
        group_width: int = 8,
        se_ratio: float = 0.25,
        stem_width: int = 32,
        stem_stride: int = 2,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        for arg, value in dict(in_chans=in_chans, stem_width=stem_width).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg}={value!r} must be a positive integer")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes={num_classes!r} must be a non-negative integer (0 gives pooled features)")
        if stem_stride not in STEM_STRIDES:
            raise ValueError(
                f"stem_stride={stem_stride!r} must be one of {STEM_STRIDES} (2 for ImageNet, 1 for 28-32 px)"
            )
        if not 0.0 <= se_ratio < 1.0:
            raise ValueError(f"se_ratio={se_ratio!r} must be in [0, 1) (0.25 for RegNetY, 0 for no SE)")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate={drop_rate!r} must be in [0, 1)")
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(sizes) != 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ValueError(f"img_size={img_size!r} must be a positive int or a pair (H, W) of them")
        self.img_size = sizes
        self.num_classes = num_classes
        self.stage_specs = regnet_stages(depth=depth, w0=w0, wa=wa, wm=wm, group_width=group_width)
        self.stem = ConvBn(in_chans, stem_width, kernel_size=3, stride=stem_stride)
        rates = iter(drop_path_schedule(drop_path_rate, depth))
        prev = stem_width
        self.stage_names: list[str] = []
        for i, spec in enumerate(self.stage_specs, start=1):
            blocks = OrderedDict()
            for j in range(1, spec.depth + 1):
                blocks[f"b{j}"] = YBlock(
                    prev if j == 1 else spec.width, spec.width, stride=2 if j == 1 else 1,
                    group_width=spec.group_width, se_ratio=se_ratio, drop_path=next(rates),
                )  # fmt: skip
            self.add_module(f"s{i}", nn.Sequential(blocks))
            self.stage_names.append(f"s{i}")
            prev = spec.width
        self.num_features = prev
        self.drop_rate = drop_rate
        self.head = ClassifierHead(prev, num_classes, drop_rate)
        self.init_weights(zero_init_last=zero_init_last)

    def init_weights(self, *, zero_init_last: bool = True) -> None:
        """timm/pycls init: convs normal(0, sqrt(2 / fan_out)) with fan_out = k·k·out/groups and zero bias (SE
        convs included); BN weight 1, bias 0 (the last BN of each block 0 with ``zero_init_last``); Linear
        normal(0, 0.01), zero bias."""
        init_modules(self, {nn.Conv2d: he_fan_out, nn.BatchNorm2d: unit_norm, nn.Linear: normal(HEAD_STD)})
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, YBlock):
                    nn.init.zeros_(m.conv3.bn.weight)

    def no_weight_decay(self) -> set[str]:
        """No parameter besides norms and biases is exempt from weight decay."""
        return set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> last stage's feature map ``(B, num_features, h, w)``."""
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits ``(B, classes)``, or the pooled features ``(B, num_features)`` with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits ``(B, classes)``; the same as :meth:`forward` (one head)."""
        return self.forward(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``head.fc`` with a freshly initialised one for ``num_classes`` outputs (0: identity)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes={num_classes!r} must be a non-negative integer")
        self.num_classes = num_classes
        ref = next(self.parameters())
        self.head.fc = (
            nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        init_modules(self.head.fc, {nn.Linear: normal(HEAD_STD)})


# ---- RegNetY variants (timm ``model_cfgs``; the number is 10^8 FLOPs at 224 px) -------------------------------
_REGNETY = {
    "regnety_002": dict(w0=24, wa=36.44, wm=2.49, group_width=8, depth=13),
    "regnety_004": dict(w0=48, wa=27.89, wm=2.09, group_width=8, depth=16),
    "regnety_006": dict(w0=48, wa=32.54, wm=2.32, group_width=16, depth=15),
    "regnety_008": dict(w0=56, wa=38.84, wm=2.4, group_width=16, depth=14),
    "regnety_016": dict(w0=48, wa=20.71, wm=2.65, group_width=24, depth=27),
    "regnety_032": dict(w0=80, wa=42.63, wm=2.66, group_width=24, depth=21),
    "regnety_040": dict(w0=96, wa=31.41, wm=2.24, group_width=64, depth=22),
    "regnety_064": dict(w0=112, wa=33.22, wm=2.27, group_width=72, depth=25),
    "regnety_080": dict(w0=192, wa=76.82, wm=2.19, group_width=56, depth=17),
    "regnety_120": dict(w0=168, wa=73.36, wm=2.37, group_width=112, depth=19),
    "regnety_160": dict(w0=200, wa=106.23, wm=2.48, group_width=112, depth=18),  # DeiT's teacher
    "regnety_320": dict(w0=232, wa=115.89, wm=2.53, group_width=232, depth=20),
}
for _name, _cfg in _REGNETY.items():
    register_model(RegNet, name=_name, family="regnet", img_size=224, **_cfg)

# A small teacher for 28×28 / 32×32 images: regnety_002's widths, stride-1 stem (28 -> 28 -> 14 -> 7 -> 4 -> 2).
register_model(
    RegNet, name="regnety_002_s1", family="regnet", img_size=28, in_chans=1, num_classes=10, stem_stride=1,
    **_REGNETY["regnety_002"],
)  # fmt: skip
