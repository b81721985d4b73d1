"""Momentum-SAM in the world-model agent: everything but the minibatch passes sees w.

With ``--sam-variant msam`` the parameters hold the perturbed ``w~`` between updates. Acting
(rollouts), the final evaluation, the per-rollout quantities of the update (behaviour
log-probs, values, stop-gradient targets) and the checkpoint's weights must be those of the
trained weights ``w``; a resumed run still equals the uninterrupted one, and a checkpoint of
another variant is refused.
"""

from __future__ import annotations

import copy

import pytest
import torch
from flatrl.agents.world_model import a2c, checkpoint
from flatrl.agents.world_model import train as train_mod
from flatrl.agents.world_model.a2c import (
    A2CConfig,
    _explained_variance,
    a2c_update,
    advantages_and_returns,
    encode_rollout,
    rollout_values,
)
from flatrl.agents.world_model.cli import parse_config
from flatrl.agents.world_model.envs import make_vector_env
from flatrl.agents.world_model.rollout import RolloutCollector
from flatrl.agents.world_model.train import build_optimizer, model_config, train
from flatrl.agents.world_model.world_model import WorldModel
from flatrl.optim import MomentumSAM

MSAM = ["--use-improved-controller", "--use-a2c", "--optimizer", "sam", "--sam-variant", "msam"]
MSAM += ["--sam-rho", "0.5", "--sam-scope", "all"]


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def _at_w(model: torch.nn.Module, optimizer: MomentumSAM) -> dict[str, torch.Tensor]:
    with optimizer.unperturbed():
        return _params(model)


def test_rollouts_and_evaluation_act_at_w(tiny_cartpole, tmp_path, monkeypatch):
    seen: dict[str, list] = {"collect": [], "evaluate": []}
    built: list[tuple[torch.nn.Module, MomentumSAM]] = []

    def build(model, cfg):
        built.append((model, build_optimizer(model, cfg)))
        return built[-1][1]

    class Recording(RolloutCollector):
        def collect(self, *args, **kwargs):
            seen["collect"].append((_params(self.model), _at_w(*built[0])))
            return super().collect(*args, **kwargs)

    def evaluate(model, *args, **kwargs):
        seen["evaluate"].append((_params(model), _at_w(*built[0])))
        return [0.0]

    monkeypatch.setattr(train_mod, "build_optimizer", build)
    monkeypatch.setattr(train_mod, "RolloutCollector", Recording)
    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    argv = tiny_cartpole(tmp_path, tmp_path / "runs", *MSAM, "--max-epoch", "3")
    train(parse_config([*argv, "--eval-episodes", "1"]))
    ((model, opt),) = built
    assert isinstance(opt, MomentumSAM) and opt.perturbed
    assert _differ(_params(model), _at_w(model, opt))  # w~ != w between updates
    assert len(seen["collect"]) == 3 and len(seen["evaluate"]) == 1
    for acted, w in seen["collect"] + seen["evaluate"]:
        assert not _differ(acted, w)


def _setup(tmp_path, *extra: str):
    cfg = parse_config(
        ["--env-name", "CartPole-v1", *MSAM, "--n-steps", "8", "--env-batch-number", "2"]
        + ["--z-dim", "8", "--memory-window", "2", "--memory-layers", "1"]
        + ["--planning-horizon", "0", "--device", "cpu", "--no-progress"]
        + ["--save-path", str(tmp_path) + "/", *extra]
    )
    torch.manual_seed(0)
    model = WorldModel(cfg.spec, model_config(cfg))
    opt = build_optimizer(model, cfg)
    envs = make_vector_env("CartPole-v1", 2, 0)
    collector = RolloutCollector(envs, model, 8, torch.device("cpu"), 0, 0.99)
    return cfg, model, opt, collector


def test_update_takes_old_log_probs_values_and_targets_at_w(tmp_path):
    cfg, model, opt, collector = _setup(tmp_path)
    hp = train_mod.a2c_config(cfg)
    for _ in range(2):  # the 2nd update has a momentum: the parameters end perturbed
        with opt.unperturbed():
            rollout = collector.collect()
        a2c_update(model, opt, rollout, hp)
    assert opt.perturbed
    with opt.unperturbed():
        rollout = collector.collect()
        at_w = copy.deepcopy(model)  # the trained weights w, as a separate model
    assert _differ(_params(model), _params(at_w))
    z, tok = encode_rollout(at_w, rollout)
    values, _ = rollout_values(at_w, rollout, z, tok)
    _, returns = advantages_and_returns(rollout, values, hp)
    valid = rollout.valid
    expected = _explained_variance(values[:-1][valid], returns[valid])
    metrics = a2c_update(model, opt, rollout, hp)
    assert metrics["explained_variance"] == expected  # values and GAE targets of w, not w~


def test_update_passes_w_tilde_to_the_minibatch_loss_and_w_to_old_log_probs(tmp_path, monkeypatch):
    cfg, model, opt, collector = _setup(tmp_path)
    hp = A2CConfig.from_options(cfg.update, True, cfg.optim.max_grad_norm)
    for _ in range(2):
        with opt.unperturbed():
            rollout = collector.collect()
        a2c_update(model, opt, rollout, hp)
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_values, real_loss = a2c.rollout_values, a2c.minibatch_loss

    def values(m, *args):
        seen.setdefault("values", _params(m))
        return real_values(m, *args)

    def loss(m, *args):
        seen.setdefault("loss", _params(m))
        return real_loss(m, *args)

    monkeypatch.setattr(a2c, "rollout_values", values)
    monkeypatch.setattr(a2c, "minibatch_loss", loss)
    w, w_tilde = _at_w(model, opt), _params(model)
    a2c_update(model, opt, rollout, hp)
    assert not _differ(seen["values"], w)
    assert not _differ(seen["loss"], w_tilde)  # Momentum-SAM's gradient is taken at w~


def test_checkpoint_holds_w_and_resumes_exactly(tiny_cartpole, tmp_path):
    def argv(folder: str, epochs: int, *extra: str) -> list[str]:
        run = tiny_cartpole(tmp_path / folder, tmp_path / "r", *MSAM, *extra)
        return [*run, "--max-epoch", str(epochs)]

    whole = train(parse_config(argv("a", 4)))
    first = train(parse_config(argv("b", 2)))
    state = checkpoint.load(first.last_checkpoint, torch.device("cpu"))
    saved_w = state["optimizer"]["sam"]["msam_w"]  # Momentum-SAM's own copy of w (by index)
    assert saved_w, "the run ended perturbed"
    cfg = parse_config(argv("c", 1))
    names = [n for n, _ in WorldModel(cfg.spec, model_config(cfg)).named_parameters()]
    for i, value in saved_w.items():
        assert torch.equal(state["model"][names[int(i)]], value), names[int(i)]
    second = train(parse_config(argv("b", 4, "--resume")))
    assert first.history + second.history == whole.history  # bitwise
    a = checkpoint.load(whole.last_checkpoint, torch.device("cpu"))
    b = checkpoint.load(second.last_checkpoint, torch.device("cpu"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_resume_with_another_variant_is_refused(tiny_cartpole, tmp_path):
    argv = tiny_cartpole(tmp_path, tmp_path / "r", *MSAM, "--max-epoch", "1")
    path = train(parse_config(argv)).last_checkpoint
    other = [a if a != "msam" else "sam" for a in argv]
    with pytest.raises(ValueError, match="--sam-variant msam, this one sam"):
        train(parse_config([*other, "--max-epoch", "2", "--resume", path]))
