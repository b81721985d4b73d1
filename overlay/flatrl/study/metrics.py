"""Reading one metric's curve from the files an entry point leaves behind.

Entry points log in three formats: CSV with a header (TD-MPC2's ``eval.csv``/``train.csv``,
the ``command`` entry point), d3rlpy's header-less ``<metric>.csv`` (``epoch,step,value``) and
TensorBoard event files (the SAC and world-model agents). Each reader returns a
:class:`Series` sorted by step, or None when the metric is not there, so the report can tell
"not logged" from "logged but empty".
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flatrl.study.spec import StudyError


@dataclass(frozen=True)
class Series:
    """A metric's values against the step they were logged at (sorted, finite values only)."""

    steps: np.ndarray
    values: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.values)


def _series(pairs: Iterable[tuple[float, float]], source: str) -> Series:
    # a resumed run may log a step twice: keep the last value written for each step
    by_step: dict[float, float] = {}
    for step, value in pairs:
        if math.isfinite(value):
            by_step[step] = value
    steps = np.array(sorted(by_step), dtype=float)
    values = np.array([by_step[s] for s in sorted(by_step)], dtype=float)
    return Series(steps, values, source)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_csv_column(path: Path, column: str, step_column: str = "step") -> Series | None:
    """``column`` of a CSV with a header; the row index stands in when there is no step column."""
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or column not in reader.fieldnames:
            return None
        pairs = []
        for i, row in enumerate(reader):
            value = _float(row.get(column))
            if value is None:
                continue
            step = _float(row.get(step_column)) if step_column in reader.fieldnames else None
            pairs.append((float(i) if step is None else step, value))
    return _series(pairs, str(path))


def read_d3rlpy_csv(path: Path) -> Series | None:
    """d3rlpy's FileAdapter: one header-less ``epoch,step,value`` CSV per metric.

    d3rlpy appends one row per epoch and its runs do not resume (the study script starts a run
    over in a clean directory), so the steps of a sound file only ever increase. A step that
    goes back means two processes wrote the file (two runners launched the same run); its
    values are a mix of both, so it is an error, not something to average.
    """
    if not path.is_file():
        return None
    pairs = []
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 3 and (step := _float(row[1])) is not None:
                if (value := _float(row[2])) is not None:
                    pairs.append((step, value))
    for (before, _), (after, _) in zip(pairs, pairs[1:], strict=False):
        if after <= before:
            raise StudyError(
                f"{path}: step {after:g} is logged after step {before:g}, so two processes "
                "wrote this run's logs and its values are a mix of both. Delete the run's "
                "directory (the seed_<n> folder holding this file) and run the study again: "
                "that run alone is redone."
            )
    return _series(pairs, str(path))


def read_tensorboard(log_dir: Path, tag: str) -> Series | None:
    """Scalar ``tag`` from every event file under ``log_dir`` (a resumed run adds files)."""
    files = sorted(p for p in Path(log_dir).rglob("events.out.tfevents.*") if p.is_file())
    if not files:
        return None
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError as err:
        raise RuntimeError(
            f"{log_dir} holds TensorBoard logs; reading them needs the tensorboard package "
            "(it is in .venv/d3rlpy: run the report there, or pip install tensorboard)."
        ) from err
    from tensorboard.util import tensor_util

    pairs: list[tuple[float, float]] = []
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag != tag:
                    continue
                if value.HasField("tensor"):
                    number = float(tensor_util.make_ndarray(value.tensor).item())
                else:  # legacy simple_value summaries
                    number = float(value.simple_value)
                pairs.append((float(event.step), number))
    return _series(pairs, str(log_dir)) if pairs else None
