"""Short CPU runs of the patched train.py: SAM and Muon complete, log sharpness, and resume exactly.

The resume law: a run of 2N steps and a run of N steps plus a resume for N more produce the same
train.csv and eval.csv rows (timing columns aside) and the same final agent. N = one episode
(500 steps); the replay buffer is smaller than an episode, so it has wrapped by the checkpoint.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from tdmpc2_support import QUICK, run_probe, run_train

pytestmark = [pytest.mark.tdmpc2, pytest.mark.slow]
EPISODE = 500  # cartpole-swingup steps per episode
TIMING = ("elapsed_time", "steps_per_second")


def _rows(run_dir: Path, name: str = "train.csv") -> list[dict[str, str]]:
    with (run_dir / name).open(newline="") as f:
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


def test_run_ends_with_a_summary_of_what_it_wrote(sam_run):
    workdir, stdout = sam_run
    run_dir = _run_dir(workdir, "sam")
    summary = stdout[stdout.index("\nSummary\n") :]
    last_eval = _rows(run_dir, "eval.csv")[-1]
    reward, step = float(last_eval["episode_reward"]), int(float(last_eval["step"]))
    assert f"final eval:  episode_reward {reward:.1f} at step {step:,}" in summary
    last_train = _rows(run_dir)[-1]
    assert f"sharpness {float(last_train['sharpness']):.4g}" in summary
    assert f"logs:        {run_dir} (eval.csv, train.csv)" in summary
    assert f"models:      {run_dir / 'models'} (final.pt)" in summary
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in summary
    assert "continue:" not in summary  # no checkpoint was written (checkpoint_freq=0)


def test_default_run_writes_no_checkpoint_or_buffer_dump(sam_run):
    workdir, _ = sam_run
    models = _run_dir(workdir, "sam") / "models"
    # Upstream's final.pt (the model weights, save_agent=true) only: no checkpoint, no buffer.
    assert sorted(p.name for p in models.iterdir()) == ["final.pt"]


RESUME = (
    *(a for a in QUICK if not a.startswith("eval_freq=")),
    f"eval_freq={EPISODE}",
    "buffer_size=300",  # < one episode (501 entries): wrapped at the checkpoint
    f"checkpoint_freq={EPISODE}",
    "optimizer=SAM",
    "sam_every=2",  # SAM's every-k counter and last sharpness must carry over too
)


@pytest.fixture(scope="module")
def resumed(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("resume")
    run_train(tree, workdir, *RESUME, f"steps={2 * EPISODE}", "exp_name=full")
    run_train(tree, workdir, *RESUME, f"steps={EPISODE}", "exp_name=split")
    checkpoint = _run_dir(workdir, "split") / "models" / "checkpoint.pt"
    first = torch.load(checkpoint, weights_only=False)
    proc = run_train(
        tree,
        workdir,
        *RESUME,
        f"steps={2 * EPISODE}",
        "exp_name=split",
        "resume=true",
        f"checkpoint={checkpoint}",
    )
    return {"workdir": workdir, "first": first, "stdout": proc.stdout}


def _without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_resumed_run_reproduces_the_uninterrupted_run(resumed):
    full, split = (_run_dir(resumed["workdir"], exp) for exp in ("full", "split"))
    assert f"at step {EPISODE}" in resumed["stdout"]
    train_full = _without_timing(_rows(full))
    assert len(train_full) == 3  # episode ends at 500 and 1000, and the last update
    assert _without_timing(_rows(split)) == train_full
    evals = _rows(full, "eval.csv")
    # eval.csv keeps the first leg's history, and the resumed step is not evaluated twice.
    assert [float(r["step"]) for r in evals] == [0, EPISODE, 2 * EPISODE]
    assert _rows(split, "eval.csv") == evals
    ours, theirs = (
        torch.load(d / "models" / "checkpoint.pt", weights_only=False)["agent"]
        for d in (split, full)
    )
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])
    assert ours["optim"]["sam"] == theirs["optim"]["sam"]


def test_summary_says_how_to_continue_from_the_checkpoint(resumed):
    checkpoint = _run_dir(resumed["workdir"], "split") / "models" / "checkpoint.pt"
    (line,) = [ln for ln in resumed["stdout"].splitlines() if ln.startswith("  continue:")]
    # the resumed run's own overrides, its checkpoint and resume once each
    assert line.count("checkpoint=") == 1 and line.count("resume=true") == 1
    assert f"checkpoint={checkpoint} resume=true" in line
    assert f"train.py {' '.join(RESUME)} steps={2 * EPISODE} exp_name=split" in line


def test_checkpoint_is_one_file_with_buffer_random_states_and_logs(resumed):
    first = resumed["first"]
    models = _run_dir(resumed["workdir"], "split") / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint.pt", "final.pt"]
    assert first["step"] == EPISODE
    assert len(first["buffer"]["data"]) == 300 and first["buffer"]["num_eps"] == 1
    assert {"python", "numpy", "torch"} <= first["rng"].keys()
    assert any(path.endswith("_task._random") for path in first["env_rng"])  # dm_control's
    assert any(path.endswith("action_space._np_random") for path in first["env_rng"])
    assert set(first["logs"]["files"]) == {"eval.csv", "train.csv"}


def test_muon_run_completes(tree, tmp_path):
    proc = run_train(tree, tmp_path, *QUICK, "steps=500", "optimizer=muon", "exp_name=muon")
    assert (
        "Optimizers: world model: Muon (1 stacked ensemble weight) + Adam; policy: Adam"
    ) in proc.stdout
    assert "Training completed successfully" in proc.stdout
    last = _rows(_run_dir(tmp_path, "muon"))[-1]
    assert math.isfinite(float(last["total_loss"]))
    assert "sharpness" not in last


def test_wrapped_buffer_restores_in_place_or_oldest_first(tree):
    (result,) = run_probe(tree, [{"mode": "buffer"}])
    # Episodes i = 0..3 of 4 entries (reward 10i + t) into 10 slots: the last 10 are kept.
    chronological = [12.0, 13.0, 20.0, 21.0, 22.0, 23.0, 30.0, 31.0, 32.0, 33.0]
    assert sorted(result["saved"]) == chronological and result["saved"] != chronological
    assert result["same"] == result["saved"] and result["same_cursor"] == result["cursor"]
    assert result["num_eps"] == [4, 4, 4]
    assert result["larger"] == chronological  # oldest first
    assert sorted(result["smaller"]) == chronological[2:]  # the newest 8
    # The next episode evicts the oldest entries, whatever the capacity.
    assert sorted(result["same_after_add"]) == chronological[4:] + [40.0, 41.0, 42.0, 43.0]
    assert sorted(result["smaller_after_add"]) == [30.0, 31.0, 32.0, 33.0, 40.0, 41.0, 42.0, 43.0]
