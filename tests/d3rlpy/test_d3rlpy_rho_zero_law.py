"""The rho -> 0 law for every d3rlpy algorithm: SAM(Adam) with rho = 1e-9 or 0 *is* Adam.

With a vanishing radius the second pass is the first pass at the same weights, so a SAM update
must reproduce Adam's exactly: every logged ``*_sharpness`` ~ 0, the same parameters, the same
BatchNorm statistics. Any difference between the passes other than the weights - random draws
not replayed (dropout, sampled actions, soft/max Q backups, target noise), BatchNorm statistics
updated twice, nested temperature/alpha steps taken twice or seen at other values, gradients
leaking between optimizers - breaks the law, so this matrix checks the closures of all
algorithms at once: every algorithm (and FQE) x {default, dropout, batch norm, 3 critics}, CQL's
soft and max backups, and ``every_k=3`` / ``adaptive=True`` on a subset.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from d3rlpy_support import (
    algorithms,
    batchnorm_buffers,
    build,
    make_dataset,
    params_of,
    require_patched_d3rlpy,
    sample_batch,
)

require_patched_d3rlpy()

N_UPDATES = 6
TOLERANCE = 1e-6

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "dropout": {"encoder": {"dropout_rate": 0.2}},
    "batchnorm": {"encoder": {"use_batch_norm": True}},
    "3critics": {"overrides": {"n_critics": 3}},
}
# Decision transformers feed (batch, context, features) to their encoder: BatchNorm1d takes
# dim 1 (the context) as channels there, which upstream does not support either.
UNSUPPORTED = {
    ("DecisionTransformer", "batchnorm"),
    ("DiscreteDecisionTransformer", "batchnorm"),
    ("TACR", "batchnorm"),
}


def _has_critics(name: str) -> bool:
    make_config = algorithms()[name][0]
    return make_config is not None and hasattr(make_config(), "n_critics")


def _cases() -> list[Any]:
    cases = []
    for name in sorted(algorithms()):
        for variant in VARIANTS:
            if (name, variant) in UNSUPPORTED:
                continue
            if variant == "3critics" and not _has_critics(name):
                continue
            cases.append(pytest.param(name, variant, {}, id=f"{name}-{variant}"))
    for backup in ("soft_q_backup", "max_q_backup"):
        for variant in ("default", "dropout"):
            cases.append(pytest.param("CQL", variant, {backup: True}, id=f"CQL-{backup}-{variant}"))
    return cases


CASES = _cases()


@functools.cache
def _dataset(discrete: bool) -> Any:
    return make_dataset(discrete=discrete)


def _batches(name: str) -> list[Any]:
    discrete = algorithms()[name][1].endswith("discrete")
    dataset = _dataset(discrete)
    torch.manual_seed(0)
    return [sample_batch(name, dataset) for _ in range(N_UPDATES)]


def _train(
    name: str, variant: str, extra: dict[str, Any], sam: dict[str, Any] | None
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict[str, float]]]:
    discrete = algorithms()[name][1].endswith("discrete")
    options = VARIANTS[variant]
    algo, _ = build(
        name,
        sam=sam,
        encoder=options.get("encoder"),
        overrides={**options.get("overrides", {}), **extra},
        dataset=_dataset(discrete),
    )
    torch.manual_seed(1234)
    metrics = [algo.update(batch) for batch in _batches(name)]
    return params_of(algo), batchnorm_buffers(algo), metrics


def _check_law(
    name: str, variant: str, extra: dict[str, Any], sam: dict[str, Any], expect_bn: bool
) -> None:
    adam_params, adam_bn, _ = _train(name, variant, extra, None)
    sam_params, sam_bn, sam_metrics = _train(name, variant, extra, sam)

    sharpness = {(i, k): v for i, m in enumerate(sam_metrics) for k, v in m.items()}
    sharpness = {key: v for key, v in sharpness.items() if key[1].endswith("_sharpness")}
    assert sharpness, "no *_sharpness logged: SAM did not step"
    # L(w+e) - L(w) of two float32 losses is exact to ~1 ulp of the loss: a loss of 1000
    # (AWAC's actor) rounds at 6e-5, so the bound scales with the update's largest loss.
    scale = [max([1.0] + [abs(v) for k, v in m.items() if "loss" in k]) for m in sam_metrics]
    bad = {key: v for key, v in sharpness.items() if not abs(v) < TOLERANCE * scale[key[0]]}
    assert not bad, f"sharpness not ~0 with rho={sam['rho']} (update, key): {bad}"

    # BatchNorm counters: one per update and network, at the unperturbed pass only.
    assert len(sam_bn) == len(adam_bn)
    assert bool(adam_bn) == expect_bn
    counters = [(s, a) for s, a in zip(sam_bn, adam_bn, strict=True) if not s.is_floating_point()]
    assert [int(s) for s, _ in counters] == [int(a) for _, a in counters]
    if expect_bn and sam["rho"] > 0:
        # A ReLU unit dead on the whole batch, followed by BatchNorm, has a gradient of exactly
        # 0 at w and of ~1e-13 (rounding) at w + e; Adam normalises each coordinate and turns
        # the latter into an lr-sized step. That is Adam at a zero gradient, not the closure:
        # with rho = 0 (same matrix) parameters and statistics must match exactly.
        return
    assert len(sam_params) == len(adam_params)
    for i, (s, a) in enumerate(zip(sam_params, adam_params, strict=True)):
        torch.testing.assert_close(s, a, rtol=0, atol=TOLERANCE, msg=f"parameter #{i}")
    for s, a in zip(sam_bn, adam_bn, strict=True):
        torch.testing.assert_close(s, a, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("rho", [1e-9, 0.0], ids=["rho1e-9", "rho0"])
@pytest.mark.parametrize(("name", "variant", "extra"), CASES)
def test_sam_with_vanishing_rho_is_adam(
    name: str, variant: str, extra: dict[str, Any], rho: float
) -> None:
    _check_law(name, variant, extra, {"rho": rho}, expect_bn=variant == "batchnorm")


SUBSET = [
    ("SAC", "dropout"),
    ("CQL", "dropout"),
    ("BEAR", "default"),
    ("TD3", "dropout"),
    ("DQN", "dropout"),
    ("DiscreteSAC", "default"),
    ("BC", "batchnorm"),
    ("IQL", "batchnorm"),
    ("DecisionTransformer", "dropout"),
]


@pytest.mark.parametrize("sam", [{"every_k": 3}, {"adaptive": True}], ids=["every_k3", "adaptive"])
@pytest.mark.parametrize(("name", "variant"), SUBSET)
def test_vanishing_rho_law_holds_for_every_k_and_asam(
    name: str, variant: str, sam: dict[str, Any]
) -> None:
    rho = 0.0 if variant == "batchnorm" else 1e-9  # see _check_law
    _check_law(name, variant, {}, {"rho": rho, **sam}, expect_bn=variant == "batchnorm")
