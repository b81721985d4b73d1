"""The real entry point: `python -m flatrl.agents.sac.train -m` runs a 2-point local sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from .conftest import CONFIG_DIR, TINY


def test_multirun_sweep_of_two_tiny_runs(tmp_path: Path) -> None:
    overrides = [o for o in TINY if not o.startswith("training.eval_every_steps")] + [
        "training.total_env_steps=1000",
        "training.seed_steps=800",
        "training.eval_every_steps=1000",
        "training.checkpoint_dir=ckpt",  # relative: must land in the launch directory
        "training.replay_dir=rb",
        "hydra/launcher=local",
        "method_name=SAC_${training.critic_optimizer.case}",
        "training.critic_optimizer.case=adamw,muon",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(
        [sys.executable, "-m", "flatrl.agents.sac.train", "-m", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case in ("adamw", "muon"):
        run_dir = tmp_path / "ckpt" / f"SAC_{case}" / "cartpole-swingup" / "seed_0"
        assert (run_dir / "checkpoint.pt").is_file()
        assert any((run_dir / "tb").iterdir())
        assert (
            tmp_path / "rb" / f"SAC_{case}" / "cartpole-swingup" / "seed_0" / "step_1000"
        ).is_dir()
    job_dirs = sorted(p.name for p in (tmp_path / "multirun").glob("*/*/*_SAC_*"))
    assert job_dirs == ["0_SAC_adamw", "1_SAC_muon"]


def test_bad_config_fails_fast_through_the_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flatrl.agents.sac.train",
            "training.critic_optimizer.case=lion",
            "training.checkpoint_dir=ckpt",
        ],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "training.critic_optimizer.case='lion' is unknown" in proc.stderr
    assert not (tmp_path / "ckpt").exists()


def test_slurm_launcher_choice_extends_submitit_with_defaults() -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="needs hydra-submitit-launcher"
    )
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="sac_cheetah",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 1440
    assert launcher.max_num_timeout > 0  # requeued jobs continue with resume=true
