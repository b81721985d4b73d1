"""The dataclasses in settings.py are the one source of every key, default, type and meaning."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from flatrl.agents.sac import settings as sac_settings
from flatrl.agents.sac.checkpoint import config_differences
from flatrl.agents.sac.settings import (
    ConfigError,
    Settings,
    key_table,
    load_settings,
    readme_with_table,
    with_defaults,
)
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from .conftest import compose_config


def test_yaml_adds_no_value_to_the_dataclass_defaults() -> None:
    # sac_dmc.yaml only composes the schema: its config is exactly the dataclasses' defaults.
    assert compose_config() == OmegaConf.to_container(OmegaConf.structured(Settings))


def test_readme_key_table_is_the_generated_one() -> None:
    text = sac_settings.README.read_text()
    assert readme_with_table(text) == text, (
        "the README's key table is stale; regenerate it with `python -m flatrl.agents.sac.settings`"
    )


def test_every_key_has_a_meaning_and_appears_in_the_table() -> None:
    table = key_table()
    seen = set()
    for _, cls in sac_settings._blocks(Settings, [""]):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(hints[f.name]):
                assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
                assert f"| `{f.name}` |" in table
                seen.add(f.name)
    assert {"rho", "apply_first_layer", "alpha_betas", "top_k", "threads"} <= seen


@pytest.mark.parametrize(
    "override,key",
    [
        ("training.batch_size=abc", "training.batch_size"),
        (
            "training.critic_optimizer.muon.nesterov=maybe",
            "training.critic_optimizer.muon.nesterov",
        ),
        ("training.critic_optimizer.sam.rho=high", "training.critic_optimizer.sam.rho"),
        ("training.actor_optimizer.betas=[0.9,abc]", "training.actor_optimizer.betas"),
    ],
)
def test_wrong_type_is_rejected_by_omegaconf_at_compose_time(override: str, key: str) -> None:
    # Before any of our code runs: the composed config is typed by the dataclasses.
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(override)
    assert key in f"{info.value} {info.value.__cause__}"


def test_wrong_type_in_a_plain_mapping_is_a_config_error_naming_the_key() -> None:
    config = compose_config()
    config["training"]["eval_episodes"] = "ten"
    with pytest.raises(ConfigError, match="full_key: training.eval_episodes"):
        load_settings(config)
    config = compose_config()
    config["training"]["critic_optimizer"]["lr_typo"] = 1.0
    with pytest.raises(ConfigError, match="training.critic_optimizer.lr_typo"):
        load_settings(config)


def test_direct_construction_validates_and_pairs_are_tuples() -> None:
    with pytest.raises(ConfigError, match="device='tpu' must be one of auto, cpu, cuda"):
        Settings(device="tpu")
    s = load_settings(compose_config("training.alpha_betas=[0.5,0.9]"))
    assert s.training.alpha_betas == (0.5, 0.9)
    assert s.training.critic_optimizer.betas == (0.9, 0.999)


def test_checkpoint_config_of_the_earlier_yaml_resumes_without_spurious_changes() -> None:
    # The YAML before the structured configs gave the actor's sam block only `rho`; checkpoints
    # written then store that config. Filling in the defaults must make it equal today's.
    old = compose_config()
    del old["training"]["actor_optimizer"]["sam"]["adaptive"]
    del old["training"]["actor_optimizer"]["sam"]["every_k"]
    assert config_differences(old, compose_config())  # what the resume warning compared
    assert config_differences(with_defaults(old), with_defaults(compose_config())) == []
    changed = compose_config("training.gamma=0.9")
    assert config_differences(with_defaults(old), with_defaults(changed)) == [
        "training.gamma: 0.99 -> 0.9"
    ]
