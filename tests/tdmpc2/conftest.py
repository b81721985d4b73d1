"""Fixtures of the TD-MPC2 patch-series tests; the helpers live in tdmpc2_support.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from tdmpc2_support import SKIP_REASON, TREE


@pytest.fixture(scope="session")
def tree() -> Path:
    """The patched tree's ``tdmpc2/`` folder (skips the test if it cannot be used)."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    return TREE / "tdmpc2"
