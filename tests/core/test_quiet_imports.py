"""flatrl.quiet: old gym's import-time notice is muted; a failing import still fails loudly.

A stand-in ``gym`` package on a temporary path plays both parts, so this runs in every
environment whether or not the real gym is installed; each case runs in a child process because
an import happens once per interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flatrl.quiet", reason="flatrl is not installed")

NOTICE = "Gym has been unmaintained since 2022 (stand-in notice)"


def _fake_gym(root: Path, body: str) -> Path:
    package = root / "gym"
    package.mkdir()
    (package / "__init__.py").write_text(body)
    return root


def _run(path: Path, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), *sys.path]))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_notice_is_muted_and_gym_stays_imported(tmp_path: Path):
    root = _fake_gym(tmp_path, f"import sys\nprint({NOTICE!r}, file=sys.stderr)\nVALUE = 42\n")
    code = (
        "from flatrl.quiet import import_old_gym_quietly\n"
        "import_old_gym_quietly()\n"
        "import gym\n"
        "print(gym.VALUE)\n"
    )
    proc = _run(root, code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
    assert NOTICE not in proc.stderr
    # without the call, the stand-in does print: the test above is not vacuous
    assert NOTICE in _run(root, "import gym").stderr


def test_a_failing_gym_import_still_raises_its_own_error_later(tmp_path: Path):
    root = _fake_gym(tmp_path, "raise RuntimeError('gym is broken: reinstall it')\n")
    code = (
        "from flatrl.quiet import import_old_gym_quietly\n"
        "import_old_gym_quietly()\n"
        "print('still running')\n"
        "import gym\n"
    )
    proc = _run(root, code)
    assert "still running" in proc.stdout
    assert proc.returncode != 0
    assert "RuntimeError: gym is broken: reinstall it" in proc.stderr


def test_without_gym_nothing_is_imported(tmp_path: Path):
    code = (
        "import importlib.util, sys\n"
        "from flatrl.quiet import import_old_gym_quietly\n"
        "absent = importlib.util.find_spec('gym') is None\n"
        "import_old_gym_quietly()\n"
        "print(absent, 'gym' in sys.modules)\n"
    )
    # an empty folder first on the path changes nothing: whether gym exists is the env's
    proc = _run(tmp_path, code)
    assert proc.returncode == 0, proc.stderr
    absent, imported = proc.stdout.split()
    assert imported == ("False" if absent == "True" else "True")
