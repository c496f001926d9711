"""An image folder's splits for a training run: which splits exist, and whether the originals fit in memory.

ImageNet ships ``train/`` and ``val/`` only, other folders ``train/`` and ``test/``: the evaluation reads the split
asked for when it exists, else the other one, and the final "test" evaluation reads ``test/`` when it exists, else
the evaluation split -- :class:`FolderSplits` names the splits actually read, so every result can say which it is.

Memory: the decoded originals are held in memory (no decoding per epoch) only when they fit a budget, by default
a quarter of the machine's RAM shared by the processes of this node (``LOCAL_WORLD_SIZE``, set by torchrun);
otherwise they are streamed from disk (``stream=None``, the default) or, when memory was asked for explicitly
(``stream=False``), the run stops with a message giving the set's size and the budget. The sizes come from the
image headers (no decoding), estimated from a sample of files for large folders. Both modes give the same pixels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from deitlab.data.geometry import EvalGeometry, TrainGeometry
from deitlab.data.imageset import missing_data
from deitlab.data.readers.imagefolder import ImageFolder
from deitlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RAM_FRACTION = 0.25  # default memory budget: this share of physical RAM, split over the node's processes
FALLBACK_RAM_BYTES = 8 * 2**30  # when the platform does not report its RAM
EVAL_SPLITS = ("val", "test")


@dataclass
class FolderSplits:
    """The folders a run reads and how: ``eval_split``/``test_split`` name the splits actually read."""

    train: ImageFolder
    eval: ImageFolder
    test: ImageFolder | None
    eval_split: str
    test_split: str | None
    in_memory: bool
    decoded_bytes: int
    budget_bytes: int


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``: sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # unreachable; keeps type checkers calm


def memory_budget_bytes(budget_gb: float | None) -> int:
    """``budget_gb`` GiB, or by default :data:`RAM_FRACTION` of physical RAM / the processes on this node."""
    if budget_gb is not None:
        if budget_gb <= 0:
            raise ConfigError(f"data.memory_budget_gb={budget_gb} must be > 0 (GiB)")
        return int(budget_gb * 2**30)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = FALLBACK_RAM_BYTES
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return int(ram * RAM_FRACTION / local)


def existing_split(root: Path, wanted: str, purpose: str) -> str:
    """``wanted`` when ``root/wanted`` is a folder, else the other evaluation split that is (logged)."""
    if (root / wanted).is_dir():
        return wanted
    for other in EVAL_SPLITS:
        if other != wanted and (root / other).is_dir():
            log.warning("imagefolder %s has no %s/ folder: %s reads %s/ instead", root, wanted, purpose, other)
            return other
    raise missing_data(
        f"image folder {root} has no {' or '.join(f'{s}/' for s in EVAL_SPLITS)} folder for {purpose}; "
        f"expected {root}/val/<class>/<image> (ImageNet's layout) or {root}/test/<class>/<image>"
    )


def open_folder_splits(
    root: str | Path,
    *,
    train_geometry: TrainGeometry,
    eval_geometry: EvalGeometry,
    eval_split: str = "val",
    want_test: bool = True,
    stream: bool | None = None,
    budget_gb: float | None = None,
    bad_images: str = "error",
    seed: int = 0,
    workers: int | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
) -> FolderSplits:
    """Open ``root``'s train, evaluation and (when ``want_test``) test folders, and load them into memory when
    they fit (see the module docstring). ``limit_*`` keep the first N images of a split (file order)."""
    root = Path(root)
    if not root.is_dir():
        raise missing_data(f"image folder {root} does not exist; expected {root}/train/<class>/<image>")
    common = dict(bad_images=bad_images, seed=seed)
    train = ImageFolder(root, split="train", geometry=train_geometry, **common)
    eval_name = existing_split(root, eval_split, "the evaluation")
    evalset = ImageFolder(root, split=eval_name, geometry=eval_geometry, **common)
    test, test_name = None, None
    if want_test and eval_split != "test":
        test_name = "test" if (root / "test").is_dir() else eval_name
        if test_name != "test":
            log.info("imagefolder %s has no test/ folder: the final evaluation reads %s/ (results say so)", root,
                     test_name)  # fmt: skip
        test = evalset if test_name == eval_name else ImageFolder(root, split="test", geometry=eval_geometry, **common)
    if limit_train:
        train = train.subset(limit_train)
    if limit_eval:
        evalset = evalset.subset(limit_eval)
        test = None if test is None else (evalset if test_name == eval_name else test.subset(limit_eval))
    distinct: list[ImageFolder] = []
    for folder in (train, evalset, test):
        if folder is not None and all(folder is not d for d in distinct):
            _check_classes(folder, train)
            distinct.append(folder)
    in_memory, need, budget = _decide_memory(root, distinct, stream, budget_gb)
    if in_memory:
        for folder in distinct:
            folder.load_into_memory(workers)
    return FolderSplits(train, evalset, test, eval_name, test_name, in_memory, need, budget)


def _check_classes(folder: ImageFolder, train: ImageFolder) -> None:
    """Labels are class-folder positions: a split with other class folders would silently relabel its images."""
    if folder.classes != train.classes:
        only = sorted(set(folder.classes) ^ set(train.classes))
        raise DataError(
            f"{folder.name} has other class folders than train ({len(folder.classes)} vs {len(train.classes)}; "
            f"differing: {', '.join(only[:5]) or 'their order'}); every split needs the same <class> folders"
        )


def _decide_memory(
    root: Path, folders: list[ImageFolder], stream: bool | None, budget_gb: float | None
) -> tuple[bool, int, int]:
    """In memory or streamed: ``(in_memory, decoded bytes, budget bytes)``; refuses memory that is not there."""
    budget = memory_budget_bytes(budget_gb)
    if stream:
        return False, 0, budget
    sizes = [f.decoded_bytes() for f in folders]
    need, exact = sum(b for b, _ in sizes), all(e for _, e in sizes)
    count = sum(len(f) for f in folders)
    what = (f"{count} images of {root} ({', '.join(f.split for f in folders)}) take "
            f"{'' if exact else 'about '}{human_bytes(need)} decoded")  # fmt: skip
    if need <= budget:
        log.info("imagefolder: %s; in memory (budget %s, data.memory_budget_gb)", what, human_bytes(budget))
        return True, need, budget
    if stream is False:
        raise ConfigError(
            f"data.stream=false keeps images in memory, but the {what}, more than the memory budget of "
            f"{human_bytes(budget)} (data.memory_budget_gb); stream them from disk with data.stream=true "
            "(--set data.stream=true) or raise data.memory_budget_gb"
        )
    log.info("imagefolder: %s, more than the memory budget of %s: streaming from disk (data.stream=true)", what,
             human_bytes(budget))  # fmt: skip
    return False, need, budget
