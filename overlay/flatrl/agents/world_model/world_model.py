"""The world model: vision -> memory -> controller, plus the reward predictor planning needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .controllers import ActResult, PlanningModel, build_controller
from .envs import EnvSpec
from .memory import RollingContext, TemporalTransformer
from .vision import build_vision


@dataclass
class ModelConfig:
    """Sizes and planning settings; saved in checkpoints so a model can be rebuilt to load."""

    z_dim: int = 32
    d_model: int = 64
    memory_layers: int = 2
    memory_heads: int = 4
    memory_window: int = 16
    improved_controller: bool = True
    planning_horizon: int = 5
    plan_weight: float = 0.3
    gamma: float = 0.99


class RewardPredictor(nn.Module):
    """r_hat(z, h, a): trained on the (normalised) env reward, used only for planning."""

    def __init__(self, z_dim: int, h_dim: int, action_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim + h_dim + action_dim, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def forward(self, z: torch.Tensor, h: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, h, action], -1)).squeeze(-1)


class WorldModel(nn.Module):
    """Holds the four parts; acting and training both go through `hidden` for the same h_t."""

    def __init__(self, spec: EnvSpec, cfg: ModelConfig) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        a_dim = spec.action_input_dim
        self.vision = build_vision(spec.obs_kind, spec.obs_shape, cfg.z_dim)
        self.memory = TemporalTransformer(
            cfg.z_dim, a_dim, cfg.d_model, cfg.memory_layers, cfg.memory_heads, cfg.memory_window
        )
        self.reward_predictor = RewardPredictor(cfg.z_dim, cfg.d_model, a_dim)
        plan_weight = cfg.plan_weight if cfg.planning_horizon > 0 else 0.0
        self.controller = build_controller(
            cfg.improved_controller,
            spec.discrete,
            cfg.z_dim + cfg.d_model,
            spec.n_actions,
            spec.action_dim,
            plan_weight,
        )

    def planning_model(self) -> PlanningModel:
        return PlanningModel(
            self.memory.predict_next,
            self.reward_predictor,
            self.cfg.planning_horizon,
            self.cfg.gamma,
        )

    def obs_tensor(self, obs: object, device: torch.device) -> torch.Tensor:
        """Images stay uint8 until the encoder (4x less memory in rollouts); vectors are float."""
        dtype = torch.uint8 if self.spec.obs_kind == "image" else torch.float32
        return torch.as_tensor(obs, dtype=dtype, device=device)

    def new_context(self, num_envs: int, device: torch.device) -> RollingContext:
        return RollingContext(num_envs, self.cfg.memory_window, self.cfg.d_model, device)

    @torch.no_grad()
    def act(
        self,
        obs: torch.Tensor,
        prev_action: torch.Tensor,
        context: RollingContext,
        deterministic: bool = False,
        plan: bool = True,
    ) -> ActResult:
        """One acting step for a batch of envs; pushes the new token into `context`."""
        z = self.vision(obs, with_loss=False).z
        token = self.memory.token(z, prev_action)
        h = self.memory.hidden(context.tokens, token, context.lengths)
        context.push(token)
        model = self.planning_model() if plan else None
        return self.controller.act(z, h, model, deterministic)

    def zero_action_input(self, num_envs: int, device: torch.device) -> torch.Tensor:
        """The 'previous action' at the start of an episode."""
        return torch.zeros(num_envs, self.spec.action_input_dim, device=device)
