"""``metrics.csv`` of a stage, continued across sessions.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, which would throw away the
first session's curves when the second one resumes; this logger appends instead (one row per logging
call, ``step`` = batches, columns widened as new metrics appear) and rewrites the file atomically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from aetune.io import atomic_write_text

METRICS_FILE = "metrics.csv"


class StageCSVLogger(Logger):
    """Appends logged metrics to ``<folder>/metrics.csv`` (rank 0 only).

    Args:
        folder: the stage folder.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.path = self.folder / METRICS_FILE
        self._rows: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def log_dir(self) -> str:
        return str(self.folder)

    @property
    def save_dir(self) -> str:
        return str(self.folder)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Not used: the resolved config is written beside the checkpoints as ``config.yaml``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    @rank_zero_only
    def save(self) -> None:
        """Merge the buffered rows into the file (existing rows first, header = union of columns)."""
        if not self._rows:
            return
        old: list[dict[str, Any]] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                old = list(csv.DictReader(f))
        rows = old + self._rows
        columns = ["step"] + sorted({k for r in rows for k in r} - {"step"})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, out.getvalue())
        self._rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
