"""A model's own preprocessing: any image (file, PIL image or tensor, any size or mode) -> the tensor it was
evaluated on.

The steps reproduce the evaluation pipeline of the run that trained the model, so that an image of the data set,
saved as a PNG, gives *exactly* the tensor the model saw at evaluation:

1. decode (JPEG draft mode as the ImageFolder reader does) and flatten the mode: 16-bit and float greyscale are
   scaled to 8 bits (PIL's own conversion clips them); transparency is composited over black (the background of
   the MNIST family and of the zero padding); then converted to ``color_mode`` (``"L"`` or ``"RGB"``);
2. resize (PIL bicubic, antialiased) so the image covers the data's native size, and centre-crop to it -- as the
   ImageFolder reader decodes; an image already of that size is untouched;
3. zero-pad by ``pad`` pixels per side (the run's ``data.pad``);
4. the run's evaluation transform (:class:`~deitlab.data.EvalAugment`: resize the shorter side to
   ``input_size / crop_pct``, centre-crop ``input_size``, normalise with ``mean``/``std``).

Field names follow timm's ``pretrained_cfg`` where one exists (``input_size`` (C, H, W), ``mean``, ``std``,
``interpolation``, ``crop_pct``, ``crop_mode``); ``color_mode``, ``native_size`` and ``pad`` are deitlab's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deitlab.data import EvalAugment
from deitlab.data.ops import check_interpolation
from deitlab.errors import ConfigError, DataError

COLOR_MODES = {"L": 1, "RGB": 3}
# timm's pretrained_cfg names (what timm's own config.json files hold) and deitlab's additions.
TIMM_FIELDS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
DEITLAB_FIELDS = ("color_mode", "native_size", "pad")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
EIGHT_BIT_MAX, SIXTEEN_BIT_MAX = 255, 65535
# What decoding an image may raise (PIL: OSError/UnidentifiedImageError, SyntaxError, ValueError, bombs).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

ImageInput = str | Path | Image.Image | torch.Tensor | np.ndarray


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input; see the module docstring for the steps.

    Attributes:
        input_size: ``(C, H, W)`` of the model's input.
        mean, std: per-channel normalisation in [0, 1] pixel units.
        interpolation: the evaluation resize (``bicubic``, ``bilinear`` or ``nearest``).
        crop_pct: the evaluation crop: the shorter side is resized to ``H / crop_pct``, then ``H x W`` is cut out.
        crop_mode: timm's field; only ``"center"``.
        color_mode: ``"L"`` (one channel) or ``"RGB"``; must match ``C``.
        native_size: ``(H, W)`` of the data's own images, before padding: every image is first brought to it.
        pad: zero pixels added on each side after that.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    color_mode: str = "RGB"
    native_size: tuple[int, int] | None = None
    pad: int = 0

    def __post_init__(self) -> None:
        c, h, w = self.input_size
        if self.color_mode not in COLOR_MODES:
            raise ConfigError(f"color_mode={self.color_mode!r} is not one of {', '.join(COLOR_MODES)}")
        if COLOR_MODES[self.color_mode] != c:
            raise ConfigError(f"color_mode={self.color_mode!r} does not give the {c} channels of input_size={c, h, w}")
        if len(self.mean) != c or len(self.std) != c:
            raise ConfigError(f"mean={self.mean} / std={self.std} need {c} entries each (one per channel)")
        check_interpolation(self.interpolation)
        if not 0 < self.crop_pct <= 1 or self.crop_mode != "center":
            raise ConfigError(f"crop_pct={self.crop_pct} must be in (0, 1] and crop_mode={self.crop_mode!r} 'center'")
        if self.pad < 0 or min(self.native) < 1 or min(h, w) < 1:
            raise ConfigError(
                f"pad={self.pad}, native_size={self.native_size}, input_size={self.input_size} are invalid"
            )

    @property
    def native(self) -> tuple[int, int]:
        """The native size, defaulting to the input size less the padding."""
        if self.native_size is not None:
            return tuple(self.native_size)  # type: ignore[return-value]
        return (self.input_size[1] - 2 * self.pad, self.input_size[2] - 2 * self.pad)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "preprocessing") -> Preprocessing:
        """Build from a mapping with the fields' names (timm's and ours); unknown or missing fields are errors."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        try:
            kw = dict(data)
            kw["input_size"] = tuple(int(v) for v in kw["input_size"])
            kw["mean"], kw["std"] = tuple(map(float, kw["mean"])), tuple(map(float, kw["std"]))
            if kw.get("native_size") is not None:
                kw["native_size"] = tuple(int(v) for v in kw["native_size"])
            if len(kw["input_size"]) != 3 or len(kw.get("native_size") or (0, 0)) != 2:
                raise ValueError("input_size is (C, H, W) and native_size (H, W)")
            return cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{where}: {type(e).__name__}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), the native size made explicit."""
        d = dataclasses.asdict(self)
        d["native_size"] = list(self.native)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def default_for(cls, in_chans: int, img_size: int | Sequence[int]) -> Preprocessing:
        """What a model with no recorded preprocessing gets: timm's defaults for 3 channels (ImageNet mean/std),
        0.5/0.5 for one channel (the ImageFolder reader's grey default); no crop, no padding, bicubic."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if in_chans == 3:
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            mean, std = (0.5,) * in_chans, (0.5,) * in_chans
        mode = "L" if in_chans == 1 else "RGB"
        return cls(input_size=(in_chans, int(h), int(w)), mean=mean, std=std, color_mode=mode)

    # ---- the pipeline -----------------------------------------------------------------------------------
    def to_pixels(self, image: ImageInput) -> torch.Tensor:
        """Steps 1-2: one image -> uint8 ``(C, H, W)`` at the native size, in ``color_mode``."""
        img = open_image(image, draft=(self.color_mode, self.native))
        img = flatten_mode(img).convert(self.color_mode)
        arr = np.asarray(fit_to_size(img, self.native), dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def pixels_to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Steps 3-4 on a uint8 ``(B, C, H, W)`` batch at the native size -> float32 model input."""
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != self.input_size[0]:
            raise DataError(
                f"expected uint8 (B, {self.input_size[0]}, H, W) pixels, got {pixels.dtype} {tuple(pixels.shape)}"
            )
        if self.pad:
            p = self.pad
            pixels = torch.nn.functional.pad(pixels, (p, p, p, p))  # uint8 zeros, as the run's data.pad
        return self.eval_augment()(pixels)

    def eval_augment(self) -> EvalAugment:
        """The run's evaluation transform (resize + centre crop + normalise) on padded uint8 batches."""
        c, h, w = self.input_size
        if h != w:
            raise ConfigError(f"input_size={self.input_size}: deitlab's evaluation transform takes square inputs")
        return EvalAugment(
            img_size=h, mean=self.mean, std=self.std, crop_pct=self.crop_pct, interpolation=self.interpolation
        )

    def __call__(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images -> the float32 ``(B, C, H, W)`` batch the model takes."""
        if not len(images):
            raise DataError("no images to preprocess")
        return self.pixels_to_input(torch.stack([self.to_pixels(im) for im in images]))


def open_image(image: ImageInput, *, draft: tuple[str, tuple[int, int]] | None = None) -> Image.Image:
    """A PIL image from a path (decoded now, JPEG in draft mode at >= ``draft``'s size), a PIL image, or a
    uint8 / [0, 1] float tensor or array ``(C, H, W)`` (1, 3 or 4 channels; ``(H, W)`` for grey).

    Raises:
        DataError: unreadable file or unusable tensor; the message names it.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor | np.ndarray):
        return _array_to_image(image)
    path = Path(image)
    try:
        with Image.open(path) as img:
            if draft is not None:  # only JPEG decoders act on it; as the ImageFolder reader decodes
                img.draft("RGB" if draft[0] == "RGB" else "L", (draft[1][1], draft[1][0]))
            img.load()
            return img
    except DECODE_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read image {path}: {reason}") from None


def _array_to_image(x: torch.Tensor | np.ndarray) -> Image.Image:
    t = torch.as_tensor(x).detach().cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise DataError(f"an image tensor must be (C, H, W) with 1, 3 or 4 channels, got {tuple(t.shape)}")
    if t.is_floating_point():
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
            raise DataError("a float image tensor must hold pixels in [0, 1]; pass uint8 0..255 otherwise")
        t = (t * EIGHT_BIT_MAX).round()
    elif t.dtype != torch.uint8:
        raise DataError(f"an image tensor must be uint8 or float in [0, 1], got {t.dtype}")
    arr = t.to(torch.uint8).permute(1, 2, 0).numpy()
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    return Image.fromarray(arr[:, :, 0] if mode == "L" else arr, mode=mode)


def flatten_mode(img: Image.Image) -> Image.Image:
    """An 8-bit ``L``/``RGB`` image, or the image itself when PIL's ``convert`` handles it without loss of sense:
    16-bit and 32-bit greyscale are scaled to 0..255 (``convert("L")`` would clip them), float greyscale in [0, 1]
    or 0..255 likewise, and transparent images are composited over black."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = a.max() if a.size else 0
        if img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and top > EIGHT_BIT_MAX):
            scale = EIGHT_BIT_MAX / SIXTEEN_BIT_MAX
        elif img.mode == "F" and top <= 1:
            scale = float(EIGHT_BIT_MAX)
        else:
            scale = 1.0
        return Image.fromarray(np.clip(np.round(a * scale), 0, EIGHT_BIT_MAX).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img


def fit_to_size(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize (PIL bicubic) so the image covers ``size`` = (H, W), then centre-crop to it; the ImageFolder
    reader's geometry (shorter side to the target for square targets). An image of that size is untouched."""
    th, tw = size
    w, h = img.size
    if (w, h) == (tw, th):
        return img
    scale = max(tw / w, th / h)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - tw) // 2, (nh - th) // 2
    return img.crop((left, top, left + tw, top + th))
