"""Bad input fails early with one clear error; a short run logs, checkpoints and resumes."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from flatrl.agents.world_model import envs as wm_envs
from flatrl.agents.world_model.checkpoint import load
from flatrl.agents.world_model.cli import parse_config
from flatrl.agents.world_model.train import train

CARTPOLE = ["--env-name", "CartPole-v1", "--use-improved-controller", "--use-a2c"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env-name", "NoSuchEnv-v9"], "not a registered gymnasium environment"),
        ([*CARTPOLE, "--sam-rho", "0.1"], "--optimizer sam"),
        ([*CARTPOLE, "--sam-scope", "all"], "--optimizer sam"),
        ([*CARTPOLE, "--sam-adaptive"], "--optimizer sam"),
        ([*CARTPOLE, "--sam-every", "2"], "--optimizer sam"),
        ([*CARTPOLE, "--optimizer", "sam", "--sam-rho", "-1"], "--sam-rho must be >= 0"),
        ([*CARTPOLE, "--optimizer", "sam", "--sam-rho", "nan"], "--sam-rho must be a finite"),
        ([*CARTPOLE, "--optimizer", "sam", "--sam-every", "0"], "--sam-every must be an integer"),
        ([*CARTPOLE, "--device", "tpu"], "--device tpu"),
        ([*CARTPOLE, "--n-steps", "0"], "--n-steps must be >= 1"),
        ([*CARTPOLE, "--env-batch-number", "many"], "--env-batch-number"),
        ([*CARTPOLE, "--planning-horizon", "-1"], "--planning-horizon"),
        (["--env-name", "CartPole-v1", "--pretrain-vision", "--pretrain-memory"], "one after"),
        (["--env-name", "CartPole-v1", "--pretrain-vision", "--use-a2c"], "drop it"),
        ([*CARTPOLE, "--load-path", "/nonexistent/x.pt"], "does not exist"),
        ([*CARTPOLE, "--resume", "/nonexistent/last.pt"], "no checkpoint"),
    ],
)
def test_bad_input_gives_one_clear_error(argv, message):
    with pytest.raises(ValueError, match=message.replace("-", r"\-")):
        parse_config(argv)


@pytest.mark.parametrize("rho", ["0", "1e-9", "0.05"])
def test_sam_settings_reach_the_optimizer(rho):
    """rho = 0 is accepted (a zero-radius SAM step), and all four SAM flags build one SAMConfig."""
    cfg = parse_config(
        [*CARTPOLE, "--optimizer", "sam", "--sam-rho", rho, "--sam-every", "3", "--sam-adaptive"]
    )
    sam = cfg.sam_config()
    assert (sam.rho, sam.every_k, sam.adaptive, sam.scope) == (float(rho), 3, True, "memory")
    assert sam.clip_grad_norm == cfg.max_grad_norm


def test_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="--device cuda"):
        parse_config([*CARTPOLE, "--device", "cuda"])


def test_image_env_without_box2d_names_the_extra(monkeypatch):
    monkeypatch.setattr(wm_envs, "box2d_available", lambda: False)
    with pytest.raises(ValueError, match=r"gymnasium\[box2d\]"):
        parse_config(["--env-name", "CarRacing-v3"])


def test_pretrain_memory_on_images_needs_a_vision_checkpoint():
    pytest.importorskip("Box2D", reason="CarRacing needs Box2D (gymnasium[box2d] / box2d)")
    with pytest.raises(ValueError, match="--pretrain-vision first"):
        parse_config(["--env-name", "CarRacing-v3", "--pretrain-memory"])


def _events(log_dir: str) -> list[str]:
    return glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))


def _tags(log_dir: str) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_short_cartpole_run_logs_checkpoints_and_resumes(tmp_path):
    argv = [
        *CARTPOLE,
        "--max-epoch",
        "2",
        "--n-steps",
        "32",
        "--env-batch-number",
        "4",
        "--planning-horizon",
        "2",
        "--save-every",
        "1",
        "--no-progress",
        "--save-path",
        str(tmp_path / "ckpt") + "/",
        "--log-dir",
        str(tmp_path / "runs"),
    ]
    first = train(parse_config(argv))
    assert first.epochs == 2 and first.env_steps == 2 * 32 * 4
    assert _events(first.log_dir)
    tags = _tags(first.log_dir)
    for tag in (
        "train/mean_episode_reward",
        "train/policy_loss",
        "train/value_loss",
        "train/memory_loss",
        "train/entropy",
        "gradients/memory_norm",
    ):
        assert tag in tags
    state = load(first.last_checkpoint, torch.device("cpu"))
    assert state["epoch"] == 2 and state["env_steps"] == 256
    assert set(state["optimizer"]["state"])  # Adam moments were saved
    tag = "CartPole-v1_improved_a2c_adam_s0"
    assert os.path.isfile(str(tmp_path / "ckpt" / f"best_{tag}.pt"))
    assert first.last_checkpoint == str(tmp_path / "ckpt" / f"last_{tag}.pt")
    weights = {k: v.clone() for k, v in state["model"].items()}

    resumed = train(parse_config([*argv, "--max-epoch", "3", "--resume"]))
    assert resumed.epochs == 3 and resumed.env_steps == 3 * 32 * 4
    assert resumed.log_dir == first.log_dir  # the same TensorBoard run continues
    after = load(resumed.last_checkpoint, torch.device("cpu"))
    assert after["epoch"] == 3
    assert any(not torch.equal(weights[k], after["model"][k]) for k in weights)


def test_sam_on_memory_trains(tmp_path):
    argv = [
        *CARTPOLE,
        "--max-epoch",
        "1",
        "--n-steps",
        "16",
        "--env-batch-number",
        "2",
        "--optimizer",
        "sam",
        "--sam-rho",
        "0.05",
        "--no-progress",
        "--save-path",
        str(tmp_path) + "/",
        "--log-dir",
        str(tmp_path / "runs"),
    ]
    result = train(parse_config(argv))
    assert "train/sharpness" in _tags(result.log_dir)


def test_short_carracing_run_trains_the_image_pipeline(tmp_path):
    pytest.importorskip("Box2D", reason="CarRacing needs Box2D (gymnasium[box2d] / box2d)")
    argv = [
        "--env-name",
        "CarRacing-v3",
        "--use-improved-controller",
        "--use-a2c",
        "--max-epoch",
        "1",
        "--n-steps",
        "4",
        "--env-batch-number",
        "1",
        "--planning-horizon",
        "1",
        "--planning-start-epoch",
        "0",
        "--memory-window",
        "3",
        "--num-minibatches",
        "1",
        "--update-epochs",
        "1",
        "--no-progress",
        "--save-path",
        str(tmp_path) + "/",
        "--log-dir",
        str(tmp_path / "runs"),
    ]
    result = train(parse_config(argv))
    state = load(result.last_checkpoint, torch.device("cpu"))
    assert state["env_steps"] == 4
    tags = _tags(result.log_dir)
    assert {"train/vision_loss", "train/memory_loss", "gradients/vision_norm"} <= tags


def test_env_step_budget_is_a_cap(tmp_path):
    argv = [
        *CARTPOLE,
        "--max-epoch",
        "10",
        "--n-steps",
        "16",
        "--env-batch-number",
        "4",
        "--max-env-steps",
        "100",
        "--no-progress",
        "--planning-horizon",
        "0",
        "--save-path",
        str(tmp_path) + "/",
        "--log-dir",
        str(tmp_path / "runs"),
    ]
    result = train(parse_config(argv))
    assert result.env_steps == 64 and result.epochs == 1  # a 2nd epoch would reach 128 > 100
