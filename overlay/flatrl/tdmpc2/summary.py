"""The lines the patched ``train.py`` ends with: what the run reached and where everything is.

Upstream ends with "Training completed successfully", and a researcher then has to find the work
dir, the CSVs, the model file and how to continue. The summary reads them back from disk, so it
reports what was written rather than what was meant: the last evaluation (and the best), the last
logged update's loss and sharpness, the logs and models, how to view the logs and how to
continue from the checkpoint.
"""

from __future__ import annotations

import csv
import math
import shlex
from pathlib import Path
from typing import Any

from flatrl.tdmpc2.metrics_log import console_line

__all__ = ["run_summary"]


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _eval_line(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "  final eval:  none ran (eval_freq is beyond steps)"
    last = rows[-1]
    step = _number(last.get("step"))
    at = f" at step {int(step):,}" if step is not None else ""
    scores = {k: _number(v) for k, v in last.items() if k != "step" and _number(v) is not None}
    if "episode_reward" in scores:
        rewards = [r for r in (_number(row.get("episode_reward")) for row in rows) if r is not None]
        return (
            f"  final eval:  episode_reward {scores['episode_reward']:.1f}{at} "
            f"(best {max(rewards):.1f} over {len(rewards)} evaluations)"
        )
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    return f"  final eval:  {shown}{at}"


def _train_line(rows: list[dict[str, str]]) -> str | None:
    """The last train row's losses, labelled as the console line after each train log."""
    if not rows:
        return None
    values = {k: v for k, v in ((k, _number(v)) for k, v in rows[-1].items()) if v is not None}
    line = console_line(values)
    if line is None:
        return None
    step = values.get("step")
    at = f" (step {int(step):,})" if step is not None else ""
    return f"  last update: {line.strip()}{at}"


def _overrides() -> list[str]:
    """The command line's Hydra overrides, or [] outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # no Hydra app running (a test, a notebook): the command is not known
        return []


def run_summary(cfg: Any, model_dir: str | Path) -> str:
    """A few lines: final and best evaluation, last update, logs, models, view and continue."""
    work = Path(cfg.work_dir)
    model_dir = Path(model_dir)
    lines = ["", "Summary", _eval_line(_rows(work / "eval.csv"))]
    train = _train_line(_rows(work / "train.csv"))
    if train:
        lines.append(train)
    csvs = sorted(p.name for p in work.glob("*.csv"))
    lines.append(f"  logs:        {work}" + (f" ({', '.join(csvs)})" if csvs else ""))
    models = sorted(p.name for p in model_dir.glob("*.pt")) if model_dir.is_dir() else []
    lines.append(
        f"  models:      {model_dir} ({', '.join(models)})"
        if models
        else "  models:      none saved"
    )
    if (work / "tensorboard").is_dir():
        lines.append(
            f"  view:        tensorboard --logdir {shlex.quote(str(work / 'tensorboard'))}"
        )
    else:
        lines.append(
            f"  view:        column -s, -t < {shlex.quote(str(work / 'eval.csv'))} "
            "(tensorboard=true adds TensorBoard logs)"
        )
    checkpoint = model_dir / "checkpoint.pt"
    if checkpoint.is_file():
        keep = [
            o
            for o in _overrides()
            if o.split("=", 1)[0].lstrip("+~") not in ("checkpoint", "resume")
        ]
        command = shlex.join(
            ["python", "train.py", *keep, f"checkpoint={checkpoint}", "resume=true"]
        )
        lines.append(
            f"  continue:    {command} (from its last episode end; raise steps= to train further)"
        )
    return "\n".join(lines)
