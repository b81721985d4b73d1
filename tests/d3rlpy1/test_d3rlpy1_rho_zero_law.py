"""The rho -> 0 law for every d3rlpy 1.1.1 algorithm: SAM(Adam) with rho = 0 or 1e-9 *is* Adam.

With a vanishing radius the second pass is the first at the same weights, so each update must
reproduce Adam's: every ``*_sharpness`` ~ 0, the same parameters and BatchNorm statistics and
counters after several updates, and the same random stream afterwards. A difference between the
passes other than the weights - sampled actions or dropout masks not replayed, targets
recomputed, BatchNorm statistics updated twice, a temperature/alpha stepped twice, gradients
leaking into another optimizer's parameters - breaks it. Every algorithm x {default, dropout,
batch norm} networks at rho = 0, and at rho = 1e-9 with default networks.
"""

from __future__ import annotations

import pytest
import torch
from d3rlpy1_support import (
    ENCODERS,
    adam,
    algorithm_names,
    batches,
    built,
    is_discrete,
    make_dataset,
    sam,
    state_of,
)

N_UPDATES = 5
TOLERANCE = 1e-6

CASES = [(name, encoder, 0.0) for name in algorithm_names() for encoder in ENCODERS] + [
    (name, "default", 1e-9) for name in algorithm_names()
]


@pytest.mark.parametrize(("name", "encoder", "rho"), CASES)
def test_sam_with_vanishing_rho_is_adam(name: str, encoder: str, rho: float) -> None:
    data = batches(make_dataset(is_discrete(name)), N_UPDATES)
    runs = {}
    for arm, factory in (("adam", adam), ("sam", sam(rho))):
        algo = built(name, factory, encoder=encoder)
        sharpness = [
            value
            for batch in data
            for key, value in algo.update(batch).items()
            if key.endswith("_sharpness")
        ]
        runs[arm] = (state_of(algo), sharpness, torch.get_rng_state())
    (adam_state, none, adam_rng), (sam_state, sharpness, sam_rng) = runs["adam"], runs["sam"]
    assert none == [] and len(sharpness) >= N_UPDATES
    assert max(abs(s) for s in sharpness) < TOLERANCE
    if rho == 0:
        assert all(s == 0.0 for s in sharpness)
    assert adam_state.keys() == sam_state.keys()
    for key, value in adam_state.items():
        if value.dtype == torch.long:  # BatchNorm's num_batches_tracked: moved once per update
            assert torch.equal(value, sam_state[key]), key
        else:
            torch.testing.assert_close(sam_state[key], value, atol=TOLERANCE, rtol=0, msg=key)
    assert torch.equal(adam_rng, sam_rng), "the random stream after training differs"
    if encoder == "batchnorm":
        counters = [v for k, v in sam_state.items() if k.endswith("num_batches_tracked")]
        assert counters and any(int(c) > 0 for c in counters)
