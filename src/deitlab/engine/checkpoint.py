"""Resume checkpoints: everything needed to continue a run exactly, written atomically and verified on read.

A run directory holds ``checkpoints/ckpt-<step>.pt`` resume files, a ``manifest.json`` listing them with their
size and SHA-256, and ``model.safetensors`` (latest weights) / ``best.safetensors``. Resume files are read with
``torch.load(weights_only=True)``: plain tensors and containers only, never pickled code. A resume file that is
truncated or corrupt (size or hash differs from the manifest) is skipped, with a warning, for the previous one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deitlab.errors import CheckpointError
from deitlab.io import atomic_write_bytes, load_torch_bytes, sha256_hex, torch_bytes

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CKPT_DIR = "checkpoints"


@dataclass(frozen=True)
class ManifestEntry:
    file: str
    size: int
    sha256: str
    epoch: int
    step: int  # global optimizer steps done


def read_manifest(run_dir: Path) -> list[ManifestEntry]:
    path = run_dir / MANIFEST
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())
        return [ManifestEntry(**r) for r in rows]
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); delete it to resume from the checkpoint files alone") from None


def write_manifest(run_dir: Path, entries: list[ManifestEntry]) -> None:
    rows = [e.__dict__ for e in entries]
    atomic_write_bytes(run_dir / MANIFEST, json.dumps(rows, indent=1).encode())


def save_resume(run_dir: Path, state: dict[str, Any], *, epoch: int, step: int, keep_last: int) -> Path:
    """Write a resume file atomically, record it in the manifest, and prune all but the last ``keep_last``."""
    ckpt_dir = run_dir / CKPT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    data = torch_bytes(state)
    name = f"ckpt-{step:09d}.pt"
    atomic_write_bytes(ckpt_dir / name, data)
    entries = [e for e in read_manifest(run_dir) if e.file != name]
    entries.append(ManifestEntry(name, len(data), sha256_hex(data), epoch, step))
    keep, drop = entries[-keep_last:], entries[:-keep_last]
    write_manifest(run_dir, keep)  # the manifest changes before any file goes, so it never names a missing file
    for e in drop:
        (ckpt_dir / e.file).unlink(missing_ok=True)
    return ckpt_dir / name


def load_verified(path: Path, entry: ManifestEntry | None) -> dict[str, Any]:
    """A checkpoint's state, after checking its bytes against its manifest entry (size and SHA-256) when given."""
    data = path.read_bytes()
    if entry is not None and (len(data) != entry.size or sha256_hex(data) != entry.sha256):
        raise CheckpointError(f"{path} does not match its manifest entry (size {len(data)} vs {entry.size})")
    state = load_torch_bytes(data, what=str(path))
    if not isinstance(state, dict) or "model" not in state or "global_step" not in state:
        raise CheckpointError(f"{path} is not a deitlab resume file")
    return state


def load_resume(target: str | Path) -> tuple[dict[str, Any], Path]:
    """Load the newest good resume state from a run directory (or one resume file).

    Returns the state and the run directory. Bad files are skipped newest-first, each with a warning.
    """
    target = Path(target)
    if target.is_file():
        return load_verified(target, None), target.parent.parent if target.parent.name == CKPT_DIR else target.parent
    if not target.is_dir():
        raise CheckpointError(f"nothing to resume at {target}: no such run directory or checkpoint file")
    entries = read_manifest(target)
    if not entries:  # no manifest: fall back to the files themselves, newest first
        files = sorted((target / CKPT_DIR).glob("ckpt-*.pt"))
        entries_or_files: list[tuple[Path, ManifestEntry | None]] = [(f, None) for f in reversed(files)]
    else:
        entries_or_files = [(target / CKPT_DIR / e.file, e) for e in reversed(entries)]
    if not entries_or_files:
        raise CheckpointError(f"{target} holds no checkpoint to resume from")
    errors = []
    for path, entry in entries_or_files:
        try:
            state = load_verified(path, entry) if path.is_file() else None
        except CheckpointError as e:
            errors.append(str(e))
            log.warning("warning: skipping bad checkpoint %s (%s); trying the previous one", path.name, e)
            continue
        if state is None:
            errors.append(f"{path} is missing")
            log.warning("warning: checkpoint %s is missing; trying the previous one", path.name)
            continue
        if errors:
            log.warning("warning: resuming from the older checkpoint %s", path.name)
        return state, target
    raise CheckpointError(f"no readable checkpoint in {target}: {'; '.join(errors)}")
