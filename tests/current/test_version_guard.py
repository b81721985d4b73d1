"""flatrl.versions: the tensordict/torchrl guard that the patched TD-MPC2 runs at import.

A tested pair is silent, an untested but plausible pair warns once naming what was found and
what was tested, a pair that cannot work raises; FLATRL_VERSION_CHECK overrides. The last test
imports the patched tree's ``common`` package with faked versions, so it checks the patch that
wires the guard in, not only the function.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from flatrl import versions
from flatrl.versions import (
    TESTED_TDMPC2_STACKS,
    UnsupportedVersionsError,
    UntestedVersionsWarning,
    check_tdmpc2_stack,
)

TREE = Path(__file__).resolve().parents[2] / "build" / "tdmpc2" / "tdmpc2"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing warned yet and no override in the environment."""
    monkeypatch.setattr(versions, "_warned", set())
    monkeypatch.delenv(versions.ENV_VAR, raising=False)


@pytest.mark.parametrize("pair", sorted(TESTED_TDMPC2_STACKS))
def test_tested_pairs_are_silent(pair: tuple[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_tdmpc2_stack(*pair) == "tested"


def test_both_environments_pairs_are_listed() -> None:
    """The pins of requirements/tdmpc2.txt and requirements/current.txt are the tested pairs."""
    repo = Path(__file__).resolve().parents[2]
    for env in ("tdmpc2", "current"):
        lock = (repo / "requirements" / f"{env}.txt").read_text()
        pins = dict(
            line.split("==", 1) for line in lock.splitlines() if "==" in line and line[0] != "#"
        )
        assert (pins["tensordict"], pins["torchrl"]) in TESTED_TDMPC2_STACKS, env


def test_untested_pair_warns_once_naming_found_and_tested() -> None:
    with pytest.warns(UntestedVersionsWarning) as caught:
        assert check_tdmpc2_stack("0.14.4", "0.14.2") == "untested"
    message = str(caught[0].message)
    assert "found tensordict 0.14.4, torchrl 0.14.2" in message
    assert "tensordict==0.14.3 torchrl==0.14.1" in message
    assert "tensordict==0.13.0 torchrl==0.13.3" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_tdmpc2_stack("0.14.4", "0.14.2") == "untested"  # once per process


@pytest.mark.parametrize(
    ("tensordict", "torchrl", "why"),
    [
        ("0.15.3", "0.14.1", "torchrl 0.14.1 runs with tensordict 0.14.x only, not 0.15.3"),
        ("0.12.4", "0.12.0", "older than 0.13"),
        ("missing", "0.14.1", "tensordict not installed"),
    ],
)
def test_impossible_pair_raises_with_the_fix(
    tensordict: str, torchrl: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tensordict == "missing":  # not installed: the installed version is looked up as None
        monkeypatch.setattr(versions, "installed_version", lambda name: None)
        tensordict = None
    with pytest.raises(UnsupportedVersionsError, match="found tensordict") as err:
        check_tdmpc2_stack(tensordict, torchrl)
    assert why in str(err.value)
    assert "requirements/current.txt" in str(err.value)
    assert "FLATRL_VERSION_CHECK=warn" in str(err.value)


def test_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(versions.ENV_VAR, "warn")
    with pytest.warns(UntestedVersionsWarning, match="unsupported tensordict/torchrl"):
        assert check_tdmpc2_stack("0.15.3", "0.14.1") == "unsupported"
    monkeypatch.setenv(versions.ENV_VAR, "strict")
    with pytest.raises(UnsupportedVersionsError, match="strict"):
        check_tdmpc2_stack("0.14.4", "0.14.2")
    monkeypatch.setenv(versions.ENV_VAR, "off")
    assert check_tdmpc2_stack("0.15.3", "0.14.1") == "off"
    monkeypatch.setenv(versions.ENV_VAR, "loud")
    with pytest.raises(ValueError, match="FLATRL_VERSION_CHECK='loud' is not one of"):
        check_tdmpc2_stack("0.14.3", "0.14.1")


def test_installed_pair_is_read_from_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    found = {"tensordict": "0.15.3", "torchrl": "0.14.1"}
    monkeypatch.setattr(versions, "installed_version", found.get)
    with pytest.raises(UnsupportedVersionsError, match="found tensordict 0.15.3, torchrl 0.14.1"):
        check_tdmpc2_stack()


@pytest.mark.skipif(not (TREE / "common").is_dir(), reason=f"no patched TD-MPC2 tree at {TREE}")
@pytest.mark.parametrize(
    ("found", "expect"),
    [
        ({"tensordict": "0.15.3", "torchrl": "0.14.1"}, "UnsupportedVersionsError"),
        ({"tensordict": "0.14.4", "torchrl": "0.14.1"}, "UntestedVersionsWarning"),
        ({"tensordict": "0.14.3", "torchrl": "0.14.1"}, "imported_quietly"),
    ],
)
def test_importing_the_patched_tree_runs_the_guard(found: dict[str, str], expect: str) -> None:
    script = (
        "import sys, warnings\n"
        "import flatrl.versions as v\n"
        f"v.installed_version = {found!r}.get\n"
        f"sys.path.insert(0, {str(TREE)!r})\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    try:\n"
        "        import common\n"
        "    except v.UnsupportedVersionsError as e:\n"
        "        print('UnsupportedVersionsError', e)\n"
        "    else:\n"
        "        print(*([type(x.message).__name__ for x in w] or ['imported_quietly']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == expect, proc.stdout
