"""``SAMFactory(variant=...)``: LookSAM, Momentum-SAM and AE-SAM in every d3rlpy update.

The variant is a SAMFactory field: it builds the variant's optimizer, round-trips through the
config's JSON, names itself in errors, and with rho = 0 leaves Adam's parameters and BatchNorm
counters (the rho -> 0 law) across algorithms whose closures differ (sampled actions, target
noise, dropout, nested temperature steps, BatchNorm, discrete actions). With a real radius
Momentum-SAM logs no ``*_sharpness`` (it has no pass at w) instead of a made-up 0.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from d3rlpy_support import (
    algorithms,
    batchnorm_buffers,
    build,
    make_dataset,
    optimizers_of,
    params_of,
    require_patched_d3rlpy,
    sample_batch,
)

d3rlpy = require_patched_d3rlpy()

N_UPDATES = 4
VARIANTS: dict[str, dict[str, Any]] = {
    "looksam": {"variant": "looksam", "every_k": 2, "looksam_alpha": 0.7},
    "msam": {"variant": "msam"},
    "aesam": {"variant": "aesam", "aesam_c": 0.0},
}
CLASSES = {"looksam": "LookSAM", "msam": "MomentumSAM", "aesam": "AESAM"}
CASES = [
    ("SAC", {"encoder": {"dropout_rate": 0.2}}),
    ("TD3", {}),
    ("CQL", {}),
    ("BC", {"encoder": {"use_batch_norm": True}}),
    ("DQN", {}),
    ("DiscreteSAC", {}),
]


def _train(name: str, options: dict[str, Any], sam: dict[str, Any] | None) -> tuple:
    discrete = algorithms()[name][1].endswith("discrete")
    dataset = make_dataset(discrete=discrete)
    algo, _ = build(name, sam=sam, encoder=options.get("encoder"), dataset=dataset)
    torch.manual_seed(0)
    batches = [sample_batch(name, dataset) for _ in range(N_UPDATES)]
    torch.manual_seed(1234)
    metrics = [algo.update(batch) for batch in batches]
    return algo, params_of(algo), batchnorm_buffers(algo), metrics


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("name", "options"), CASES, ids=[c[0] for c in CASES])
def test_zero_radius_variant_is_adam(name: str, options: dict, variant: str) -> None:
    _, adam, adam_bn, _ = _train(name, options, None)
    algo, params, bn, _ = _train(name, options, {"rho": 0.0, **VARIANTS[variant]})
    kinds = {type(o.optim).__name__ for o in optimizers_of(algo).values()}
    assert kinds == {CLASSES[variant]}
    for i, (a, b) in enumerate(zip(params, adam, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"parameter #{i}")
    assert [int(t) for t in bn if not t.is_floating_point()] == [
        int(t) for t in adam_bn if not t.is_floating_point()
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_real_radius_reports_only_what_was_measured(variant: str) -> None:
    _, adam, _, _ = _train("SAC", {}, None)
    _, params, _, metrics = _train("SAC", {}, {"rho": 0.1, **VARIANTS[variant]})
    assert max(float((a - b).abs().max()) for a, b in zip(params, adam, strict=True)) > 1e-6
    sharp = [k for m in metrics for k in m if k.endswith("_sharpness")]
    if variant == "msam":
        assert not sharp  # no pass at w: nothing to report, and no fake 0
    else:
        assert "critic_sharpness" in metrics[0]  # the first update is a SAM step


def test_variant_fields_round_trip_and_name_the_factory() -> None:
    factory = d3rlpy.optimizers.SAMFactory(
        rho=0.05, variant="looksam", every_k=5, looksam_alpha=0.5
    )
    config = d3rlpy.algos.SACConfig(critic_optim_factory=factory)
    restored = d3rlpy.algos.SACConfig.deserialize(config.serialize()).critic_optim_factory
    assert (restored.variant, restored.every_k, restored.looksam_alpha) == ("looksam", 5, 0.5)
    with pytest.raises(ValueError, match="SAMFactory variant='fast' is not one of"):
        d3rlpy.optimizers.SAMFactory(variant="fast")
    with pytest.raises(ValueError, match="SAMFactory every_k=3 does not apply to"):
        d3rlpy.optimizers.SAMFactory(variant="aesam", every_k=3)
