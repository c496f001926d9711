"""Throughput of deitlab's batched training augmentation vs a per-image PIL pipeline (timm's, when installed).

Pipeline (DeiT's): RandomResizedCrop + flip (bicubic), RandAugment ``rand-m9-mstd0.5-inc1``, normalise, random
erasing 0.25 (pixel mode), Mixup 0.8 / CutMix 1.0 with label smoothing 0.1.

* ``deitlab batched``: ``TrainAugment`` + ``Mixup`` on a uint8 batch tensor with 2 torch threads (the spec) and
  with 1 (robust when other processes share the cores: every parallel region then waits for a descheduled
  thread), with RandAugment's geometric ops bicubic as DeiT, or bilinear.
* ``timm per-image``: timm's ``create_transform(..., auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25)`` on PIL
  images in one process with one torch thread, then ``torch.stack`` and timm's ``Mixup`` -- what DeiT runs
  inside each loader worker.
* ``timm per-image x2 workers``: the same in a ``DataLoader`` with 2 worker processes (this machine's cores), each
  making one batch of half the images per pass, so both are busy (as DeiT's loader workers are).
* Without timm, ``PIL per-image``: a compact PIL implementation of the same ops in this file.

The ratio column is img/s relative to the per-image pipeline in one process.
Inputs are already decoded (uint8 tensor / PIL images) on both sides, so decoding is not measured. Two sizes:
224 px RGB from 256 px sources, and 28 px grayscale (Fashion-MNIST-sized). Run it, e.g. with timm::

    PYTHONPATH=src /work/timmvenv/bin/python benchmarks/bench_augment.py

It prints a table and writes ``benchmarks/results/bench_augment.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from deitlab.data import Mixup, TrainAugment
from deitlab.data.randaugment import RAND_TRANSFORMS
from deitlab.optimize import retain_freed_memory

RA = "rand-m9-mstd0.5-inc1"
RESULTS = Path(__file__).parent / "results" / "bench_augment.json"


def structured_images(n: int, size: int, chans: int, seed: int = 0) -> torch.Tensor:
    """Smooth random fields plus noise: realistic histograms for equalize/autocontrast, not flat noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, chans, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    x = 0.8 * x + 0.2 * torch.rand(n, chans, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    arr = x.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arr]


def rate(fn, n_images: int, min_time: float, max_reps: int = 20) -> float:
    """Images per second: one warm-up call, then repeat until ``min_time`` seconds have passed."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < max_reps and (reps == 0 or time.perf_counter() - t0 < min_time):
        fn()
        reps += 1
    return reps * n_images / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- baselines


def timm_transform(size: int, mean, std):
    import timm.data.auto_augment as aa
    from timm.data import create_transform

    # Pillow >= 11 rejects posterize(bits=0), which timm's inc1 set reaches at magnitude 10 (mstd noise makes
    # that ~2% of PosterizeIncreasing calls); restore older Pillow's behaviour (an all-black image).
    def posterize(img, bits, **_):
        return img.point(lambda _v: 0) if bits < 1 else ImageOps.posterize(img, bits)

    aa.NAME_TO_OP["PosterizeIncreasing"] = posterize
    return create_transform(
        size,
        is_training=True,
        auto_augment=RA,
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        interpolation="bicubic",
        mean=mean,
        std=std,
    )


class MiniPIL:
    """A compact per-image PIL version of the pipeline, used when timm is not installed."""

    OPS = tuple(op.removesuffix("Rel") for op in RAND_TRANSFORMS)  # TranslateXRel -> TranslateX (pixels here)

    def __init__(self, size: int, mean, std):
        self.size, self.mean, self.std = size, np.array(mean, np.float32), np.array(std, np.float32)

    def _op(self, img: Image.Image, name: str, m: float) -> Image.Image:
        s = -1 if random.random() > 0.5 else 1
        f = max(0.1, 1 + s * m / 10 * 0.9)
        fill = 128 if img.mode == "L" else (128, 128, 128)
        aff = {
            "ShearX": (1, s * 0.3 * m / 10, 0, 0, 1, 0),
            "ShearY": (1, 0, 0, s * 0.3 * m / 10, 1, 0),
            "TranslateX": (1, 0, s * 0.45 * m / 10 * img.size[0], 0, 1, 0),
            "TranslateY": (1, 0, 0, 0, 1, s * 0.45 * m / 10 * img.size[1]),
        }
        if name in aff:
            return img.transform(img.size, Image.AFFINE, aff[name], Image.BICUBIC, fillcolor=fill)
        if name == "Rotate":
            return img.rotate(s * 30 * m / 10, Image.BICUBIC, fillcolor=fill)
        if name in ("Color", "Contrast", "Brightness", "Sharpness"):
            return getattr(ImageEnhance, name)(img).enhance(f)
        if name == "Posterize":
            bits = 4 - int(m / 10 * 4)
            return img.point(lambda _v: 0) if bits < 1 else ImageOps.posterize(img, bits)
        if name == "Solarize":
            return ImageOps.solarize(img, 256 - min(256, int(m / 10 * 256)))
        if name == "SolarizeAdd":
            add = min(128, int(m / 10 * 110))
            return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * len(img.getbands()))
        return {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}[name](
            img
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        for _ in range(10):
            area = random.uniform(0.08, 1.0) * w * h
            ar = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
            if cw <= w and ch <= h:
                break
        else:
            cw, ch = w, h
        i, j = random.randint(0, h - ch), random.randint(0, w - cw)
        img = img.resize((self.size, self.size), Image.BICUBIC, box=(j, i, j + cw, i + ch))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        for name in random.choices(self.OPS, k=2):
            if random.random() < 0.5:
                img = self._op(img, name, min(10.0, max(0.0, random.gauss(9, 0.5))))
        arr = np.asarray(img, np.float32).reshape(self.size, self.size, -1) / 255.0
        x = torch.from_numpy(((arr - self.mean) / self.std).transpose(2, 0, 1).copy())
        if random.random() < 0.25:
            for _ in range(10):
                area = random.uniform(0.02, 1 / 3) * self.size**2
                ar = math.exp(random.uniform(math.log(0.3), math.log(1 / 0.3)))
                eh, ew = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
                if ew < self.size and eh < self.size:
                    t, lft = random.randint(0, self.size - eh), random.randint(0, self.size - ew)
                    x[:, t : t + eh, lft : lft + ew] = torch.randn(x.shape[0], eh, ew)
                    break
        return x


def mini_mixup(x: torch.Tensor, y: torch.Tensor, k: int):
    lam = float(np.random.beta(0.8, 0.8))
    t = torch.full((len(y), k), 0.1 / k).scatter_(1, y.view(-1, 1), 1 - 0.1 + 0.1 / k)
    return x * lam + x.flip(0) * (1 - lam), t * lam + t.flip(0) * (1 - lam)


class _PILSet(torch.utils.data.Dataset):
    def __init__(self, images, tf):
        self.images, self.tf = images, tf

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.tf(self.images[i]), 0


# ----------------------------------------------------------------------------------------------- main


def bench_size(
    size: int, src: int, chans: int, n: int, min_time: float, use_timm: bool, workers: int, device: str = "cpu"
) -> list[dict]:
    """Rows of img/s: deitlab's batched pipeline (on ``device``; its names say which when not the CPU), then the
    per-image baseline (always on the CPU, as in a DataLoader)."""
    mean = (0.485, 0.456, 0.406) if chans == 3 else (0.2860,)
    std = (0.229, 0.224, 0.225) if chans == 3 else (0.3530,)
    k = 1000 if chans == 3 else 10
    x = structured_images(n, src, chans)
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(1))
    mix = Mixup(num_classes=k, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    g = torch.Generator().manual_seed(0)
    rows = []

    def row(name: str, fn, max_reps: int = 20) -> None:
        rows.append({"pipeline": name, "size": size, "channels": chans, "img_per_s": rate(fn, n, min_time, max_reps)})

    for threads in (2, 1):
        torch.set_num_threads(threads)
        for ra_interp in ("bicubic", "bilinear"):
            aug = TrainAugment(
                img_size=size,
                mean=mean,
                std=std,
                rand_augment=RA,
                re_prob=0.25,
                interpolation="bicubic",
                ra_interpolation=ra_interp,
            )
            tag = "" if ra_interp == "bicubic" else ", RA bilinear"
            xd, yd = x.to(device), y.to(device)
            where = "" if device == "cpu" else f" on {device}"

            def run(aug: TrainAugment = aug, xd: torch.Tensor = xd, yd: torch.Tensor = yd) -> None:
                mix(aug(xd, g), yd, g, inplace=True)
                if xd.is_cuda:
                    torch.cuda.synchronize()

            row(f"deitlab batched{where} ({threads} thr{tag})", run)
    torch.set_num_threads(1)  # as in a DataLoader worker, where torch runs one thread per process

    pil = to_pil(x)
    if use_timm:
        from timm.data import Mixup as TimmMixup

        tf, name = timm_transform(size, mean, std), "timm per-image"
        tmix = TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=k)
    else:
        tf, name, tmix = MiniPIL(size, mean, std), "PIL per-image", lambda a, b: mini_mixup(a, b, k)
    row(f"{name} (1 process)", lambda: tmix(torch.stack([tf(im) for im in pil]), y), 3)
    if workers > 1:
        # one batch per worker per pass (batch n // workers), so every worker is busy, as in DeiT's training
        per = n // workers
        dl = torch.utils.data.DataLoader(
            _PILSet(pil[: per * workers], tf), batch_size=per, num_workers=workers, persistent_workers=True,
            multiprocessing_context="fork",
        )  # fmt: skip

        def loader():
            for j, (xb, _) in enumerate(dl):
                tmix(xb, y[j * per : (j + 1) * per])

        row(f"{name} ({workers} workers)", loader, 3)
    base = rows[-2 if workers > 1 else -1]["img_per_s"]
    for r in rows:
        r["ratio"] = r["img_per_s"] / base
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement (after a warm-up)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the per-image baseline (0: skip)")
    ap.add_argument("--no-timm", action="store_true", help="use the compact PIL baseline even if timm is installed")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator settings as they are")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not args.system_malloc:
        retain_freed_memory()  # what deitlab's training process runs with (optimize.plan_for on the CPU)
    random.seed(0)
    np.random.seed(0)
    try:
        import timm

        use_timm, timm_version = not args.no_timm, timm.__version__
    except ImportError:
        use_timm, timm_version = False, None
    load = os.getloadavg()
    rows = bench_size(224, 256, 3, args.batch, args.min_time, use_timm, args.workers)
    rows += bench_size(28, 28, 1, args.batch, args.min_time, use_timm, args.workers)
    print(f"load average before: {load[0]:.2f} on {os.cpu_count()} cores; ratio = img/s / per-image in 1 process")
    print(f"{'pipeline':40s} {'size':>9s} {'img/s':>9s} {'ratio':>7s}")
    for r in rows:
        print(f"{r['pipeline']:40s} {r['size']:>4d}px x{r['channels']} {r['img_per_s']:9.0f} {r['ratio']:6.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "pipeline": f"RRC+flip (bicubic), RandAugment {RA}, normalize, random erasing 0.25 pixel, "
                "mixup 0.8 / cutmix 1.0, label smoothing 0.1",
                "batch": args.batch,
                "torch": torch.__version__,
                "timm": timm_version,
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "loadavg_before": [round(v, 2) for v in load],
                "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                "note": "ratio = img/s / per-image pipeline in one process (1 torch thread). With other processes "
                "busy on the cores (see loadavg), multi-threaded rows wait for descheduled threads and drop "
                "10-50x; compare the 1-thread rows then.",
                "results": [{**r, "img_per_s": round(r["img_per_s"], 1), "ratio": round(r["ratio"], 2)} for r in rows],
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
