"""Networks of the SAC agent: a tanh-Gaussian actor and a double-Q critic.

Both are built from one MLP trunk so that the architecture knobs a sweep varies (residual
connections, activation normalisation ``none | layernorm | l2``, spectral normalisation) mean the
same thing for actor and critic. Module names are part of the contract with the optimizer
split: ``fcs.0`` is a network's first layer; the actor's last layer is its ``mean`` and
``log_std`` heads, the critic's are ``q1.out`` and ``q2.out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from flatrl.distributions import tanh_normal_log_prob

NORMS = ("none", "layernorm", "l2")


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of one trunk; the same config builds the actor and each Q network."""

    hidden_dim: int = 256
    num_layers: int = 2
    residual: bool = False
    norm: str = "none"
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        if self.hidden_dim < 1 or self.num_layers < 1:
            raise ValueError(
                f"model.hidden_dim and model.num_layers must be >= 1, got {self.hidden_dim} and "
                f"{self.num_layers}; set both to positive integers."
            )
        if self.norm not in NORMS:
            raise ValueError(f"model.norm={self.norm!r} is unknown; use one of {', '.join(NORMS)}.")


class L2Norm(nn.Module):
    """Projects each feature vector onto the unit sphere (scale-free features for the head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


def _make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "l2":
        return L2Norm()
    return nn.Identity()


def _init_linear(layer: nn.Linear) -> None:
    # Orthogonal weights keep the singular values of fresh layers at 1, so effective-rank
    # curves start from a well-conditioned network whichever optimizer trains it.
    nn.init.orthogonal_(layer.weight)
    nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """``num_layers`` hidden layers ``fcs.i``; returns the last hidden layer's features.

    Each layer computes ``act(norm(fc(h)))``; with ``residual`` the hidden-to-hidden layers add
    their input back (the input layer cannot, its width differs). Spectral normalisation wraps
    the hidden-to-hidden layers only: the input layer must be free to scale raw observations.
    """

    def __init__(self, in_dim: int, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fcs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(cfg.num_layers):
            layer = nn.Linear(in_dim if i == 0 else cfg.hidden_dim, cfg.hidden_dim)
            _init_linear(layer)
            if cfg.spectral_norm and i > 0:
                layer = _spectral_norm(layer)
            self.fcs.append(layer)
            self.norms.append(_make_norm(cfg.norm, cfg.hidden_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (fc, norm) in enumerate(zip(self.fcs, self.norms, strict=True)):
            out = F.relu(norm(fc(h)))
            h = h + out if (self.cfg.residual and i > 0) else out
        return h


class Actor(MLP):
    """Tanh-squashed Gaussian policy; heads ``mean`` and ``log_std`` are its last layer."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        cfg: MLPConfig,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__(obs_dim, cfg)
        self.mean = nn.Linear(cfg.hidden_dim, action_dim)
        self.log_std = nn.Linear(cfg.hidden_dim, action_dim)
        _init_linear(self.mean)
        _init_linear(self.log_std)
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    @staticmethod
    def first_layer_names() -> list[str]:
        return ["fcs.0"]

    @staticmethod
    def last_layer_names() -> list[str]:
        return ["mean", "log_std"]

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(obs)
        # Soft-clamp log_std into [min, max] so the gradient never dies at the bounds.
        log_std = torch.tanh(self.log_std(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return self.mean(h), log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action in (-1, 1) and its log-probability (tanh-corrected)."""
        mean, log_std = self(obs)
        std = log_std.exp()
        noise = torch.randn_like(mean)
        pre_tanh = mean + std * noise
        action = torch.tanh(pre_tanh)
        return action, tanh_normal_log_prob(pre_tanh, mean, log_std, noise=noise).unsqueeze(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if deterministic:
            return torch.tanh(self(obs)[0])
        return self.sample(obs)[0]


class QNetwork(MLP):
    """One Q function: the MLP trunk plus a scalar head ``out``."""

    def __init__(self, in_dim: int, cfg: MLPConfig) -> None:
        super().__init__(in_dim, cfg)
        self.out = nn.Linear(cfg.hidden_dim, 1)
        _init_linear(self.out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-value and the penultimate features it was computed from (for rank diagnostics)."""
        h = self.features(x)
        return self.out(h), h


class Critic(nn.Module):
    """Double-Q critic ``q1``, ``q2`` on the concatenated observation and action."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: MLPConfig) -> None:
        super().__init__()
        self.q1 = QNetwork(obs_dim + action_dim, cfg)
        self.q2 = QNetwork(obs_dim + action_dim, cfg)

    @staticmethod
    def first_layer_names() -> list[str]:
        return ["q1.fcs.0", "q2.fcs.0"]

    @staticmethod
    def last_layer_names() -> list[str]:
        return ["q1.out", "q2.out"]

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x)[0], self.q2(x)[0]

    def features(self, obs: torch.Tensor, action: torch.Tensor) -> list[torch.Tensor]:
        """Penultimate features of each Q network, in order q1, q2."""
        x = torch.cat([obs, action], dim=-1)
        return [self.q1.features(x), self.q2.features(x)]
