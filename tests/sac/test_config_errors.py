"""A bad config fails with one clear error before anything is built or written."""

from __future__ import annotations

from pathlib import Path

import pytest
from flatrl.agents.sac.settings import ConfigError
from flatrl.agents.sac.train import train, validate

from .conftest import compose_config, tiny_config


@pytest.mark.parametrize(
    "override,message",
    [
        ("training.actor_optimizer.case=sgd", "training.actor_optimizer.case='sgd' is unknown"),
        ("training.critic_optimizer.lr=-0.001", "training.critic_optimizer.lr=-0.001"),
        ("training.critic_optimizer.muon.momentum=1.0", "muon.momentum=1.0 must be in [0, 1)"),
        ("training.actor_optimizer.muon.momentum=-0.1", "muon.momentum=-0.1 must be in [0, 1)"),
        ("training.actor_optimizer.betas=[1.2,0.999]", "betas[0]=1.2 must be in [0, 1)"),
        (
            "training.critic_optimizer.sam.rho=-0.05",
            "training.critic_optimizer.sam.rho must be >= 0, got -0.05",
        ),
        (
            "training.critic_optimizer.sam.rho=0.05 training.critic_optimizer.sam.every_k=0",
            "training.critic_optimizer.sam.every_k must be an integer >= 1",
        ),
        (
            "training.actor_optimizer.betas=[0.9,0.999,0.5]",
            "training.actor_optimizer.betas=[0.9, 0.999, 0.5] must have exactly 2 elements",
        ),
        ("training.alpha_betas=[0.9]", "training.alpha_betas=[0.9] must have exactly 2"),
        ("training.actor_optimizer.sam.rho=0", "SAM is supported on the critic only"),
        ("training.actor_optimizer.sam.rho=0.05", "SAM is supported on the critic only"),
        ("model.norm=batchnorm", "model.norm='batchnorm'"),
        ("env.task=cheetah-fly", "env.task='cheetah-fly' is not a DeepMind Control task"),
        ("env.task=cartpole", "env.task='cartpole' is not a DeepMind Control task"),
        ("training.batch_size=8000", "replay_capacity=5000 is below training.batch_size=8000"),
    ],
)
def test_bad_value_is_one_clear_error_before_training(
    tmp_path: Path, override: str, message: str
) -> None:
    # A short budget: should a check regress, the run ends quickly instead of training 1M steps.
    config = tiny_config(tmp_path, "training.total_env_steps=8", *override.split())
    with pytest.raises(ValueError) as info:
        train(config)
    assert message in str(info.value)
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "rb").exists()


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_defaults_validate_and_cheetah_is_muon_on_both() -> None:
    cheetah = validate(compose_config(config_name="sac_cheetah"))
    assert cheetah.training.actor_optimizer.case == "muon"
    assert cheetah.training.critic_optimizer.case == "muon"
    assert cheetah.env.task == "cheetah-run"
    dmc = validate(compose_config())
    assert not dmc.training.critic_optimizer.sam.enabled
    # null is "SAM off"; 0 is a zero-radius SAM step (the control arm of a rho sweep).
    assert validate(
        compose_config("training.critic_optimizer.sam.rho=0")
    ).training.critic_optimizer.sam.enabled
    assert validate(
        compose_config("training.critic_optimizer.sam.rho=0.05")
    ).training.critic_optimizer.sam.enabled


def test_unknown_key_is_rejected_by_hydra() -> None:
    with pytest.raises(Exception, match="training.actor_optimizer.momentum"):
        compose_config("training.actor_optimizer.momentum=0.9")


def test_adamw_without_weight_decay_is_flagged_as_adam() -> None:
    flagged = validate(
        compose_config("training.critic_optimizer.case=adamw", "training.actor_optimizer.case=adam")
    ).advisories()
    assert len(flagged) == 1
    assert (
        "training.critic_optimizer: case=adamw with weight_decay=0 is Adam's update" in flagged[0]
    )
    assert "training.critic_optimizer.weight_decay" in flagged[0]
    decayed = validate(
        compose_config(
            "training.critic_optimizer.case=adamw",
            "training.critic_optimizer.weight_decay=0.01",
            "training.actor_optimizer.case=muon",
        )
    ).advisories()
    assert decayed == []
