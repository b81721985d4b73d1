"""Controllers: map (z_t, h_t) to an action distribution and a state value.

Three kinds, all with the same interface so the trainer does not care which it runs:

* `LegacyController` - the original single linear layer (policy and value), kept as a baseline
  but with correct log-probabilities, entropy and tanh correction.
* `ImprovedDiscreteController` - MLPs with LayerNorm + ReLU and model-predictive planning over
  every action.
* `ImprovedContinuousController` - shared trunk with mu / log_std heads, CEM-style planning
  and a tanh-squashed Gaussian.

Planning and learning: the action that is executed is drawn from the *blended* distribution
(70 % policy, 30 % planner), and that same blended distribution is what A2C trains the
log-probability of. The planner's choice is computed without gradients and stored with the
transition, so it acts as a fixed component of the behaviour policy: the policy gradient stays
unbiased for the policy actually run, instead of crediting the policy network for actions the
planner picked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class PlanningModel:
    """The pieces of the world model a planner rolls out (h is held fixed over the horizon).

    dynamics(z, a, h) -> z'; reward(z, h, a) -> r. Holding h fixed keeps planning to a few MLP
    calls per step; the horizon (<= 5) is short next to the memory window it summarises.
    """

    dynamics: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    reward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    horizon: int
    gamma: float


@dataclass
class ActResult:
    """action: what is stored (discrete index, or pre-tanh u); env_action: what the env gets
    (index, or tanh(u) in [-1, 1]); plan: planner output stored for training (see evaluate)."""

    action: torch.Tensor
    env_action: torch.Tensor
    plan: torch.Tensor
    value: torch.Tensor


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...] = (128, 64)) -> nn.Sequential:
    """Hidden layers of Linear -> LayerNorm -> ReLU, then a linear output."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# tanh-squashed Gaussian


def tanh_log_prob(u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log-density of a = tanh(u), u ~ N(mu, exp(log_std)), summed over action dimensions.

    Change of variables: log p(a) = log N(u) - sum log(1 - tanh(u)^2), with the stable form
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) that does not underflow near |a| = 1.
    """
    base = Normal(mu, log_std.exp()).log_prob(u)
    correction = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (base - correction).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of the pre-tanh Gaussian (the squashed one has no closed form); a standard bonus."""
    return (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1)


# ---------------------------------------------------------------------------------------------
# planners


def plan_discrete(
    z: torch.Tensor,
    h: torch.Tensor,
    n_actions: int,
    model: PlanningModel,
    value_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    policy_logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Score every first action by an imagined H-step return; returns (B, n_actions).

    The first step takes the candidate action; later steps follow the policy's greedy action
    (repeating one action for H steps is a poor plan, e.g. pushing a cart one way 5 times).
    Score = sum_t gamma^t r_hat_t + gamma^H V(z_H, h).
    """
    batch = z.shape[0]
    zz = z.repeat_interleave(n_actions, 0)
    hh = h.repeat_interleave(n_actions, 0)
    act = torch.arange(n_actions, device=z.device).repeat(batch)
    ret = torch.zeros(batch * n_actions, device=z.device)
    for t in range(model.horizon):
        if t > 0:
            act = policy_logits_fn(zz, hh).argmax(-1)
        onehot = F.one_hot(act, n_actions).float()
        ret = ret + model.gamma**t * model.reward(zz, hh, onehot).reshape(-1)
        zz = model.dynamics(zz, onehot, hh)
    ret = ret + model.gamma**model.horizon * value_fn(zz, hh).reshape(-1)
    return ret.view(batch, n_actions)


def plan_continuous(
    z: torch.Tensor,
    h: torch.Tensor,
    mu: torch.Tensor,
    model: PlanningModel,
    value_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    policy_mean_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_samples: int = 8,
    iterations: int = 2,
    num_elites: int = 2,
    init_std: float = 0.5,
) -> torch.Tensor:
    """CEM over the first pre-tanh action around the policy mean; returns the best u (B, D)."""
    batch, dim = mu.shape
    mean, std = mu, torch.full_like(mu, init_std)
    best_u, best_score = mu, torch.full((batch,), -float("inf"), device=mu.device)
    zz = z.repeat_interleave(num_samples, 0)
    hh = h.repeat_interleave(num_samples, 0)
    for _ in range(iterations):
        u = mean.unsqueeze(1) + std.unsqueeze(1) * torch.randn(
            batch, num_samples, dim, device=mu.device
        )
        score = _imagined_return(
            zz, hh, torch.tanh(u.reshape(-1, dim)), model, value_fn, policy_mean_fn
        )
        score = score.view(batch, num_samples)
        top, idx = score.topk(num_elites, dim=1)
        elites = u.gather(1, idx.unsqueeze(-1).expand(-1, -1, dim))
        better = top[:, 0] > best_score
        best_u = torch.where(better[:, None], elites[:, 0], best_u)
        best_score = torch.where(better, top[:, 0], best_score)
        mean, std = elites.mean(1), elites.std(1, unbiased=False).clamp_min(0.05)
    return best_u


def _imagined_return(
    z: torch.Tensor,
    h: torch.Tensor,
    first_action: torch.Tensor,
    model: PlanningModel,
    value_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    policy_mean_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    act, ret = first_action, torch.zeros(z.shape[0], device=z.device)
    for t in range(model.horizon):
        if t > 0:
            act = torch.tanh(policy_mean_fn(z, h))
        ret = ret + model.gamma**t * model.reward(z, h, act).reshape(-1)
        z = model.dynamics(z, act, h)
    return ret + model.gamma**model.horizon * value_fn(z, h).reshape(-1)


# ---------------------------------------------------------------------------------------------
# controllers


class DiscreteController(nn.Module):
    """Categorical policy blended with a one-hot on the planner's best action."""

    discrete = True

    def __init__(
        self, policy: nn.Module, value: nn.Module, n_actions: int, plan_weight: float
    ) -> None:
        super().__init__()
        self.policy, self.value_net, self.n_actions = policy, value, n_actions
        self.plan_weight = plan_weight

    @property
    def use_planning(self) -> bool:
        return self.plan_weight > 0

    def value(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.value_net(torch.cat([z, h], -1)).squeeze(-1)

    def logits(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.policy(torch.cat([z, h], -1))

    def probs(self, logits: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """Mixture (1-w) softmax(logits) + w onehot(plan); plan < 0 means 'no planner'."""
        probs = logits.softmax(-1)
        has_plan = plan.reshape(-1) >= 0
        if not self.use_planning or not bool(has_plan.any()):
            return probs
        onehot = F.one_hot(plan.reshape(-1).clamp_min(0).long(), self.n_actions).float()
        w = self.plan_weight * has_plan.float().unsqueeze(-1)
        return (1 - w) * probs + w * onehot

    @torch.no_grad()
    def act(
        self, z: torch.Tensor, h: torch.Tensor, model: PlanningModel | None, deterministic: bool
    ) -> ActResult:
        logits = self.logits(z, h)
        plan = torch.full((z.shape[0], 1), -1.0, device=z.device)
        if self.use_planning and model is not None and model.horizon > 0:
            scores = plan_discrete(z, h, self.n_actions, model, self.value, self.logits)
            plan = scores.argmax(-1, keepdim=True).float()
        probs = self.probs(logits, plan)
        action = probs.argmax(-1) if deterministic else torch.multinomial(probs, 1).squeeze(-1)
        return ActResult(action, action, plan, self.value(z, h))

    def evaluate(
        self, z: torch.Tensor, h: torch.Tensor, action: torch.Tensor, plan: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log pi_mix(a|s), entropy of pi_mix, V(s)) with gradients into policy and value."""
        probs = self.probs(self.logits(z, h), plan)
        logp_all = probs.clamp_min(1e-8).log()
        logp = logp_all.gather(-1, action.long().view(-1, 1)).squeeze(-1)
        entropy = -(probs * logp_all).sum(-1)
        return logp, entropy, self.value(z, h)

    def action_input(self, action: torch.Tensor) -> torch.Tensor:
        """What the memory and reward predictor see: a one-hot."""
        return F.one_hot(action.long().view(-1), self.n_actions).float()


class ContinuousController(nn.Module):
    """tanh-Gaussian policy whose pre-tanh mean is blended with the planner's best action."""

    discrete = False

    def __init__(self, action_dim: int, plan_weight: float, num_action_samples: int = 8) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.plan_weight = plan_weight
        self.num_action_samples = num_action_samples

    @property
    def use_planning(self) -> bool:
        return self.plan_weight > 0

    def mean_log_std(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def value(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blended_mean(self, mu: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """(1-w) mu + w u_plan; a NaN first entry in `plan` means 'no planner for this row'."""
        if not self.use_planning:
            return mu
        has_plan = ~torch.isnan(plan[:, :1])
        mixed = (1 - self.plan_weight) * mu + self.plan_weight * torch.nan_to_num(plan)
        return torch.where(has_plan, mixed, mu)

    @torch.no_grad()
    def act(
        self, z: torch.Tensor, h: torch.Tensor, model: PlanningModel | None, deterministic: bool
    ) -> ActResult:
        mu, log_std = self.mean_log_std(z, h)
        plan = torch.full_like(mu, float("nan"))
        if self.use_planning and model is not None and model.horizon > 0:
            plan = plan_continuous(
                z,
                h,
                mu,
                model,
                self.value,
                lambda zz, hh: self.mean_log_std(zz, hh)[0],
                num_samples=self.num_action_samples,
            ).clamp(-5.0, 5.0)
        mean = self.blended_mean(mu, plan)
        u = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        return ActResult(u, torch.tanh(u), plan, self.value(z, h))

    def evaluate(
        self, z: torch.Tensor, h: torch.Tensor, action: torch.Tensor, plan: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_std = self.mean_log_std(z, h)
        mean = self.blended_mean(mu, plan)
        logp = tanh_log_prob(action, mean, log_std.expand_as(mean))
        return logp, gaussian_entropy(log_std.expand_as(mean)), self.value(z, h)

    def action_input(self, action: torch.Tensor) -> torch.Tensor:
        """The squashed action in [-1, 1] (stored actions are pre-tanh u)."""
        return torch.tanh(action)


class LegacyDiscreteController(DiscreteController):
    """The original single linear layer for the policy (and one for the value); no planning."""

    def __init__(self, in_dim: int, n_actions: int) -> None:
        super().__init__(nn.Linear(in_dim, n_actions), nn.Linear(in_dim, 1), n_actions, 0.0)


class ImprovedDiscreteController(DiscreteController):
    """[in -> 128 (LN, ReLU) -> 64 (LN, ReLU) -> actions], a separate value MLP, planning."""

    def __init__(self, in_dim: int, n_actions: int, plan_weight: float = 0.3) -> None:
        super().__init__(mlp(in_dim, n_actions), mlp(in_dim, 1), n_actions, plan_weight)
        # A small last layer starts the policy near uniform, so early planning noise and
        # random logits do not lock exploration in.
        last = self.policy[-1]
        assert isinstance(last, nn.Linear)
        nn.init.orthogonal_(last.weight, gain=0.01)
        nn.init.zeros_(last.bias)


class LegacyContinuousController(ContinuousController):
    """Linear mean, a state-independent log_std, linear value; no planning."""

    def __init__(self, in_dim: int, action_dim: int) -> None:
        super().__init__(action_dim, 0.0)
        self.mu = nn.Linear(in_dim, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), -0.5))
        self.value_net = nn.Linear(in_dim, 1)

    def mean_log_std(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.mu(torch.cat([z, h], -1))
        return mu, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mu)

    def value(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.value_net(torch.cat([z, h], -1)).squeeze(-1)


class ImprovedContinuousController(ContinuousController):
    """Shared trunk -> mu and log_std heads; separate value MLP; CEM planning."""

    def __init__(
        self, in_dim: int, action_dim: int, plan_weight: float = 0.3, num_action_samples: int = 8
    ) -> None:
        super().__init__(action_dim, plan_weight, num_action_samples)
        self.trunk = nn.Sequential(
            nn.Linear(in_dim, 128),
            nn.LayerNorm(128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.LayerNorm(64),
            nn.ReLU(),
        )
        self.mu_head = nn.Linear(64, action_dim)
        self.log_std_head = nn.Linear(64, action_dim)
        nn.init.orthogonal_(self.mu_head.weight, gain=0.01)
        nn.init.zeros_(self.mu_head.bias)
        nn.init.zeros_(self.log_std_head.weight)
        nn.init.constant_(self.log_std_head.bias, -0.5)
        self.value_net = mlp(in_dim, 1)

    def mean_log_std(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.trunk(torch.cat([z, h], -1))
        return self.mu_head(feat), self.log_std_head(feat).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def value(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.value_net(torch.cat([z, h], -1)).squeeze(-1)


def build_controller(
    improved: bool,
    discrete: bool,
    in_dim: int,
    n_actions: int,
    action_dim: int,
    plan_weight: float,
) -> DiscreteController | ContinuousController:
    """Pick the controller class from --use-improved-controller and the action space."""
    if discrete:
        if improved:
            return ImprovedDiscreteController(in_dim, n_actions, plan_weight)
        return LegacyDiscreteController(in_dim, n_actions)
    if improved:
        return ImprovedContinuousController(in_dim, action_dim, plan_weight)
    return LegacyContinuousController(in_dim, action_dim)
