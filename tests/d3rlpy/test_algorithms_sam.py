"""Every algorithm (and FQE) trains with SAM through closures, and is untouched with Adam."""

from __future__ import annotations

import math

import pytest
from d3rlpy_support import (
    algorithms,
    build,
    count_sam_closures,
    require_patched_d3rlpy,
    sample_batch,
)

require_patched_d3rlpy()

ACTOR_CRITIC = {"actor_sharpness", "critic_sharpness"}
TEMP = {"temp_sharpness"}
ALPHA = {"alpha_sharpness"}
SINGLE = {"loss_sharpness"}
# The sharpness keys each algorithm's update reports under SAM: one per SAM-stepped optimizer,
# the nested ones (SAC's temperature, CQL's and BEAR's alpha) included.
EXPECTED_SHARPNESS = {
    "SAC": ACTOR_CRITIC | TEMP,
    "CQL": ACTOR_CRITIC | TEMP | ALPHA,
    "CalQL": ACTOR_CRITIC | TEMP | ALPHA,
    "IQL": ACTOR_CRITIC,
    "DDPG": ACTOR_CRITIC,
    "TD3": ACTOR_CRITIC,
    "TD3PlusBC": ACTOR_CRITIC,
    "AWAC": ACTOR_CRITIC,
    "CRR": ACTOR_CRITIC,
    "BCQ": ACTOR_CRITIC | {"vae_sharpness"},
    "BEAR": ACTOR_CRITIC | TEMP | ALPHA | {"imitator_sharpness"},
    "PLAS": ACTOR_CRITIC,
    "PLASWithPerturbation": ACTOR_CRITIC,
    "ReBRAC": ACTOR_CRITIC,
    "PRDC": ACTOR_CRITIC,
    "BC": SINGLE,
    "DQN": SINGLE,
    "DoubleDQN": SINGLE,
    "NFQ": SINGLE,
    "DiscreteCQL": SINGLE,
    "DiscreteBCQ": SINGLE,
    "DiscreteSAC": ACTOR_CRITIC | TEMP,
    "DiscreteBC": SINGLE,
    "DecisionTransformer": SINGLE,
    "DiscreteDecisionTransformer": SINGLE,
    "TACR": ACTOR_CRITIC,
    "FQE": SINGLE,
    "DiscreteFQE": SINGLE,
}
N_UPDATES = 3


AVAILABLE = sorted(algorithms())


def test_every_algorithm_is_covered() -> None:
    # every algorithm of the installed d3rlpy (2.8.1: all of these; 2.7.0: no PRDC, TACR)
    assert set(AVAILABLE) <= set(EXPECTED_SHARPNESS)
    assert len(AVAILABLE) >= len(EXPECTED_SHARPNESS) - 2


def _run(name: str, sam: dict | None) -> tuple[list[dict[str, float]], dict[str, int]]:
    algo, dataset = build(name, sam=sam)
    metrics = []
    with count_sam_closures() as counts:
        for _ in range(N_UPDATES):
            metrics.append(algo.update(sample_batch(name, dataset)))
    return metrics, counts


@pytest.mark.parametrize("name", AVAILABLE)
def test_sam_adds_finite_sharpness_and_adam_adds_nothing(name: str) -> None:
    adam_metrics, adam_counts = _run(name, sam=None)
    sam_metrics, sam_counts = _run(name, sam={"rho": 0.05})

    assert adam_counts == {"sam_steps": 0, "closures": 0, "plain_steps": 0}
    for metrics in adam_metrics:
        assert not any(key.endswith("_sharpness") for key in metrics), metrics

    # The keys of the last update: actor updates of some algorithms start after a warm-up.
    sharpness = {k: v for k, v in sam_metrics[-1].items() if k.endswith("_sharpness")}
    assert set(sharpness) == EXPECTED_SHARPNESS[name]
    assert set(sam_metrics[-1]) == set(adam_metrics[-1]) | set(sharpness)
    for metrics in sam_metrics:
        for key, value in metrics.items():
            assert math.isfinite(value), (key, value)

    # Every SAM step got a closure and called it exactly once.
    assert sam_counts["sam_steps"] >= N_UPDATES
    assert sam_counts["closures"] == sam_counts["sam_steps"]
    assert sam_counts["plain_steps"] == 0
