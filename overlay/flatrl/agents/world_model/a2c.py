"""A2C with GAE (or REINFORCE with a baseline) on world-model rollouts: advantages, the
combined loss and one update.

Loss: L = L_policy + value_coef * L_value + L_vision
          + memory_coef * (L_memory + L_reward) - entropy_coef * H
with L_memory = MSE(predict_next(z_t, a_t, h_t), sg(z_{t+1})) - the target is the encoded next
observation with a stop-gradient, so the encoder cannot shrink the loss by collapsing z.

A2C (`reinforce=False`): GAE advantages with bootstrapped values, and the rollout may be reused
for several passes with PPO's ratio clip. REINFORCE (`reinforce=True`): Monte-Carlo returns with
no bootstrapping at all, advantage = return - V(o_t), policy loss -(log pi(a|s) * A), one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from flatrl.optim import SAM, sam_step, unperturbed
from flatrl.runtime import TorchRNG

from .config import A2C_DEFAULTS, REINFORCE_SETTINGS, OptimConfig, UpdateConfig
from .rollout import Rollout
from .world_model import WorldModel


@dataclass
class A2CConfig(UpdateConfig):
    """The update as `a2c_update` runs it: the CLI's update section (`config.UpdateConfig`, where
    every field and its default is declared) with the algorithm's choices filled in, plus the
    clipping norm and whether this is REINFORCE."""

    gae_lambda: float = A2C_DEFAULTS["gae_lambda"]
    update_epochs: int = A2C_DEFAULTS["update_epochs"]
    clip_range: float = A2C_DEFAULTS["clip_range"]
    max_grad_norm: float = OptimConfig.max_grad_norm
    normalize_advantages: bool = True
    reinforce: bool = False

    def __post_init__(self) -> None:
        if self.reinforce and (self.update_epochs != 1 or self.clip_range != 0):
            raise ValueError(
                "REINFORCE takes one pass per rollout and no clip: update_epochs=1 and "
                f"clip_range=0, got {self.update_epochs} and {self.clip_range}; use A2C "
                "(reinforce=False, --use-a2c) to reuse rollouts."
            )

    @classmethod
    def from_options(cls, update: UpdateConfig, use_a2c: bool, max_grad_norm: float) -> A2CConfig:
        """Fields left None take the algorithm's setting: A2C's defaults with --use-a2c, else
        REINFORCE's (Monte-Carlo returns, one pass, no clip; config.validate refuses flags
        asking for more)."""
        chosen = A2C_DEFAULTS if use_a2c else REINFORCE_SETTINGS
        values = {f.name: getattr(update, f.name) for f in fields(UpdateConfig)}
        values |= {name: v for name, v in chosen.items() if values[name] is None}
        return cls(**values, max_grad_norm=max_grad_norm, reinforce=not use_a2c)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    valid: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (T, N) tensors; returns (advantages, returns).

    delta_t = r_t + gamma * (1 - terminated_t) * V(o_{t+1}) - V(o_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
    A time-limit end (done but not terminated) still bootstraps from the final observation but
    does not chain into the next episode; invalid (autoreset) slots get A = 0. returns = A + V.
    """
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * (~terminated[t]).float() * next_values[t] - values[t]
        last = delta + gamma * lam * (~dones[t]).float() * last
        last = last * valid[t].float()
        adv[t] = last
    return adv, adv + values


def monte_carlo_returns(
    rewards: torch.Tensor, dones: torch.Tensor, valid: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Discounted sums of the rewards actually received, over (T, N) tensors; no bootstrapping.

    G_t = r_t + gamma * (1 - done_t) * G_{t+1}, with G = 0 after the rollout's last step: an
    episode still running when the rollout ends (or cut by a time limit) counts only the rewards
    seen. Invalid (autoreset) slots get G = 0.
    """
    out = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        last = (rewards[t] + gamma * (~dones[t]).float() * last) * valid[t].float()
        out[t] = last
    return out


@torch.no_grad()
def encode_rollout(model: WorldModel, rollout: Rollout, chunk: int = 512):
    """z and memory tokens for every slot, without gradients: (S, N, z), (S, N, d)."""
    obs = rollout.obs.flatten(0, 1)
    zs = [model.vision(obs[i : i + chunk], with_loss=False).z for i in range(0, len(obs), chunk)]
    z = torch.cat(zs)
    tokens = model.memory.token(z, rollout.prev_action.flatten(0, 1))
    s, n = rollout.obs.shape[:2]
    return z.view(s, n, -1), tokens.view(s, n, -1)


def history(tokens: torch.Tensor, slot: torch.Tensor, env: torch.Tensor, c: int) -> torch.Tensor:
    """The c detached tokens before each (slot, env), oldest first: (B, c, d)."""
    offs = torch.arange(-c, 0, device=tokens.device)
    return tokens[slot[:, None] + offs[None, :], env[:, None]].detach()


@torch.no_grad()
def rollout_values(
    model: WorldModel, rollout: Rollout, z_all, tok_all
) -> tuple[torch.Tensor, torch.Tensor]:
    """V at slots C .. C+T (T+1 rows) for GAE, and log pi(a_t) of the behaviour (T rows),
    with the same windows as acting used."""
    c, n = rollout.context, rollout.obs.shape[1]
    t = rollout.actions.shape[0]
    slot = (torch.arange(t + 1, device=z_all.device) + c).repeat_interleave(n)
    env = torch.arange(n, device=z_all.device).repeat(t + 1)
    h = model.memory.hidden(
        history(tok_all, slot, env, c), tok_all[slot, env], rollout.hist_len[slot, env]
    )
    z = z_all[slot, env]
    values = model.controller.value(z, h).view(t + 1, n)
    k = t * n  # the first T rows of slots are the acted ones
    logp, _, _ = model.controller.evaluate(
        z[:k], h[:k], rollout.actions.flatten(0, 1), rollout.plans.flatten(0, 1)
    )
    return values, logp.view(t, n)


def minibatch_loss(
    model: WorldModel,
    rollout: Rollout,
    t: torch.Tensor,
    env: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    old_logp: torch.Tensor,
    z_all: torch.Tensor,
    tok_all: torch.Tensor,
    cfg: A2CConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full loss on transitions (t, env); gradients reach every part of the model."""
    c = rollout.context
    slot = t + c
    vis = model.vision(rollout.obs[slot, env])
    token = model.memory.token(vis.z, rollout.prev_action[slot, env])
    h = model.memory.hidden(history(tok_all, slot, env, c), token, rollout.hist_len[slot, env])
    action = rollout.actions[t, env]
    logp, entropy, value = model.controller.evaluate(vis.z, h, action, rollout.plans[t, env])
    a_in = model.controller.action_input(action)
    z_pred = model.memory.predict_next(vis.z, a_in, h)
    memory_loss = F.mse_loss(z_pred, z_all[slot + 1, env].detach())
    reward_loss = F.mse_loss(model.reward_predictor(vis.z, h, a_in), rollout.scaled_rewards[t, env])
    adv, ret = advantages[t, env], returns[t, env]
    # ratio = 1 on the first step after a rollout, where this is exactly A2C's -(log pi * A)
    # gradient; later minibatch steps on the same rollout are kept near the behaviour policy by
    # PPO's clip (Schulman et al., 2017), which is what makes reusing a rollout safe.
    ratio = (logp - old_logp[t, env]).exp()
    if cfg.reinforce:
        policy_loss = -(logp * adv).mean()
    elif cfg.clip_range > 0:
        clipped = ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
        policy_loss = -torch.min(ratio * adv, clipped * adv).mean()
    else:
        policy_loss = -(ratio * adv).mean()
    value_loss = F.mse_loss(value, ret)
    entropy_mean = entropy.mean()
    loss = (
        policy_loss
        + cfg.value_coef * value_loss
        + vis.loss
        + cfg.memory_coef * (memory_loss + reward_loss)
        - cfg.entropy_coef * entropy_mean
    )
    parts = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "memory_loss": memory_loss,
        "reward_loss": reward_loss,
        "vision_loss": vis.loss,
        "entropy": entropy_mean,
        "total_loss": loss,
    }
    return loss, parts


def module_grad_norms(model: WorldModel) -> dict[str, float]:
    """Gradient norm per part (before clipping) for the gradients/* curves."""
    out = {}
    total = 0.0
    for name in ("vision", "memory", "controller", "reward_predictor"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        norm = (
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            if grads
            else 0.0
        )
        out[name] = norm
        total += norm**2
    out["total"] = total**0.5
    return out


def advantages_and_returns(
    rollout: Rollout, values: torch.Tensor, cfg: A2CConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """A2C: GAE over V at slots C..C+T; REINFORCE: Monte-Carlo returns minus the baseline."""
    if cfg.reinforce:
        returns = monte_carlo_returns(
            rollout.scaled_rewards, rollout.dones, rollout.valid, cfg.gamma
        )
        return (returns - values[:-1]) * rollout.valid.float(), returns
    return compute_gae(
        rollout.scaled_rewards,
        values[:-1],
        values[1:],
        rollout.terminated,
        rollout.dones,
        rollout.valid,
        cfg.gamma,
        cfg.gae_lambda,
    )


def a2c_update(
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    cfg: A2CConfig,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Advantages on the rollout, then `update_epochs` passes of `num_minibatches` gradient
    steps over its valid transitions (1 x 1 with clip_range 0 is plain A2C).

    With a `flatrl.optim.SAM` optimizer each step goes through `flatrl.optim.sam_step`: the
    second pass recomputes the loss on the same minibatch at the perturbed weights with the
    first pass's random draws, and SAM clips the final gradient itself. With Adam the gradient
    is clipped here, so both apply the same clipped update when rho = 0.
    With Momentum-SAM (`--sam-variant msam`) the minibatch passes run at its perturbed weights
    w~ and everything computed once per rollout (old log-probs, values, targets) at w.
    """
    # The behaviour policy's log-probs, the values GAE bootstraps from and the (stop-gradient)
    # memory targets and history tokens are those of the trained weights w, as with SAM; only
    # the minibatch passes below run at Momentum-SAM's perturbed w~.
    with unperturbed(optimizer):
        z_all, tok_all = encode_rollout(model, rollout)
        values, old_logp = rollout_values(model, rollout, z_all, tok_all)
    adv, returns = advantages_and_returns(rollout, values, cfg)
    t_idx, e_idx = rollout.valid.nonzero(as_tuple=True)
    if cfg.normalize_advantages and t_idx.numel() > 1:
        sel = adv[t_idx, e_idx]
        adv = (adv - sel.mean()) / (sel.std() + 1e-8)
    sums: dict[str, float] = {}
    grads: dict[str, float] = {}
    sharp: list[float] = []
    chunks = [
        mb
        for _ in range(cfg.update_epochs)
        for mb in torch.randperm(t_idx.numel(), generator=generator)
        .to(t_idx.device)
        .chunk(max(1, cfg.num_minibatches))
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    for mb in chunks:
        t, e = t_idx[mb], e_idx[mb]

        def compute(
            t: torch.Tensor = t, e: torch.Tensor = e
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return minibatch_loss(model, rollout, t, e, adv, returns, old_logp, z_all, tok_all, cfg)

        rng = TorchRNG(device)  # before the first pass, so SAM's second pass replays its draws
        optimizer.zero_grad(set_to_none=True)
        loss, parts = compute()
        loss.backward()
        for k, v in module_grad_norms(model).items():
            grads[k] = grads.get(k, 0.0) + v / len(chunks)
        if not isinstance(optimizer, SAM):
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        sam_step(optimizer, loss, lambda c=compute: c()[0], rng=rng, modules=[model])
        if isinstance(optimizer, SAM) and optimizer.last_sharpness is not None:
            sharp.append(optimizer.last_sharpness)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(chunks)
    metrics = dict(sums)
    metrics.update({f"grad/{k}": v for k, v in grads.items()})
    if sharp:
        metrics["sharpness"] = sum(sharp) / len(sharp)
        metrics["sharpness_max_abs"] = max(abs(x) for x in sharp)
    valid = rollout.valid
    metrics["explained_variance"] = _explained_variance(values[:-1][valid], returns[valid])
    return metrics


def _explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var()
    return float(1 - (target - pred).var() / var) if var > 0 else 0.0
