"""Short CPU runs of the patched train.py: SAM and Muon complete, log sharpness, and resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from tdmpc2_support import QUICK, run_train

pytestmark = [pytest.mark.tdmpc2, pytest.mark.slow]
SEED_UPDATES = 8  # QUICK's seed_updates
MORE_STEPS = 20


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "train.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _run_dir(workdir: Path, exp: str) -> Path:
    return workdir / "logs" / "cartpole-swingup" / "1" / exp


@pytest.fixture(scope="module")
def sam_run(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("sam_run")
    proc = run_train(
        tree,
        workdir,
        *QUICK,
        "steps=500",
        "optimizer=SAM",
        "sam_rho=0.05",
        "sam_every=2",
        "tensorboard=true",
        "exp_name=sam",
    )
    return workdir, proc.stdout


def test_sam_run_logs_sharpness_to_csv_console_and_tensorboard(sam_run):
    workdir, stdout = sam_run
    run_dir = _run_dir(workdir, "sam")
    assert "Optimizers: world model: SAM(rho=0.05" in stdout
    assert "sharpness" in stdout  # the console line after each train log
    last = _rows(run_dir)[-1]
    for key in ("sharpness", "perturbed_loss", "total_loss"):
        assert math.isfinite(float(last[key])), key
    assert math.isclose(
        float(last["perturbed_loss"]) - float(last["sharpness"]),
        float(last["total_loss"]),
        rel_tol=0.5,  # total_loss is of the last update, sharpness of the last SAM step
        abs_tol=1e-3,
    )
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed",
    )
    events = accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "train/sharpness" in events.Tags()["scalars"]


def test_resume_continues_with_the_saved_optimizer_state(tree, sam_run):
    workdir, _ = sam_run
    checkpoint = _run_dir(workdir, "sam") / "models" / "checkpoint.pt"
    first = torch.load(checkpoint, weights_only=False)
    assert first["optim"]["sam"]["step_calls"] == SEED_UPDATES
    saved_adam_step = float(first["optim"]["base"]["state"][0]["step"])
    assert saved_adam_step == SEED_UPDATES

    proc = run_train(
        tree,
        workdir,
        *QUICK,
        f"steps={500 + MORE_STEPS}",
        "optimizer=SAM",
        "sam_rho=0.05",
        "sam_every=2",
        "exp_name=sam",
        "resume=true",
        f"checkpoint={checkpoint}",
    )
    assert f"at step {first['step']}" in proc.stdout
    assert "Pretraining agent on seed data" not in proc.stdout  # no second seed phase
    second = torch.load(checkpoint, weights_only=False)
    # One update per env step after the resumed one: the counters continue, not restart.
    assert second["step"] == first["step"] + MORE_STEPS
    assert second["optim"]["sam"]["step_calls"] == SEED_UPDATES + MORE_STEPS
    assert float(second["optim"]["base"]["state"][0]["step"]) == saved_adam_step + MORE_STEPS
    assert second["num_eps"] == first["num_eps"]


def test_muon_run_completes(tree, tmp_path):
    proc = run_train(tree, tmp_path, *QUICK, "steps=500", "optimizer=muon", "exp_name=muon")
    assert "Optimizers: world model: Muon + Adam; policy: Adam" in proc.stdout
    assert "Training completed successfully" in proc.stdout
    last = _rows(_run_dir(tmp_path, "muon"))[-1]
    assert math.isfinite(float(last["total_loss"]))
    assert "sharpness" not in last
