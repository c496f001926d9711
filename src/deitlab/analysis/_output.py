"""Small output helpers shared by the analyses: JSON that stays valid, and plain-text tables."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deitlab.io import atomic_write_bytes


@dataclass
class Report:
    """What an analysis wrote (``files``), its numbers (``data``) and a short text table for the terminal."""

    table: str
    files: list[Path] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def finite_or_none(value: Any) -> Any:
    """JSON cannot hold NaN/Inf: non-finite floats become ``None``, recursively (tuples become lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as strict JSON (no NaN), atomically."""
    path = Path(path)
    atomic_write_bytes(path, json.dumps(finite_or_none(data), indent=1, allow_nan=False).encode())
    return path


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns right-aligned to their widest cell; floats with 4 significant digits, ``None`` as ``-``."""

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)
