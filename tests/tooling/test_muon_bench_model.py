"""The Muon bench's arithmetic model times exactly Newton-Schulz's matrix products.

``bench/muon_batched.py`` judges Muon against ``t_adam + t_products``, where ``ns-products`` is
timed in the same rounds as the updates. The model is only honest if that case does exactly
the FLOPs of Newton-Schulz on Muon's matrices (no more, which would excuse overhead; no less,
which would charge Muon for work it does not do), and if ``ns-alone`` is the real iteration.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import muon_batched  # noqa: E402
from flatrl.optim import Muon  # noqa: E402
from flatrl.optim.muon import newton_schulz_flops  # noqa: E402


@pytest.mark.parametrize("batched", [False, True])
def test_reference_cases_do_newton_schulz_flops_on_muons_shapes(batched: bool) -> None:
    torch.manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(24, 16)),  # tall: transposed to 16 x 24
        torch.nn.Parameter(torch.randn(16, 24)),  # same bucket as the tall one
        torch.nn.Parameter(torch.randn(3, 8, 8)),  # a stacked ensemble weight
    ]
    muon = Muon(params, lr=0.01, batched=batched, ns_steps=4)
    assert muon_batched.ns_buckets(muon) == {(16, 24): 2, (8, 8): 3}
    cases = muon_batched.ns_reference_cases(muon, "cpu")
    expected = sum(newton_schulz_flops(p.shape, 4) for p in params)
    assert muon_batched.update_flops(cases["ns-products"]) == expected
    assert muon_batched.update_flops(cases["ns-alone"]) == expected


def test_keep_freed_heap_applies_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's; elsewhere the bench runs with the default heap")
    assert muon_batched.keep_freed_heap() is True
