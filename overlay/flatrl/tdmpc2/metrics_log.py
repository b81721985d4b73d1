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

import numpy as np
import torch

from flatrl.runtime import atomic_write_text


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

    def forget_headers(self) -> None:
        """Re-read each CSV's header on the next write (after the files were replaced)."""
        self._fields.clear()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def console_line(metrics: dict[str, Any]) -> str | None:
    """The losses upstream's console line leaves out: total loss, sharpness, perturbed loss."""
    keys = (("total_loss", "loss"), ("sharpness", "sharpness"), ("perturbed_loss", "L(w+e)"))
    parts = [
        f"{label} {value:.4g}"
        for key, label in keys
        if key in metrics and (value := scalar(metrics[key])) is not None
    ]
    return ("   " + "   ".join(parts)) if parts else None


class MetricsLogger:
    """Upstream's Logger plus :class:`MetricsWriter` and a console line with the sharpness.

    A wrapper instead of an edit of upstream's ``common/logger.py`` keeps the patch to one line
    of ``train.py``; every other attribute (video, model_dir, save_agent, ...) is the wrapped
    logger's.
    """

    def __init__(self, logger: Any, cfg: Any) -> None:
        self._logger = logger
        tensorboard = bool(cfg.get("tensorboard", False))
        categories = ("train", "pretrain") if cfg.get("save_csv", True) else ()
        self._writer = MetricsWriter(cfg.work_dir, categories, tensorboard=tensorboard)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def log(self, d: dict[str, Any], category: str = "train") -> None:
        self._logger.log(d, category)
        self._writer.write(
            d, category, int(d.get("iteration" if category == "pretrain" else "step", 0))
        )
        line = console_line(d) if category in ("train", "pretrain") else None
        if line:
            print(line)

    def finish(self, agent: Any = None) -> None:
        self._logger.finish(agent)
        self._writer.close()

    def _log_files(self) -> list[Path]:
        names = ["eval.csv", *(f"{c}.csv" for c in self._writer.csv_categories)]
        return [self._writer.log_dir / name for name in names]

    def state_dict(self) -> dict[str, Any]:
        """The CSV logs as they are now, for a checkpoint (small: one row per episode).

        Holds the files' text and upstream's in-memory evaluation history (``Logger._eval``),
        from which upstream rewrites ``eval.csv`` whole on every evaluation.
        """
        files = {p.name: p.read_text() for p in self._log_files() if p.is_file()}
        evals = [list(map(float, row)) for row in getattr(self._logger, "_eval", [])]
        return {"files": files, "eval": evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the logs back as a checkpoint saw them (a resumed run continues them).

        Rows written after the checkpoint by the run that stopped are dropped, because the
        resumed run logs those steps again; without the evaluation history upstream's logger
        would overwrite ``eval.csv`` with the resumed run's evaluations only.
        """
        for path in self._log_files():
            text = state["files"].get(path.name)
            if text is not None:
                atomic_write_text(text, path)
            elif path.exists():
                path.unlink()
        if hasattr(self._logger, "_eval"):
            self._logger._eval = [np.array(row) for row in state["eval"]]
        self._writer.forget_headers()
