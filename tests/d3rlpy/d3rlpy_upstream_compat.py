"""pytest plugin for d3rlpy's own v2.8.1 tests in .venv/d3rlpy (``-p d3rlpy_upstream_compat``).

d3rlpy 2.8.1 brings numpy 2, but its tests still drive environments through old ``gym`` 0.26,
whose passive environment checker tests ``isinstance(done, (bool, np.bool8))``; numpy 2 removed
the ``np.bool8`` alias (it was ``np.bool_``), so every ``env.step`` under gym's checker raised
AttributeError (4 failures in ``tests/algos/qlearning/test_iterators.py``). Restoring the alias
in the test process fixes the environment without editing upstream's tests or gym.
"""

from __future__ import annotations

import numpy as np

if not hasattr(np, "bool8"):
    np.bool8 = np.bool_  # type: ignore[attr-defined]
