"""Hydra entry point: ``python -m flatrl.agents.sac.train [overrides] [-m]``.

The default config is ``sac_cheetah`` (Muon on actor and critic, cheetah-run), built on
``sac_dmc``, which composes the structured config of :mod:`flatrl.agents.sac.settings` (every
key with its type, default and meaning). Examples::

    python -m flatrl.agents.sac.train method_name=SAC_AdamW \\
        training.actor_optimizer.case=adamw training.critic_optimizer.case=adamw
    python -m flatrl.agents.sac.train -m hydra/launcher=slurm \\
        method_name='SAC_${training.actor_optimizer.case}_${training.critic_optimizer.case}' \\
        training.actor_optimizer.case=adamw,muon training.critic_optimizer.case=adamw,muon

The whole config is type-checked (by OmegaConf, at composition) and validated (by
:class:`~flatrl.agents.sac.settings.Settings`) before anything is built, so a bad value fails in
seconds on the login node rather than hours later on a GPU node.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from flatrl.agents.sac.checkpoint import resolve_paths
from flatrl.agents.sac.env import parse_task
from flatrl.agents.sac.settings import Settings, load_settings

log = logging.getLogger(__name__)


def validate(config: Mapping[str, Any]) -> Settings:
    """All checks that need no environment or network: values, then the task name."""
    settings = load_settings(config)
    parse_task(settings.env.task)
    return settings


def train(config: Mapping[str, Any]) -> dict[str, float]:
    """Validate ``config`` (a plain nested mapping) and run it; returns the final evaluation."""
    from flatrl.agents.sac.trainer import Trainer

    settings = validate(config)
    for note in settings.advisories():
        log.warning(note)
    paths = resolve_paths(settings)
    log.info("run directory %s (replay buffer under %s)", paths.run_dir, paths.replay_root)
    return Trainer(settings, config, paths).run()


@hydra.main(config_path="configs", config_name="sac_cheetah", version_base="1.3")
def main(cfg: DictConfig) -> float:
    config = OmegaConf.to_container(cfg, resolve=True)
    result = train(config)
    log.info("final eval return %.1f ± %.1f", result["eval/return_mean"], result["eval/return_std"])
    # Returned so that optimizing sweepers (e.g. Optuna) can use it as the objective.
    return result["eval/return_mean"]


if __name__ == "__main__":
    main()
