"""Per-run logs: one JSON line per epoch (``log.jsonl``) and a ``summary.csv`` table, rewritten atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from deitlab.io import atomic_write_bytes


class RunLog:
    """Epoch records of one run, kept in memory and rewritten to disk (when ``enabled``) after every change."""

    def __init__(self, run_dir: Path, *, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []

    def start(self, start_epoch: int) -> None:
        """Keep the records of epochs before ``start_epoch`` (a resumed run re-runs the rest) and rewrite the files."""
        self.rows = []
        path = self.run_dir / "log.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if isinstance(row, dict) and row.get("epoch", math.inf) < start_epoch:
                    self.rows.append(row)
        if self.enabled:
            self._flush()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.enabled:
            self._flush()

    def _flush(self) -> None:
        text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in self.rows)
        atomic_write_bytes(self.run_dir / "log.jsonl", text.encode())
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns and not isinstance(r[k], list | dict)]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in columns})
        atomic_write_bytes(self.run_dir / "summary.csv", buf.getvalue().encode())
