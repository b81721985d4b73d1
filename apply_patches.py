#!/usr/bin/env python3
"""Build patched upstream trees from pinned sources, and keep the patch series alive.

The entry point of the ``tools/patchset`` package (stdlib only, so it runs before any
environment exists). Commands (see ``--help`` of each):

* ``apply [NAME...]``   build trees atomically (a temporary tree swapped in on success)
* ``status [NAME...]``  pin, applied patches, edits not yet exported, staleness of patches/
* ``refresh NAME``      export the commits above ``upstream`` back into patches/NAME/
* ``rebase NAME --to X`` replay the series onto another upstream release or commit
* ``vendor [NAME...]``  obtain and verify the pinned sources into the cache only
* ``version NAME``      the wheel version of a patched release (``2.8.1+flatrl.<series id>``)
* ``wheel [NAME...]``   build wheels of the patched trees into dist/
* ``pth [NAME...]``     write the .pth line that lets a pin's ``env`` import its tree

Source resolution for each upstream, in order: an override (``<NAME>_SOURCE`` environment
variable or ``--source NAME=PATH``) naming a local sdist, unpacked tree, git checkout or bare
mirror; then the download cache (``$FLATRL_CACHE``, default ``~/.cache/flatrl``); then the
network (``pip download`` for an sdist, ``git fetch`` for a git pin). Whatever is taken is
verified against the pin (sha256 of the sdist, commit id, or sha256 of the unpacked tree).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))

from patchset import *  # noqa: E402,F403  (the names tests and scripts import from here)
from patchset import __all__  # noqa: E402,F401
from patchset.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
