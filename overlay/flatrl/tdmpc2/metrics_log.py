"""Train metrics on disk: a CSV per category and, with ``tensorboard=true``, TensorBoard.

Upstream TD-MPC2 writes only the evaluation return to CSV and sends everything else to wandb,
so without a wandb account the losses (and our ``sharpness``) are lost. This writer keeps them
locally; wandb stays optional.
"""

from __future__ import annotations

import csv
import math
import numbers
from pathlib import Path
from typing import Any

import torch


def scalar(value: Any) -> float | None:
    """A loggable float, or None for values that are not scalars (arrays, strings, ...)."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() >= 1 else None
    if isinstance(value, bool | numbers.Number):
        return float(value)
    if hasattr(value, "item") and getattr(value, "size", 0) == 1:  # numpy scalars
        return float(value.item())
    return None


class MetricsWriter:
    """Append each logged dict to ``<log_dir>/<category>.csv`` and optionally TensorBoard.

    CSV rows are appended (no O(n^2) rewrite per episode); the header is rewritten once if a
    new key appears later, e.g. ``sharpness`` after the first SAM step with ``sam_every > 1``.
    """

    def __init__(
        self,
        log_dir: str | Path,
        csv_categories: tuple[str, ...] = ("train", "pretrain"),
        tensorboard: bool = False,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_categories = tuple(csv_categories)
        self._fields: dict[str, list[str]] = {}
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.log_dir / "tensorboard"))

    def csv_path(self, category: str) -> Path:
        return self.log_dir / f"{category}.csv"

    def write(self, metrics: dict[str, Any], category: str, step: int) -> None:
        """Log the scalar entries of ``metrics`` at ``step``."""
        row = {k: v for k, v in ((k, scalar(v)) for k, v in metrics.items()) if v is not None}
        if category in self.csv_categories:
            self._append_csv(category, row)
        if self._tb is not None:
            for key, value in row.items():
                if math.isfinite(value):
                    self._tb.add_scalar(f"{category}/{key}", value, global_step=int(step))
            self._tb.flush()

    def _append_csv(self, category: str, row: dict[str, float]) -> None:
        path = self.csv_path(category)
        fields = self._fields.get(category)
        if fields is None and path.exists():  # resumed run: continue the same file
            with path.open(newline="") as f:
                fields = next(csv.reader(f), None)
        if fields is None:
            fields = list(row)
            with path.open("w", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writeheader()
        new = [k for k in row if k not in fields]
        if new:
            fields = fields + new
            with path.open(newline="") as f:
                old_rows = list(csv.DictReader(f))
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(old_rows)
        self._fields[category] = fields
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerow(row)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
