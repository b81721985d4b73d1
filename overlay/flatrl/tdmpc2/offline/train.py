"""Offline training of TD-MPC2's agent on a fixed buffer, with held-out evaluation.

No environment steps: the agent's ``update`` samples TD-MPC2's own replay buffer, filled once
from a cached dataset (:mod:`.data`). Every ``log_every`` updates a row of mean train losses
(and SAM's own ``sharpness``) goes to ``<run_dir>/metrics.csv``; every ``eval_every`` updates
(and at 0 and the end) the held-out errors and the measured sharpness (:mod:`.heldout`) join
it. A checkpoint (TD-MPC2's, :mod:`flatrl.tdmpc2.checkpoint`: model, both optimizers incl.
SAM state, running scale, every random state) is written atomically every
``checkpoint_every`` updates and at the end, and ``resume=true`` continues from it exactly:
N updates + resume to 2N give the weights of 2N straight. Evaluation restores every random
state it touches, so how often it runs does not change training.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatrl.runtime import atomic_write_text
from flatrl.tdmpc2.offline import data as datasets
from flatrl.tdmpc2.offline import heldout
from flatrl.tdmpc2.offline.tree import make_agent, make_buffer, make_cfg

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
SETTINGS = "settings.json"
SUMMARY = "summary.json"
TRAIN_KEYS = (
    "consistency_loss",
    "reward_loss",
    "value_loss",
    "total_loss",
    "pi_loss",
    "grad_norm",
    "sharpness",
    "perturbed_loss",
)
EVAL_KEYS = (
    "heldout_consistency",
    "heldout_consistency_last",
    "heldout_reward_mae",
    "heldout_value_td_mae",
    "train_consistency",
    "train_consistency_last",
    "train_reward_mae",
    "train_value_td_mae",
    "measured_sharpness",
)
COLUMNS = ("step", "cpu_s", *TRAIN_KEYS, *EVAL_KEYS)
# TD-MPC2 settings of an offline run unless overridden (model_size 1, CPU-sized batch)
TDMPC2_DEFAULTS: dict[str, Any] = {
    "task": "cartpole-swingup",
    "model_size": 1,
    "batch_size": 64,
    "compile": False,
    "device": "cpu",
    "enable_wandb": False,
    "seed": 1,
}


@dataclass
class OfflineSettings:
    """The offline run's own settings (everything else is a TD-MPC2 override).

    ``steps`` (gradient updates), ``seed`` and ``resume`` are TD-MPC2 keys reused with their
    offline meaning; the rest is new here.
    """

    run_dir: Path
    steps: int = 600
    resume: bool = False
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    eval_horizon: int = 10
    eval_stride: int = 0  # 0: = eval_horizon (windows do not overlap)
    sharpness_rho: float = 0.05
    sharpness_batch: int = 256
    data_random: int = 10
    data_scripted: int = 30
    data_noise: float = 0.3
    heldout_episodes: int = 10
    heldout_noise: float = 0.5
    tdmpc2: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> OfflineSettings:
        names = {f for f in cls.__dataclass_fields__ if f != "tdmpc2"}
        own = {k: v for k, v in overrides.items() if k in names}
        if "run_dir" not in own:
            raise ValueError(
                "run_dir=<folder> is required: metrics, checkpoint and summary go there."
            )
        own["run_dir"] = Path(own["run_dir"])
        for key in (
            "steps",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "eval_horizon",
            "sharpness_batch",
            "heldout_episodes",
        ):
            value = own.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}.")
        tdmpc2 = {**TDMPC2_DEFAULTS, **{k: v for k, v in overrides.items() if k not in names}}
        tdmpc2["seed"] = overrides.get("seed", TDMPC2_DEFAULTS["seed"])
        return cls(**own, tdmpc2=tdmpc2)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint (one flat
        mapping, so that a mismatch names the key)."""
        skip = ("run_dir", "steps", "resume", "tdmpc2")
        out = {k: v for k, v in vars(self).items() if k not in skip}
        out.update({k: v for k, v in self.tdmpc2.items() if k not in skip})
        return json.loads(json.dumps(out, default=str))


def _datasets(s: OfflineSettings) -> tuple[dict, Path, dict, Path]:
    task = str(s.tdmpc2["task"])
    log = lambda msg: print(f"[collect] {msg}", flush=True)  # noqa: E731
    train, train_path = datasets.load_or_collect(
        datasets.train_spec(task, s.data_random, s.data_scripted, s.data_noise), progress=log
    )
    held, held_path = datasets.load_or_collect(
        datasets.heldout_spec(task, s.heldout_episodes, s.heldout_noise), progress=log
    )
    return train, train_path, held, held_path


def _sharpness_batch(train: dict, horizon: int, n: int) -> tuple[torch.Tensor, ...]:
    """A fixed batch of training windows (the same for every arm and seed of a task)."""
    w = heldout.windows(train, horizon, stride=1)
    idx = torch.from_numpy(np.random.RandomState(1234).choice(w.obs.shape[1], n, replace=False))
    return (
        w.obs[:, idx],
        w.action[:, idx],
        w.reward[:, idx].unsqueeze(-1),
        torch.zeros_like(w.reward[:, idx]).unsqueeze(-1),
    )


def _subset(w: heldout.Windows, n: int) -> heldout.Windows:
    """Every k-th window so that about ``n`` remain (training windows, for the train errors)."""
    step = max(1, w.obs.shape[1] // n)
    return heldout.Windows(w.obs[:, ::step], w.action[:, ::step], w.reward[:, ::step])


class MetricsCSV:
    """``metrics.csv`` with a fixed header; rows after a resumed checkpoint's step are dropped."""

    def __init__(self, path: Path, keep_until: int | None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if keep_until is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if float(r["step"]) <= keep_until]
        lines = [",".join(COLUMNS)] + [",".join(r.get(c, "") for c in COLUMNS) for r in rows]
        atomic_write_text("\n".join(lines) + "\n", path)

    def write(self, row: dict[str, Any]) -> None:
        def cell(key: str) -> str:
            value = row.get(key)
            return (
                "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
            )

        with self.path.open("a") as f:
            f.write(",".join(cell(c) for c in COLUMNS) + "\n")


def _check_resume(s: OfflineSettings) -> dict[str, Any] | None:
    """The settings file of the run to resume, or None for a fresh run."""
    ckpt = s.run_dir / CHECKPOINT
    if not (s.resume and ckpt.is_file()):
        return None
    saved = json.loads((s.run_dir / SETTINGS).read_text())
    if saved != s.identity():
        diff = sorted(
            k for k in set(saved) | set(s.identity()) if saved.get(k) != s.identity().get(k)
        )
        raise ValueError(
            f"resume=true in {s.run_dir}: the checkpoint was written with other settings "
            f"({', '.join(diff)}); resume with the same settings, or use a new run_dir."
        )
    return saved


def train(
    s: OfflineSettings, data: tuple[dict[str, Any], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Train, evaluate, checkpoint; returns the summary (also written to ``summary.json``).

    ``data`` = (train, held-out) datasets in :mod:`.data`'s layout replaces the cached DMC
    datasets (tests use tiny synthetic ones).
    """
    from flatrl.tdmpc2.checkpoint import load_checkpoint, save_checkpoint

    torch.set_num_threads(1)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    resuming = _check_resume(s) is not None
    if data is None:
        train_data, train_path, held_data, held_path = _datasets(s)
    else:
        (train_data, held_data), train_path, held_path = data, Path("<given>"), Path("<given>")
    cfg = make_cfg(s.tdmpc2, train_data["facts"])
    n_transitions = int(train_data["obs"].shape[0] * train_data["obs"].shape[1])
    cfg.steps = cfg.buffer_size = n_transitions  # the buffer holds the whole dataset
    from common.seed import set_seed

    set_seed(cfg.seed)
    agent = make_agent(cfg)
    buffer = make_buffer(cfg)
    buffer.load(datasets.as_tensordict(train_data))
    held_windows = heldout.windows(held_data, s.eval_horizon, s.eval_stride or s.eval_horizon)
    train_windows = _subset(
        heldout.windows(train_data, s.eval_horizon, s.eval_horizon), held_windows.obs.shape[1]
    )
    sharp_batch = _sharpness_batch(train_data, cfg.horizon, s.sharpness_batch)
    start, cpu_before = 0, 0.0
    if resuming:
        counters = load_checkpoint(s.run_dir / CHECKPOINT, agent, None)
        start, cpu_before = counters["step"], counters["elapsed_time"]
        print(f"Resumed from {s.run_dir / CHECKPOINT} at update {start}", flush=True)
    else:
        atomic_write_text(json.dumps(s.identity(), indent=1), s.run_dir / SETTINGS)
    log = MetricsCSV(s.run_dir / METRICS, keep_until=start if resuming else None)
    cpu0 = time.process_time()

    def cpu() -> float:
        return cpu_before + time.process_time() - cpu0

    def evaluate(step: int) -> dict[str, Any]:
        row: dict[str, Any] = dict(heldout.evaluate(agent, held_windows))
        row.update(
            {
                f"train_{k[len('heldout_') :]}": v
                for k, v in heldout.evaluate(agent, train_windows).items()
            }
        )
        row["measured_sharpness"] = heldout.measured_sharpness(agent, sharp_batch, s.sharpness_rho)
        return row

    if start == 0:
        log.write({"step": 0, "cpu_s": cpu(), **evaluate(0)})
    sums: dict[str, float] = {}
    count = 0
    last_eval: dict[str, Any] = {}
    for step in range(start + 1, s.steps + 1):
        info = agent.update(buffer)
        for key in TRAIN_KEYS:
            if key in info:
                sums[key] = sums.get(key, 0.0) + float(info[key])
        count += 1
        row: dict[str, Any] = {}
        if step % s.log_every == 0 or step == s.steps:
            row.update({k: v / count for k, v in sums.items()})
            sums, count = {}, 0
        if step % s.eval_every == 0 or step == s.steps:
            last_eval = evaluate(step)
            row.update(last_eval)
        if row:
            log.write({"step": step, "cpu_s": cpu(), **row})
            if "heldout_consistency" in row:
                print(
                    f"update {step}/{s.steps}: "
                    + ", ".join(
                        f"{k} {row[k]:.4g}"
                        for k in (
                            "total_loss",
                            "heldout_consistency",
                            "heldout_reward_mae",
                            "heldout_value_td_mae",
                            "measured_sharpness",
                        )
                        if k in row
                    ),
                    flush=True,
                )
        if step % s.checkpoint_every == 0 or step == s.steps:
            save_checkpoint(s.run_dir / CHECKPOINT, agent, None, step, 0, elapsed_time=cpu())
    summary = {
        "updates": s.steps,
        "cpu_s": round(cpu(), 2),
        "final": {k: round(v, 6) for k, v in last_eval.items()},
        "metrics_csv": str(s.run_dir / METRICS),
        "checkpoint": str(s.run_dir / CHECKPOINT),
        "train_dataset": str(train_path),
        "heldout_dataset": str(held_path),
        # every optimizer setting the run was given (variant, every_k, ... included)
        "optimizer": {
            k: v for k, v in s.tdmpc2.items() if k == "optimizer" or k.startswith("sam_")
        },
    }
    atomic_write_text(json.dumps(summary, indent=1), s.run_dir / SUMMARY)
    return summary
