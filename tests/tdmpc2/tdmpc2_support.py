"""Shared helpers of the TD-MPC2 patch-series tests (a uniquely named module: test files import
it, and a module called conftest would clash with the other test folders' conftest modules).

The tests need the patched tree at ``<repo>/build/tdmpc2`` (``make apply`` /
``apply_patches.py apply tdmpc2``) and the tdmpc2 package stack (hydra, torchrl, tensordict,
dm_control). Either may be missing (CI without the TD-MPC2 source, the d3rlpy environment):
then every test here is skipped, and the reason is also issued as a warning so that it is
printed in the run's summary.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TREE = REPO / "build" / "tdmpc2"
PROBE = Path(__file__).with_name("probe.py")
STACK = ("hydra", "omegaconf", "torchrl", "tensordict", "dm_control", "termcolor", "pandas")


def _skip_reason() -> str | None:
    if not (TREE / "tdmpc2" / "train.py").is_file():
        return (
            f"TD-MPC2 tests skipped: no patched tree at {TREE}; build it with "
            "`python3 apply_patches.py apply tdmpc2` (needs the pinned TD-MPC2 source)."
        )
    missing = [m for m in STACK if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"TD-MPC2 tests skipped: packages {missing} of the tdmpc2 stack are missing; run "
            "them with the tdmpc2 environment (.venv/tdmpc2)."
        )
    return None


SKIP_REASON = _skip_reason()
if SKIP_REASON:
    warnings.warn(SKIP_REASON, stacklevel=1)


def child_env() -> dict[str, str]:
    """Environment of the TD-MPC2 child processes: one thread, no rendering, no wandb."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MUJOCO_GL="disable")
    env["WANDB_MODE"] = "disabled"
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_probe(tree_dir: Path, jobs: list[dict], timeout: float = 600) -> list[dict]:
    """Run probe.py on ``tree_dir`` with ``jobs``; returns its results (asserts it succeeded)."""
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(tree_dir), json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, f"probe failed:\n{proc.stdout[-3000:]}\n{proc.stderr}"
    return json.loads(lines[-1][len("PROBE ") :])


def run_train(
    tree_dir: Path, workdir: Path, *overrides: str, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the tree's train.py from ``workdir`` (logs land in ``workdir/logs``)."""
    proc = subprocess.run(
        [sys.executable, str(tree_dir / "train.py"), *overrides],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, (
            f"train.py failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


# Small, CPU-quick settings: tiny model and batch, policy actions (no planning), one eval
# episode, 500 random steps (one episode) and few updates on them.
QUICK = (
    "task=cartpole-swingup",
    "model_size=1",
    "batch_size=4",
    "horizon=2",
    "mpc=false",
    "eval_episodes=1",
    "eval_freq=100000",
    "seed_steps=500",
    "seed_updates=8",
    "compile=false",
    "device=cpu",
    "enable_wandb=false",
)
