"""Version guard for the patched TD-MPC2: is this tensordict/torchrl pair one we tested?

TD-MPC2's Q ensemble lives on tensordict internals (``from_modules``, ``to_module``) whose
behaviour changed between releases (0.14 made ``to_module`` re-wrap tensors as parameters,
which silently cut the ensemble's gradients before our compatibility patch). A pair we never
ran may work or may train a different agent without any error, so importing the patched tree
(its ``common`` package calls :func:`check_tdmpc2_stack`) says what it found:

* a tested pair (:data:`TESTED_TDMPC2_STACKS`): silent;
* an untested pair that is otherwise plausible (tensordict >= 0.13, the same minor series as
  torchrl): one :class:`UntestedVersionsWarning` per process, naming both pairs: researchers
  on newer releases can still run, and they are told what was not checked;
* a pair that cannot work (tensordict older than 0.13 lacks ``to_module``'s
  ``preserve_module_state``; torchrl X.Y only runs with tensordict X.Y.*): an
  :class:`UnsupportedVersionsError` at import, instead of a failure deep inside the first update.

``FLATRL_VERSION_CHECK`` overrides this: ``off`` checks nothing, ``strict`` raises for untested
pairs too (CI), ``warn`` only warns even for unsupported pairs (at the user's own risk).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import warnings

__all__ = [
    "ENV_VAR",
    "TESTED_TDMPC2_STACKS",
    "UnsupportedVersionsError",
    "UntestedVersionsWarning",
    "check_tdmpc2_stack",
    "installed_version",
]

ENV_VAR = "FLATRL_VERSION_CHECK"
_MODES = ("default", "warn", "strict", "off")

# (tensordict, torchrl) -> the environment that tests it (requirements/<env>.txt).
TESTED_TDMPC2_STACKS: dict[tuple[str, str], str] = {
    ("0.13.0", "0.13.3"): "tdmpc2 (upstream-pinned)",
    ("0.14.3", "0.14.1"): "current",
}
_OLDEST_TENSORDICT = (0, 13)

_warned: set[tuple[str | None, str | None]] = set()


class UntestedVersionsWarning(UserWarning):
    """The installed tensordict/torchrl pair was not tested with the patched TD-MPC2."""


class UnsupportedVersionsError(ImportError):
    """The installed tensordict/torchrl pair cannot run the patched TD-MPC2."""


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version string (``0.14.3.dev1+g12`` -> (0, 14, 3))."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def _problem(tensordict: str | None, torchrl: str | None) -> str | None:
    """Why this pair cannot work, or None when it might."""
    if tensordict is None or torchrl is None:
        missing = [n for n, v in (("tensordict", tensordict), ("torchrl", torchrl)) if v is None]
        return f"{' and '.join(missing)} not installed"
    td, rl = _release(tensordict), _release(torchrl)
    if td[:2] < _OLDEST_TENSORDICT:
        return "tensordict older than 0.13 has no to_module(preserve_module_state=...)"
    if td[:2] != rl[:2]:
        return (
            f"torchrl {torchrl} runs with tensordict "
            f"{'.'.join(map(str, rl[:2]))}.x only, not {tensordict}"
        )
    return None


def _message(tensordict: str | None, torchrl: str | None, headline: str) -> str:
    tested = "; ".join(
        f"tensordict=={td} torchrl=={rl} (environment {env})"
        for (td, rl), env in TESTED_TDMPC2_STACKS.items()
    )
    return (
        f"{headline}: found tensordict {tensordict or 'missing'}, torchrl {torchrl or 'missing'}. "
        f"Tested with the patched TD-MPC2: {tested}. Install a tested pair, e.g. "
        "`pip install -c requirements/constraints.txt -r requirements/current.txt`, or set "
        f"{ENV_VAR}=warn to run anyway ({ENV_VAR}=off silences the check)."
    )


def check_tdmpc2_stack(
    tensordict: str | None = None, torchrl: str | None = None, *, mode: str | None = None
) -> str:
    """Check the tensordict/torchrl pair for the patched TD-MPC2; returns what was decided.

    Returns ``"tested"``, ``"untested"`` (warned), ``"unsupported"`` (warned in ``warn`` mode)
    or ``"off"``. Raises :class:`UnsupportedVersionsError` for a pair that cannot work (and, in
    ``strict`` mode, for any untested pair). The versions default to the installed ones; the
    mode defaults to ``$FLATRL_VERSION_CHECK`` (``default`` when unset).
    """
    mode = (mode if mode is not None else os.environ.get(ENV_VAR, "default")).strip().lower()
    if mode in ("", "1", "on"):
        mode = "default"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not one of {', '.join(_MODES)}.")
    if mode == "off":
        return "off"
    tensordict = tensordict if tensordict is not None else installed_version("tensordict")
    torchrl = torchrl if torchrl is not None else installed_version("torchrl")
    if (tensordict, torchrl) in TESTED_TDMPC2_STACKS:
        return "tested"
    problem = _problem(tensordict, torchrl)
    if problem is not None and mode != "warn":
        raise UnsupportedVersionsError(
            _message(tensordict, torchrl, f"the patched TD-MPC2 cannot run here ({problem})")
        )
    if problem is None and mode == "strict":
        raise UnsupportedVersionsError(
            _message(tensordict, torchrl, f"untested tensordict/torchrl ({ENV_VAR}=strict)")
        )
    if (tensordict, torchrl) not in _warned:
        _warned.add((tensordict, torchrl))
        headline = (
            f"unsupported tensordict/torchrl ({problem})"
            if problem
            else "untested tensordict/torchrl for the patched TD-MPC2"
        )
        warnings.warn(_message(tensordict, torchrl, headline), UntestedVersionsWarning, 2)
    return "unsupported" if problem else "untested"
