"""The SAC update (Haarnoja et al., 2018, with learned temperature) on top of flatrl.optim.

The agent owns the networks, the three optimizers (actor, critic, temperature) and the update
counter; the training loop owns the environment, the replay memory and logging. SAM on the
critic needs the critic loss as a function of the weights, so the TD target is computed once
(no gradient) and :func:`flatrl.optim.sam_step` recomputes only the Q predictions on the same
batch. With spectral normalisation the second pass uses the power-iteration vectors the first
pass left, without iterating again: at ``rho = 0`` it then computes exactly the first pass,
and SAM leaves the power-iteration state as plain training would.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.parametrizations import _SpectralNorm

from flatrl.agents.sac.models import Actor, Critic
from flatrl.agents.sac.optimizers import NetworkOptimizer, build_network_optimizer
from flatrl.agents.sac.rank import critic_rank_metrics
from flatrl.agents.sac.settings import ModelSettings, TrainingSettings
from flatrl.optim import sam_step, unperturbed
from flatrl.runtime import TorchRNG


def _grad_norm(params: list[torch.Tensor], clip: float | None) -> torch.Tensor:
    """Total gradient norm (clipping to ``clip`` when set); a tensor, to avoid a host sync."""
    return torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters in the optimizer's group order, the order SAM's own clipping sums them in."""
    return [p for group in optimizer.param_groups for p in group["params"]]


@contextlib.contextmanager
def frozen_power_iteration(module: torch.nn.Module) -> Iterator[None]:
    """Spectral norms under ``module`` use their stored vectors without iterating (eval mode).

    Only the spectral-norm parametrizations change mode, so the rest of the network keeps
    its training behaviour; their ``u``/``v`` buffers are left exactly as they were.
    """
    spectral = [m for m in module.modules() if isinstance(m, _SpectralNorm)]
    modes = [m.training for m in spectral]
    for m in spectral:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(spectral, modes, strict=True):
            m.training = mode


class SACAgent:
    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        model: ModelSettings,
        training: TrainingSettings,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.cfg = training
        mlp = model.mlp()
        self.actor = Actor(obs_dim, action_dim, mlp, model.log_std_min, model.log_std_max)
        self.critic = Critic(obs_dim, action_dim, mlp)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(
            float(np.log(training.init_temperature)), device=self.device, requires_grad=True
        )
        self.target_entropy = (
            training.target_entropy if training.target_entropy is not None else -float(action_dim)
        )
        self.actor_opt: NetworkOptimizer = build_network_optimizer(
            self.actor,
            training.actor_optimizer,
            training.actor_momentum_schedule,
            Actor.first_layer_names(),
            Actor.last_layer_names(),
            key="training.actor_optimizer",
        )
        self.critic_opt: NetworkOptimizer = build_network_optimizer(
            self.critic,
            training.critic_optimizer,
            training.critic_momentum_schedule,
            Critic.first_layer_names(),
            Critic.last_layer_names(),
            key="training.critic_optimizer",
            grad_clip=training.grad_clip,
        )
        self.alpha_opt = torch.optim.Adam(
            [self.log_alpha], lr=training.alpha_lr, betas=tuple(training.alpha_betas)
        )
        self.num_updates = 0

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
        return self.actor.act(obs_t, deterministic)[0].cpu().numpy()

    # --- losses ------------------------------------------------------------------------------
    def _critic_loss(self, batch: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        q1, q2 = self.critic(batch["obs"], batch["action"])
        return F.mse_loss(q1, target) + F.mse_loss(q2, target)

    @torch.no_grad()
    def _td_target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        next_action, next_logp = self.actor.sample(batch["next_obs"])
        tq1, tq2 = self.critic_target(batch["next_obs"], next_action)
        soft_v = torch.min(tq1, tq2) - self.alpha * next_logp
        return batch["reward"] + batch["not_done"] * self.cfg.gamma * soft_v

    # --- updates -----------------------------------------------------------------------------
    def update_critic(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One critic step; with SAM, through :func:`flatrl.optim.sam_step`.

        ``train/critic_grad_norm`` is the first pass's total gradient norm before clipping in
        both cases. Without SAM the gradient is clipped here; with SAM, SAM clips the gradient
        its base step applies (``training.grad_clip`` is its ``clip_grad_norm``).
        """
        target = self._td_target(batch)
        opt = self.critic_opt.optimizer
        params = _optimizer_params(opt)
        rng = TorchRNG(self.device) if self.critic_opt.uses_sam else None
        opt.zero_grad(set_to_none=True)
        loss = self._critic_loss(batch, target)
        loss.backward()
        out: dict[str, torch.Tensor | float] = {
            "train/critic_loss": loss.detach(),
            "train/target_q": target.mean(),
        }
        if self.critic_opt.uses_sam:
            out["train/critic_grad_norm"] = _grad_norm(params, None)

            def recompute() -> torch.Tensor:
                with frozen_power_iteration(self.critic):
                    return self._critic_loss(batch, target)

            perturbed = sam_step(opt, loss, recompute, rng=rng, modules=[self.critic])
            if perturbed is not None:
                out["train/critic_sam_perturbed_loss"] = perturbed
                out["train/critic_sam_sharpness"] = opt.last_sharpness
        else:
            out["train/critic_grad_norm"] = _grad_norm(params, self.cfg.grad_clip)
            opt.step()
        self.critic_opt.after_update()
        return out

    def update_actor_and_alpha(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        action, logp = self.actor.sample(batch["obs"])
        q1, q2 = self.critic(batch["obs"], action)
        actor_loss = (self.alpha.detach() * logp - torch.min(q1, q2)).mean()
        opt = self.actor_opt.optimizer
        opt.zero_grad(set_to_none=True)
        # Only the actor's gradients are needed; the critic's stay untouched (and uncomputed).
        actor_params = _optimizer_params(opt)
        actor_loss.backward(inputs=actor_params)
        grad_norm = _grad_norm(actor_params, self.cfg.grad_clip)
        opt.step()
        self.actor_opt.after_update()

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return {
            "train/actor_loss": actor_loss.detach(),
            "train/actor_grad_norm": grad_norm,
            "train/alpha_loss": alpha_loss.detach(),
            "train/alpha": self.alpha.detach(),
            "train/entropy": -logp.detach().mean(),
        }

    @torch.no_grad()
    def update_target(self) -> None:
        tau = self.cfg.tau
        for p_t, p in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
            p_t.lerp_(p, tau)
        for b_t, b in zip(self.critic_target.buffers(), self.critic.buffers(), strict=True):
            b_t.copy_(b)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """One SAC update: critic, then (every ``actor_update_freq``) actor and temperature."""
        metrics = self.update_critic(batch)
        # Momentum-SAM keeps the critic at its perturbed weights between its updates (its next
        # pass is the perturbed one); the actor's loss and the target network see the critic's
        # own weights. A no-op for every other optimizer.
        with unperturbed(self.critic_opt.optimizer):
            if self.num_updates % self.cfg.actor_update_freq == 0:
                metrics.update(self.update_actor_and_alpha(batch))
            if self.num_updates % self.cfg.target_update_freq == 0:
                self.update_target()
        self.num_updates += 1
        return metrics

    def rank_metrics(
        self, batch: dict[str, torch.Tensor], max_samples: int, top_k: int
    ) -> dict[str, float]:
        """Feature-rank diagnostics; they leave the critic (spectral-norm vectors too) as is."""
        with unperturbed(self.critic_opt.optimizer):
            return critic_rank_metrics(
                self.critic, batch["obs"], batch["action"], max_samples, top_k
            )

    def hyperparameters(self) -> dict[str, float]:
        out = {f"actor/{k}": v for k, v in self.actor_opt.hyperparameters().items()}
        out.update({f"critic/{k}": v for k, v in self.critic_opt.hyperparameters().items()})
        return out

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.num_updates = int(state["num_updates"])
