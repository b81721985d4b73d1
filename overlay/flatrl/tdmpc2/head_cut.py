"""Dropout for a rollout whose first time steps were cut off, with the masks of the uncut one.

With ``sam_scope=dynamics`` SAM's second pass perturbs the dynamics only, so at ``t = 0`` (the
encoded first observation, before any dynamics step) the reward head's and the Q ensemble's
predictions are those of the first pass: the patched tree reuses those loss terms and runs the
heads on ``t >= 1`` only. The Q ensemble's dropout, though, draws one mask over its whole input
(``(members, horizon, batch, width)`` under ``torch.vmap(randomness="different")``); a shorter
input would draw different numbers for every row and break the rho -> 0 law. Inside
:func:`leading_rows_cut` every ``nn.Dropout`` of the module instead draws the mask for the uncut
shape, with the same random calls as the first pass, and keeps the rows that are present:
the second pass gets bit-for-bit the masks the first one used (``x * dropout(ones) ==
dropout(x)``; tested against the uncut pass in ``tests/tdmpc2/test_tdmpc2_sam_second_pass.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeadingRowsCutDropout", "leading_rows_cut"]


class LeadingRowsCutDropout(nn.Module):
    """``nn.Dropout(p)`` of an input missing its first ``rows`` rows along dimension 0."""

    def __init__(self, p: float, rows: int) -> None:
        super().__init__()
        self.p = p
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = x.new_ones((x.shape[0] + self.rows, *x.shape[1:]))
        return x * F.dropout(full, self.p, self.training)[self.rows :]


@contextmanager
def leading_rows_cut(module: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, every ``nn.Dropout`` under ``module`` masks as if its input still had
    its first ``rows`` rows (a no-op for ``rows == 0``); the originals are put back on exit."""
    if rows == 0:
        yield
        return
    swapped = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Dropout)
    ]
    try:
        for parent, name, child in swapped:
            stand_in = LeadingRowsCutDropout(child.p, rows)
            stand_in.train(child.training)
            setattr(parent, name, stand_in)
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
