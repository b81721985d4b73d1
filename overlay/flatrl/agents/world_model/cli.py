"""Command line of the world-model agent, generated from the config sections in config.py: one
flag per field (`--field-name`, or `--no-field-name` for a bool that defaults to True), with the
field's default, help and choices. Every option is validated (config.validate) before anything
is built."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence
from dataclasses import Field, fields
from typing import Any

from .config import SECTIONS, TrainConfig, flag, validate

DESCRIPTION = (
    "World-model agent: VQ-VAE + temporal transformer + planning controller, trained with "
    "A2C/GAE (--use-a2c) or REINFORCE with a value baseline. One epoch = one rollout of "
    "n_steps x n_envs env steps, then --update-epochs passes over it in --num-minibatches "
    "gradient steps each."
)


def option_type(cls: type, f: Field) -> type:
    """int, float or str: the annotation with `| None` taken off."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _add_option(group: argparse._ArgumentGroup, cls: type, f: Field) -> None:
    meta = f.metadata
    kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
    if isinstance(f.default, bool):
        kwargs["action"] = "store_false" if f.default else "store_true"
    else:
        kwargs.update(default=f.default, type=option_type(cls, f))
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if meta["const"] is not None:
            kwargs.update(nargs="?", const=meta["const"])
    group.add_argument(flag(f), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """One argument group per config section, one flag per field."""
    parser = argparse.ArgumentParser(
        prog="python -m flatrl.agents.world_model", description=DESCRIPTION
    )
    for cls in SECTIONS.values():
        group = parser.add_argument_group((cls.__doc__ or cls.__name__).strip())
        for f in fields(cls):
            _add_option(group, cls, f)
    return parser


def config_from_argv(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse without validating (validate() checks files and devices, so it runs separately)."""
    ns = vars(build_parser().parse_args(argv))
    sections = {
        name: cls(**{f.name: ns[f.name] for f in fields(cls)}) for name, cls in SECTIONS.items()
    }
    return TrainConfig(**sections)


def to_argv(cfg: TrainConfig) -> list[str]:
    """The flags that rebuild cfg (only those away from their defaults):
    `config_from_argv(to_argv(cfg)) == cfg` for every config the command line can express."""
    argv: list[str] = []
    for section, f in cfg.options():
        value = getattr(section, f.name)
        if value == f.default:
            continue
        if isinstance(f.default, bool) or (value is not None and value == f.metadata["const"]):
            argv.append(flag(f))
        else:
            argv += [flag(f), str(value)]
    return argv


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse and validate; bad input raises ValueError before anything is built."""
    return validate(config_from_argv(argv))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if cfg.pretraining:
        from .pretrain import pretrain

        pretrain(cfg)
    else:
        from .train import train

        train(cfg)
    return 0
