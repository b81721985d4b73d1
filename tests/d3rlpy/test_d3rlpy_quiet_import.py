"""Importing the patched d3rlpy prints none of old gym's "unmaintained" notice, and d3rlpy still
has the gym it imports (patch 0007, flatrl.quiet)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from d3rlpy_support import require_patched_d3rlpy

require_patched_d3rlpy()


def test_import_d3rlpy_prints_no_old_gym_notice():
    if importlib.util.find_spec("gym") is None:
        pytest.skip("old gym is not installed in this environment, so it has no notice to mute")
    code = "import sys, d3rlpy; print('gym' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"  # d3rlpy imported gym, as it needs
    assert "unmaintained" not in proc.stderr, proc.stderr
    assert "Please upgrade to Gymnasium" not in proc.stderr, proc.stderr
