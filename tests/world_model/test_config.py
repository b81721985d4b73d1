"""The command line is generated from the nested config sections: every field has its flag and
help, the flags, defaults and meanings of the hand-written CLI are kept, a config survives
config -> argv -> config, and the old flat spelling `cfg.max_grad_norm` still reads."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from flatrl.agents.world_model.a2c import A2CConfig
from flatrl.agents.world_model.cli import (
    build_parser,
    config_from_argv,
    option_type,
    parse_config,
    to_argv,
)
from flatrl.agents.world_model.config import FIELD_SECTION, SECTIONS, TrainConfig, flag

# flag -> (dest, default) of the hand-written argparse CLI this replaces; --resume also took an
# optional value (const "auto"), and the bool flags were store_true / store_false as named
OLD_FLAGS = {
    "--env-name": ("env_name", "CarRacing-v3"),
    "--max-epoch": ("max_epoch", 200),
    "--learning-rate": ("learning_rate", 1e-4),
    "--env-batch-number": ("env_batch_number", "auto"),
    "--pretrain-vision": ("pretrain_vision", False),
    "--pretrain-memory": ("pretrain_memory", False),
    "--load-path": ("load_path", ""),
    "--save-path": ("save_path", "./saved_models/"),
    "--use-improved-controller": ("use_improved_controller", False),
    "--use-a2c": ("use_a2c", False),
    "--planning-horizon": ("planning_horizon", 5),
    "--n-steps": ("n_steps", 128),
    "--gamma": ("gamma", 0.99),
    "--gae-lambda": ("gae_lambda", None),
    "--value-coef": ("value_coef", 0.5),
    "--entropy-coef": ("entropy_coef", 0.01),
    "--memory-coef": ("memory_coef", 0.1),
    "--max-grad-norm": ("max_grad_norm", 0.5),
    "--num-minibatches": ("num_minibatches", 4),
    "--update-epochs": ("update_epochs", None),
    "--clip-range": ("clip_range", None),
    "--planning-start-epoch": ("planning_start_epoch", 100),
    "--plan-weight": ("plan_weight", 0.3),
    "--memory-window": ("memory_window", None),
    "--memory-layers": ("memory_layers", None),
    "--z-dim": ("z_dim", None),
    "--no-normalize-rewards": ("normalize_rewards", True),
    "--optimizer": ("optimizer", "adam"),
    "--sam-rho": ("sam_rho", None),
    "--sam-scope": ("sam_scope", None),
    "--sam-adaptive": ("sam_adaptive", False),
    "--sam-every": ("sam_every", None),
    "--sam-variant": ("sam_variant", None),
    "--sam-looksam-alpha": ("sam_looksam_alpha", None),
    "--sam-aesam-c": ("sam_aesam_c", None),
    "--sam-aesam-decay": ("sam_aesam_decay", None),
    "--seed": ("seed", 0),
    "--device": ("device", "auto"),
    "--resume": ("resume", None),
    "--log-dir": ("log_dir", "runs"),
    "--save-every": ("save_every", 10),
    "--max-env-steps": ("max_env_steps", None),
    "--eval-episodes": ("eval_episodes", 0),
    "--no-progress": ("progress", True),
}


def _options():
    return [(cls, f) for cls in SECTIONS.values() for f in fields(cls)]


def test_generated_cli_keeps_every_flag_default_and_kind():
    actions = {a.option_strings[0]: a for a in build_parser()._actions if a.dest != "help"}
    assert {k: (a.dest, a.default) for k, a in actions.items()} == OLD_FLAGS
    assert (actions["--resume"].nargs, actions["--resume"].const) == ("?", "auto")
    for name, action in actions.items():
        default = OLD_FLAGS[name][1]
        if isinstance(default, bool):  # on/off switches take no value
            assert action.nargs == 0 and action.const is (not default), name
    assert actions["--sam-scope"].choices == (
        "memory",
        "all",
        "vision",
        "controller",
        "world_model",
    )
    cfg = config_from_argv(["--no-normalize-rewards", "--resume", "--sam-adaptive", "--z-dim", "7"])
    assert cfg.env.normalize_rewards is False and cfg.run.resume == "auto"
    assert cfg.optim.sam_adaptive is True and cfg.agent.z_dim == 7
    assert config_from_argv(["--resume", "x.pt"]).run.resume == "x.pt"


def test_help_lists_every_field_with_its_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # one line per option: no wrapping to undo
    text = " ".join(build_parser().format_help().split())
    assert len(_options()) == len(OLD_FLAGS)
    for cls, f in _options():
        assert flag(f) in text, f.name
        assert f.metadata["help"].strip(), f"{cls.__name__}.{f.name} has no help"
        assert " ".join(f.metadata["help"].split()) in text, f.name
    for cls in SECTIONS.values():
        assert cls.__doc__.strip() in text


def _other_value(cls: type, f) -> object:
    """A value of the field's type that is not its default."""
    meta = f.metadata
    if isinstance(f.default, bool):
        return not f.default
    if meta["choices"]:
        return next(c for c in meta["choices"] if c != f.default)
    kind = option_type(cls, f)
    if kind is int:
        return (f.default or 0) + 3
    if kind is float:
        return (f.default or 0.0) + 0.125
    return f"{f.default or 'x'}/other"


def test_config_to_argv_to_config_is_the_identity():
    assert to_argv(TrainConfig()) == [] and config_from_argv([]) == TrainConfig()
    changed = {
        name: cls(**{f.name: _other_value(cls, f) for f in fields(cls)})
        for name, cls in SECTIONS.items()
    }
    cfg = TrainConfig(**changed)
    argv = to_argv(cfg)
    assert len([a for a in argv if a.startswith("--")]) == len(OLD_FLAGS)
    assert config_from_argv(argv) == cfg
    # one field at a time: each flag alone rebuilds its field
    for name, cls in SECTIONS.items():
        for f in fields(cls):
            one = replace(TrainConfig(), **{name: replace(cls(), **{f.name: _other_value(cls, f)})})
            assert to_argv(one)[0] == flag(f)
            assert config_from_argv(to_argv(one)) == one, f.name
    auto = TrainConfig(run=replace(TrainConfig().run, resume="auto"))
    assert to_argv(auto) == ["--resume"] and config_from_argv(["--resume"]) == auto


def test_a_validated_command_round_trips(tiny_cartpole, tmp_path):
    argv = tiny_cartpole(tmp_path, tmp_path / "runs", "--use-a2c", "--optimizer", "sam")
    cfg = parse_config([*argv, "--sam-rho", "0", "--gae-lambda", "0.9", "--learning-rate", "3e-4"])
    again = parse_config(to_argv(cfg))
    assert again == cfg and again.spec == cfg.spec


def test_flat_names_read_the_sections_and_refuse_writes():
    cfg = config_from_argv(["--max-grad-norm", "2", "--env-name", "CartPole-v1"])
    assert cfg.max_grad_norm == cfg.optim.max_grad_norm == 2.0
    assert cfg.env_name == "CartPole-v1"
    for name, section in FIELD_SECTION.items():
        assert getattr(cfg, name) == getattr(getattr(cfg, section), name)
        assert not hasattr(TrainConfig, name), f"{name} is shadowed by a TrainConfig attribute"
    with pytest.raises(AttributeError, match=r"cfg\.optim\.max_grad_norm"):
        cfg.max_grad_norm = 1.0
    with pytest.raises(AttributeError):
        _ = cfg.no_such_option


def test_update_config_is_the_cli_section_with_the_algorithm_filled_in():
    cfg = config_from_argv(["--use-a2c", "--gamma", "0.9", "--clip-range", "0.1"])
    hp = A2CConfig.from_options(cfg.update, True, cfg.optim.max_grad_norm)
    assert (hp.gamma, hp.clip_range, hp.gae_lambda, hp.update_epochs) == (0.9, 0.1, 0.95, 4)
    assert not hp.reinforce and hp.max_grad_norm == 0.5
    rf = A2CConfig.from_options(config_from_argv([]).update, False, 0.5)
    assert (rf.gae_lambda, rf.update_epochs, rf.clip_range, rf.reinforce) == (1.0, 1, 0.0, True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning-rate", "0"], "--learning-rate must be > 0, got 0.0."),
        (["--gamma", "0"], "--gamma must be in (0, 1], got 0.0."),
        (["--use-a2c", "--gae-lambda", "2"], "--gae-lambda must be in [0, 1], got 2.0."),
        (["--use-a2c", "--clip-range", "1"], "--clip-range must be in [0, 1) (0: plain A2C"),
        (["--plan-weight", "2"], "--plan-weight must be in [0, 1], got 2.0."),
        (["--max-env-steps", "0"], "--max-env-steps must be >= 1, got 0."),
        (["--eval-episodes", "-1"], "--eval-episodes must be >= 0, got -1."),
        (["--planning-start-epoch", "-1"], "--planning-start-epoch must be >= 0, got -1."),
        (["--memory-window", "0"], "--memory-window must be >= 1, got 0."),
        (["--max-grad-norm", "0"], "--max-grad-norm must be > 0, got 0.0."),
        (["--optimizer", "sam", "--sam-scope", "all", "--sam-every", "0"], "--sam-every must be"),
    ],
)
def test_range_rules_name_the_flag(flags, message):
    with pytest.raises(ValueError) as err:
        parse_config(["--env-name", "CartPole-v1", "--device", "cpu", *flags])
    assert str(err.value).startswith(message)
