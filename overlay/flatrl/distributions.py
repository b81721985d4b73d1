"""The tanh-squashed Gaussian that continuous-action policies sample from.

An action ``a = tanh(u)`` with ``u ~ N(mean, exp(log_std))`` lies in (-1, 1). Its density follows
from the change of variables ``log p(a) = log N(u) - sum log(1 - tanh(u)^2)``. The correction
is written as ``2 (log 2 - u - softplus(-2u))``, which equals ``log(1 - tanh(u)^2)`` but stays
finite where ``tanh(u)`` rounds to +-1 (|u| above about 9 in float32), so a saturated action
still has a usable log-probability and gradient.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

__all__ = ["tanh_log_abs_det_jacobian", "tanh_normal_log_prob"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def tanh_log_abs_det_jacobian(u: Tensor) -> Tensor:
    """``log(1 - tanh(u)^2)`` element-wise, in the form that does not underflow near |a| = 1."""
    return 2 * (math.log(2) - u - F.softplus(-2 * u))


def tanh_normal_log_prob(
    u: Tensor, mean: Tensor, log_std: Tensor, noise: Tensor | None = None
) -> Tensor:
    """Log-density of ``a = tanh(u)``, ``u ~ N(mean, exp(log_std))``, summed over the last dim.

    Args:
        u: the pre-squash sample (what the policy drew before ``tanh``).
        mean, log_std: the Gaussian's parameters, broadcastable to ``u``.
        noise: the standard-normal draw with ``u = mean + exp(log_std) * noise``, when the caller
            has it (a reparameterised sample): the Gaussian term then uses it as is instead of
            recovering it as ``(u - mean) / std``, which saves a division and its rounding.

    Returns:
        A tensor of shape ``u.shape[:-1]``.
    """
    if noise is None:
        noise = (u - mean) / log_std.exp()
    gaussian = (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
    return gaussian - tanh_log_abs_det_jacobian(u).sum(-1)
