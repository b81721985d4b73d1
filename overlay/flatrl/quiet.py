"""Third-party output a flatrl user cannot act on, muted where it starts.

Every entry point should print its own progress and summary, not notices from code the user
did not write and cannot change. The one such notice today comes from old ``gym`` (0.26 and
earlier): importing it prints a four-line "Gym has been unmaintained since 2022" notice to
stderr. d3rlpy 2.8.1 still imports ``gym``, and TD-MPC2's Meta-World wrapper tries to, so on
today's stack (where ``gym`` is installed for d3rlpy) every d3rlpy script and every TD-MPC2
``train.py`` would start with it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys

__all__ = ["import_old_gym_quietly"]


def import_old_gym_quietly() -> None:
    """Import old ``gym`` now, if it is installed, without its import-time notice.

    Python imports a module once, so a later ``import gym`` (d3rlpy's, TD-MPC2's) is silent.
    Only the import's stderr is captured: when the import fails, nothing is cached and the
    importer that needs ``gym`` gets the real error itself. Without ``gym`` this does nothing.
    """
    if "gym" in sys.modules or importlib.util.find_spec("gym") is None:
        return
    with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
        importlib.import_module("gym")
