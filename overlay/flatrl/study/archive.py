"""Copy a study's finished runs, without their checkpoints, to a folder you can commit.

A study that runs for days on a shared machine is committed as it goes, so that a fresh checkout
can report it and resume it (``cp -r <archive>/<study> runs/`` and the finished runs are
skipped). What is kept is what ``report`` and ``status`` read: the runner's bookkeeping
(``done.json``, ``status.json``), the entry point's settings (every ``.json``), the CSV files
that hold one of the study's metrics (named after it, as d3rlpy's ``<metric>.csv``, or with it in
the header, as ``metrics.csv``/``eval.csv``) and TensorBoard event files (the SAC and
world-model agents log there), each up to ``max_bytes``. Checkpoints, logs, replay
dumps, other CSVs (d3rlpy's per-layer gradient statistics) and anything larger stay behind.
Unfinished runs are not copied (they resume from their own checkpoints, which the archive does
not hold).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from flatrl.study.runner import FINISHED, plan, run_state
from flatrl.study.spec import Study

KEPT_SUFFIXES = (".json", ".csv")
TENSORBOARD_PREFIX = "events.out.tfevents."
LEFT_DIRS = ("replay",)  # replay-buffer dumps: their metadata JSON is of no use without them
MAX_BYTES = 1 << 20


@dataclass
class Archived:
    """What :func:`archive_study` did: runs copied, runs left (not finished), files skipped."""

    runs: list[str] = field(default_factory=list)
    not_finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


def metric_names(study: Study) -> set[str]:
    """The study's metric names and their parts (``train/sharpness``: file ``train``, column
    ``sharpness``)."""
    names = set()
    for metric in (study.metric, *study.extra_metrics):
        names |= {metric, *metric.split("/")}
    return names


def _holds_metric(path: Path, names: set[str]) -> bool:
    if path.stem in names:
        return True
    with path.open(newline="") as f:
        header = f.readline().strip().split(",")
    return bool(names.intersection(header))


def kept(path: Path, run_dir: Path, names: set[str], max_bytes: int = MAX_BYTES) -> bool:
    """Whether a run's file belongs in the archive (metrics and bookkeeping, not checkpoints)."""
    if set(path.relative_to(run_dir).parts[:-1]) & set(LEFT_DIRS):
        return False
    tensorboard = path.name.startswith(TENSORBOARD_PREFIX)
    if not tensorboard and (path.suffix not in KEPT_SUFFIXES or path.name.startswith("checkpoint")):
        return False
    if path.stat().st_size > max_bytes:
        return False
    return tensorboard or path.suffix == ".json" or _holds_metric(path, names)


def archive_study(
    study: Study, runs_root: str | Path, dest_root: str | Path, max_bytes: int = MAX_BYTES
) -> Archived:
    """Copy every finished run of ``study`` from ``runs_root`` to ``dest_root`` (same layout,
    ``<root>/<study>/<arm>/seed_<s>/``), replacing an older copy of the same run."""
    runs_root, dest_root = Path(runs_root).absolute(), Path(dest_root).absolute()
    if runs_root == dest_root:
        raise ValueError("archive: --to must be another folder than --runs-root.")
    out, names = Archived(), metric_names(study)
    for run in plan(study, runs_root):
        if run_state(run) != FINISHED:
            out.not_finished.append(run.key)
            continue
        dest = dest_root / run.run_dir.relative_to(runs_root)
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for path in sorted(p for p in run.run_dir.rglob("*") if p.is_file()):
            if not kept(path, run.run_dir, names, max_bytes):
                out.skipped.append(str(path.relative_to(runs_root)))
                continue
            target = staging / path.relative_to(run.run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            out.bytes += path.stat().st_size
        staging.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)  # the new copy replaces the old one whole
        staging.rename(dest)
        out.runs.append(run.key)
    return out
