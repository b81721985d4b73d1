"""Held-out errors of a TD-MPC2 world model on episodes of another behaviour policy.

All errors are computed on windows of ``H + 1`` observations cut from the held-out episodes
(start every ``stride`` steps; ``action[t+1]``/``reward[t+1]`` follow ``obs[t]``, TD-MPC2's
layout), in evaluation mode, without gradients:

``heldout_consistency``        mean over k = 1..H of the mean squared error between the latent
                               rolled out open-loop, z_k = d(z_{k-1}, a_k) from z_0 = h(o_0),
                               and the encoding h(o_k) (TD-MPC2's consistency target, unweighted)
``heldout_consistency_last``   the same at k = H only (compounding error of the longest rollout)
``heldout_reward_mae``         mean |R(z_k, a_k) - r_k| over k = 0..H-1 on the rolled-out latents
                               (what planning uses), in reward units
``heldout_value_td_mae``       mean |Q(h(o_t), a_t) - y_t| with the TD target of TD-MPC2 on the
                               held-out data, y_t = r_t + gamma * min_i Qtarget_i(h(o_{t+1}),
                               mu(h(o_{t+1}))), mu the policy's mean action; Q averaged over the
                               ensemble (TD targets, not Monte-Carlo returns: Q estimates the
                               learned policy's value, and the behaviour policy's returns are
                               another policy's)

Latents are SimNorm-normalised (each group of ``simnorm_dim`` sums to 1), so latent errors have
the same scale in every run and are comparable across arms.

``measured_sharpness`` is one sharpness for every arm, Adam included: L(w + e) - L(w) of
TD-MPC2's world-model loss on a fixed training batch with e = rho_m g / ||g|| over all
world-model parameters (rho_m = ``sharpness_rho``, 0.05 by default), weights, gradients and
random state put back afterwards. SAM's own ``sharpness`` (logged per update) depends on each
arm's rho and scope and is not comparable across arms.

Both are taken at the trained weights ``w``: under Momentum-SAM (``sam_variant=msam``), which
holds the perturbed ``w~`` between updates, inside :func:`flatrl.optim.unperturbed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from flatrl.optim import unperturbed
from flatrl.runtime import rng_state, set_rng_state


class ModelView(Protocol):
    """What the held-out errors need from a world model (decoded to real values)."""

    def encode(self, obs: torch.Tensor) -> torch.Tensor: ...
    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor: ...
    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor: ...
    def q(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor: ...
    def target_value(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Windows:
    """``obs [H+1, N, D]``, ``action [H, N, A]``, ``reward [H, N]`` (time first, as TD-MPC2)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor


def windows(data: dict[str, Any], horizon: int, stride: int | None = None) -> Windows:
    """Cut every episode of ``data`` into windows of ``horizon + 1`` observations."""
    obs, action, reward = data["obs"], data["action"], data["reward"]
    length = obs.shape[1] - 1
    if horizon < 1 or horizon > length:
        raise ValueError(
            f"eval_horizon must be in 1..{length} (the episode length), got {horizon}."
        )
    starts = range(0, length - horizon + 1, stride or horizon)
    o = torch.cat([obs[:, s : s + horizon + 1] for s in starts])  # [N, H+1, D]
    a = torch.cat([action[:, s + 1 : s + horizon + 1] for s in starts])
    r = torch.cat([reward[:, s + 1 : s + horizon + 1] for s in starts])
    return Windows(o.transpose(0, 1), a.transpose(0, 1), r.transpose(0, 1))


@torch.no_grad()
def heldout_errors(view: ModelView, w: Windows, discount: float) -> dict[str, float]:
    """The held-out errors of the module doc, from a :class:`ModelView`."""
    horizon = w.action.shape[0]
    encoded = view.encode(w.obs)  # [H+1, N, Z]
    z = encoded[0]
    consistency, reward_err = [], []
    for k in range(horizon):
        reward_err.append((view.reward(z, w.action[k]).squeeze(-1) - w.reward[k]).abs().mean())
        z = view.next(z, w.action[k])
        consistency.append(((z - encoded[k + 1]) ** 2).mean())
    q = view.q(encoded[:-1], w.action).squeeze(-1)
    target = w.reward + discount * view.target_value(encoded[1:]).squeeze(-1)
    return {
        "heldout_consistency": float(torch.stack(consistency).mean()),
        "heldout_consistency_last": float(consistency[-1]),
        "heldout_reward_mae": float(torch.stack(reward_err).mean()),
        "heldout_value_td_mae": float((q - target).abs().mean()),
    }


class TDMPC2View:
    """:class:`ModelView` of a TD-MPC2 agent (single task): two-hot outputs decoded to values,
    the Q ensemble averaged, the target the minimum over the target ensemble at the policy's
    mean action."""

    def __init__(self, agent: Any) -> None:
        from common import math  # the tree's module (flatrl.tdmpc2.offline.tree.import_tree)

        self.model, self.cfg, self._math = agent.model, agent.cfg, math

    def _value(self, logits: torch.Tensor) -> torch.Tensor:
        return self._math.two_hot_inv(logits, self.cfg)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.model.encode(obs, None)

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.model.next(z, a, None)

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._value(self.model.reward(z, a, None))

    def q(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._value(self.model.Q(z, a, None, return_type="all")).mean(0)

    def target_value(self, z: torch.Tensor) -> torch.Tensor:
        _, info = self.model.pi(z, None)
        qs = self.model.Q(z, info["mean"], None, return_type="all", target=True)
        return self._value(qs).min(0).values


def evaluate(agent: Any, w: Windows) -> dict[str, float]:
    """Held-out errors of ``agent`` at its trained weights ``w``; leaves its mode, weights
    and every random state as they were."""
    state, training = rng_state(), agent.model.training
    agent.model.eval()
    try:
        with unperturbed(*_optimizers(agent)):
            return heldout_errors(TDMPC2View(agent), w, float(agent.discount))
    finally:
        agent.model.train(training)
        set_rng_state(state)


def _optimizers(agent: Any) -> list[torch.optim.Optimizer]:
    found = (getattr(agent, "optim", None), getattr(agent, "pi_optim", None))
    return [o for o in found if o is not None]


def measured_sharpness(agent: Any, batch: tuple[torch.Tensor, ...], rho: float) -> float:
    """L(w + rho g/||g||) - L(w) of the world-model loss on ``batch`` (obs, action, reward,
    terminated) at the trained weights ``w``; weights, gradients, mode and random state are
    put back."""
    with unperturbed(*_optimizers(agent)):
        return _measured_sharpness(agent, batch, rho)


def _measured_sharpness(agent: Any, batch: tuple[torch.Tensor, ...], rho: float) -> float:
    model = agent.model
    params = [p for n, p in model.named_parameters() if not n.startswith("_pi.")]
    params = [p for p in params if p.requires_grad]
    grads = [p.grad for p in params]
    state, training = rng_state(), model.training
    model.eval()  # no dropout: the same function at w and at w + e
    obs, action, reward, terminated = batch
    batch_size = agent.cfg.batch_size
    agent.cfg.batch_size = obs.shape[1]  # the loss allocates its latents by cfg.batch_size
    try:
        with torch.no_grad():
            next_z = model.encode(obs[1:], None)
            td = agent._td_target(next_z, reward, terminated, None)
        for p in params:
            p.grad = None
        loss = agent._world_model_loss(obs, action, reward, next_z, td, terminated)[0]
        loss.backward()
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in params if p.grad is not None])
        )
        scale = rho / (float(norm) + 1e-12)
        backup = [p.detach().clone() for p in params]  # exact restore (no add-then-subtract)
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=scale)
            perturbed = agent._world_model_loss(obs, action, reward, next_z, td, terminated)[0]
            for p, b in zip(params, backup, strict=True):
                p.copy_(b)
        return float(perturbed - loss.detach())
    finally:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        model.train(training)
        set_rng_state(state)
        agent.cfg.batch_size = batch_size
