"""TD-MPC2's two optimizers, built from ``optimizer=Adam|SAM|Muon`` and the ``sam_*`` settings.

TD-MPC2 trains its world model (encoder, dynamics, reward, termination, Q ensemble, task
embedding) with one Adam over per-module groups (the encoder at ``lr * enc_lr_scale``) and its
policy prior with a second Adam. This module rebuilds exactly those (``optimizer=Adam``, the
upstream behaviour) or:

* ``optimizer=SAM``: :class:`flatrl.optim.SAM` wraps the world-model Adam (its groups and
  learning rates kept) and perturbs the parameters of ``sam_scope`` only (default
  ``encoder_dynamics``); with
  ``sam_scope=policy`` it wraps the policy Adam instead and the world model keeps plain Adam.
  The gradient the base step uses is clipped to ``grad_clip_norm`` (SAM's ``clip_grad_norm``).
* ``optimizer=Muon``: the world model's hidden 2-D weights go to ``flatrl.optim.Muon`` (split by
  :func:`flatrl.optim.muon_param_groups` per module, so each MLP keeps its first and last layer
  on Adam); everything else stays on Adam with the same groups, in one
  :class:`flatrl.optim.CompositeOptimizer`. The Q ensemble stores its weights stacked as 3-D
  tensors ``(num_q, out, in)``; its hidden stacked weight goes to Muon too, each of the
  ``num_q`` members orthogonalised on its own (``muon_param_groups(..., stacked=[""])``), and
  its first and last stacked layer, stacked biases and norm scales to Adam. The policy keeps
  Adam.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from flatrl.optim import SAM, CompositeOptimizer, Muon, SAMConfig, muon_param_groups

OPTIMIZERS = ("adam", "sam", "muon")
SCOPES = ("world_model", "encoder_dynamics", "dynamics", "reward_value", "policy")


DEFAULT_SCOPE = "encoder_dynamics"
SAM_KEYS = {
    "rho": "sam_rho",
    "adaptive": "sam_adaptive",
    "every_k": "sam_every",
    "scope": "sam_scope",
    "variant": "sam_variant",
    "looksam_alpha": "sam_looksam_alpha",
    "aesam_c": "sam_aesam_c",
    "aesam_decay": "sam_aesam_decay",
}


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """The validated optimizer settings of a run (the SAM ones checked by :class:`SAMConfig`)."""

    name: str
    rho: float
    adaptive: bool
    every: int
    scope: str
    variant: str = "sam"
    looksam_alpha: float = 0.7
    aesam_c: float = 0.0
    aesam_decay: float = 0.9

    @property
    def sam_on_world_model(self) -> bool:
        return self.name == "sam" and self.scope != "policy"

    @property
    def sam_on_policy(self) -> bool:
        return self.name == "sam" and self.scope == "policy"

    def sam_config(self, clip_grad_norm: float | None = None) -> SAMConfig:
        """The :class:`SAMConfig` of these settings, clipping the base step's gradient."""
        return SAMConfig(
            rho=self.rho,
            adaptive=self.adaptive,
            every_k=self.every,
            scope=self.scope,
            clip_grad_norm=clip_grad_norm,
            variant=self.variant,
            looksam_alpha=self.looksam_alpha,
            aesam_c=self.aesam_c,
            aesam_decay=self.aesam_decay,
            names=SAM_KEYS,
        )


def _get(cfg: Any, key: str, default: Any) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def optimizer_settings(cfg: Any) -> OptimizerSettings:
    """Read and check ``optimizer``, ``sam_rho``, ``sam_adaptive``, ``sam_every``, ``sam_scope``
    and the variant keys ``sam_variant`` (sam | looksam | msam | aesam), ``sam_looksam_alpha``,
    ``sam_aesam_c``, ``sam_aesam_decay`` (absent keys take SAMConfig's defaults, so a config
    without them runs plain SAM as before; ``sam_every`` is LookSAM's k).

    The SAM settings go through :class:`flatrl.optim.SAMConfig` (the one validation every
    flatrl integration shares; errors name TD-MPC2's keys), so ``sam_rho=0`` is accepted and
    means a zero-radius SAM step. The default scope is ``encoder_dynamics``: the paper's
    ablation (Table 7) finds SAM on the reward and value heads harmful, and the authors' own
    runs perturb the encoder and dynamics. Raises ValueError naming the bad value and the
    accepted ones, so a bad config fails before any environment or model is built.
    """
    raw_name = _get(cfg, "optimizer", "adam")
    name = str(raw_name).strip().lower()
    if name not in OPTIMIZERS:
        raise ValueError(
            f"optimizer={raw_name} is not supported; use one of Adam, SAM, Muon "
            "(case-insensitive), e.g. optimizer=SAM sam_rho=0.05."
        )
    config = SAMConfig(
        rho=_get(cfg, "sam_rho", 0.05),
        adaptive=_get(cfg, "sam_adaptive", False),
        every_k=_get(cfg, "sam_every", 1),
        scope=str(_get(cfg, "sam_scope", DEFAULT_SCOPE)),
        variant=_get(cfg, "sam_variant", "sam"),
        looksam_alpha=_get(cfg, "sam_looksam_alpha", 0.7),
        aesam_c=_get(cfg, "sam_aesam_c", 0.0),
        aesam_decay=_get(cfg, "sam_aesam_decay", 0.9),
        names=SAM_KEYS,
    )
    config.check_scope(SCOPES, "sam_scope")
    assert config.scope is not None
    return OptimizerSettings(
        name,
        config.rho,
        config.adaptive,
        config.every_k,
        config.scope,
        config.variant,
        config.looksam_alpha,
        config.aesam_c,
        config.aesam_decay,
    )


def _params(module: nn.Module | None) -> list[Tensor]:
    return [] if module is None else list(module.parameters())


def world_model_param_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Upstream's world-model groups, in upstream's order (empty groups included)."""
    return [
        {"params": _params(model._encoder), "lr": cfg.lr * cfg.enc_lr_scale},
        {"params": _params(model._dynamics)},
        {"params": _params(model._reward)},
        {"params": _params(model._termination) if cfg.episodic else []},
        {"params": _params(model._Qs)},
        {"params": _params(model._task_emb) if cfg.multitask else []},
    ]


def sam_scope_params(model: nn.Module, scope: str) -> list[Tensor] | None:
    """The parameters SAM perturbs for a world-model scope (None: all of them).

    ``reward_value`` is the reward head and the Q ensemble (the paper's "Reward & Value" row);
    the termination head and task embedding are perturbed only with ``world_model``.
    """
    if scope == "world_model":
        return None
    if scope == "encoder_dynamics":
        return _params(model._encoder) + _params(model._dynamics)
    if scope == "dynamics":
        return _params(model._dynamics)
    if scope == "reward_value":
        return _params(model._reward) + _params(model._Qs)
    raise ValueError(f"sam_scope={scope} has no world-model parameters to perturb.")


def _muon_world_model(model: nn.Module, cfg: Any, capturable: bool) -> torch.optim.Optimizer:
    modules = [model._encoder, model._dynamics, model._reward]
    lrs = [cfg.lr * cfg.enc_lr_scale, cfg.lr, cfg.lr]
    if cfg.episodic:
        modules.append(model._termination)
        lrs.append(cfg.lr)
    muon_groups: list[dict[str, Any]] = []
    adam_groups: list[dict[str, Any]] = []
    for module, lr in zip(modules, lrs, strict=True):
        # Per module: each MLP keeps its own first (input-sized) and last (output-sized) layer.
        for sub in module.values() if isinstance(module, nn.ModuleDict) else [module]:
            muon, rest = muon_param_groups(sub)
            if muon:
                muon_groups.append({"params": muon, "lr": lr})
            if rest:
                adam_groups.append({"params": rest, "lr": lr})
    # The Q ensemble: every parameter is stacked along dim 0 (num_q members); its hidden 3-D
    # weights go to Muon member by member, its input/output layers, biases and norms to Adam.
    q_muon, q_rest = muon_param_groups(model._Qs, stacked=[""])
    if q_muon:
        muon_groups.append({"params": q_muon, "lr": cfg.lr})
    adam_groups.append({"params": q_rest, "lr": cfg.lr})
    # The task embedding: Adam.
    if cfg.multitask:
        adam_groups.append({"params": _params(model._task_emb), "lr": cfg.lr})
    optimizers: list[torch.optim.Optimizer] = []
    if muon_groups:
        # No weight decay, as upstream's Adam (torch's Muon default is 0.1); update RMS matched
        # to AdamW's so that TD-MPC2's Adam learning rate carries over.
        optimizers.append(
            Muon(muon_groups, lr=cfg.lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
        )
    optimizers.append(torch.optim.Adam(adam_groups, lr=cfg.lr, capturable=capturable))
    return CompositeOptimizer(optimizers)


def build_optimizers(
    model: nn.Module, cfg: Any, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Return ``(world-model optimizer, policy optimizer)`` for the run's settings."""
    settings = optimizer_settings(cfg)
    capturable = device.type == "cuda"
    if settings.name == "muon":
        optim = _muon_world_model(model, cfg, capturable)
    else:
        optim = torch.optim.Adam(
            world_model_param_groups(model, cfg), lr=cfg.lr, capturable=capturable
        )
    pi_optim = torch.optim.Adam(model._pi.parameters(), lr=cfg.lr, eps=1e-5, capturable=capturable)
    sam = settings.sam_config(clip_grad_norm=cfg.grad_clip_norm)
    if settings.sam_on_world_model:
        optim = SAM.from_config(optim, sam, scope=sam_scope_params(model, settings.scope))
    elif settings.sam_on_policy:
        pi_optim = SAM.from_config(pi_optim, sam)
    return optim, pi_optim


def describe(optim: torch.optim.Optimizer, pi_optim: torch.optim.Optimizer) -> str:
    """One line for the run header, e.g. ``world model: SAM(rho=0.05, ...); policy: Adam`` or
    ``world model: Muon (1 stacked ensemble weight) + Adam; policy: Adam``."""

    def name(opt: torch.optim.Optimizer) -> str:
        if isinstance(opt, SAM):
            return (
                f"{type(opt).__name__}(rho={opt.rho}, adaptive={opt.adaptive}, "
                f"every={opt.every_k}) over {name(opt.base_optimizer)}"
            )
        if isinstance(opt, CompositeOptimizer):
            return " + ".join(name(o) for o in opt.optimizers)
        if isinstance(opt, Muon):
            # Say whether the stacked Q-ensemble weights are on Muon (they once were not).
            stacked = sum(p.ndim == 3 for g in opt.param_groups for p in g["params"])
            plural = "s" * (stacked != 1)
            return f"Muon ({stacked} stacked ensemble weight{plural})" if stacked else "Muon"
        return type(opt).__name__

    return f"world model: {name(optim)}; policy: {name(pi_optim)}"


def steps_compile(optim: torch.optim.Optimizer, pi_optim: torch.optim.Optimizer) -> bool:
    """Whether ``compile=true`` may compile the whole update, optimizer steps included.

    True for upstream's pair of Adams (upstream compiles ``_update`` whole). SAM's step runs a
    second forward/backward with a replayed random state and swaps weights through backup
    buffers, and Muon's step runs Newton-Schulz in a wrapper optimizer: inside a captured
    region those are graph breaks and CUDA-graph hazards (a replay overwrites the first pass's
    outputs), so with them only the loss computations are compiled.
    """
    return all(type(o) is torch.optim.Adam for o in (optim, pi_optim))
