"""Build patched upstream trees from pinned sources, and keep the patch series alive.

The model is Electron's / devtool's: a patched tree under ``build/<name>/`` is a git repository
whose first commit is the pristine upstream (tagged ``upstream``) and whose following commits are
our patches, one per entry of ``patches/<name>/series``. Because patches are commits, refreshing
them from an edited tree and rebasing them onto a newer upstream are git operations, not
hand-written diff logic.

Several pins may be series (maintenance lines) of one upstream, e.g. d3rlpy 2.8.1
(``vendor/d3rlpy.toml``) and 1.1.1 (``vendor/d3rlpy1.toml``, ``package = "d3rlpy"``): a pin's
name is its file's stem and names its patches/, build/ and cache folders, so every command
treats each series like any other upstream.

Modules: ``pins`` (vendor/*.toml), ``sources`` (override, cache, network; verification),
``patchfiles`` (series, headers, export), ``tree`` (build, stamp, status, refresh), ``build``
(compiled extensions in the pin's ``build_env``), ``rebase``
(the replay state machine), ``wheel`` (versioned wheels, .pth lines), ``cli`` (subcommands).
Only the standard library is used, so the tool runs before any environment exists; the entry
point is ``apply_patches.py`` at the repository root.
"""

from .common import (
    GIT_IDENTITY,
    TREE_EXCLUDES,
    UPSTREAM_TAG,
    SourceUnavailable,
    ToolError,
    run_git,
    sha256_file,
    tree_sha256,
)
from .patchfiles import Patch, read_series, series_id
from .pins import Pin
from .sources import Sources
from .tree import Project

__all__ = [
    "GIT_IDENTITY",
    "TREE_EXCLUDES",
    "UPSTREAM_TAG",
    "Patch",
    "Pin",
    "Project",
    "SourceUnavailable",
    "Sources",
    "ToolError",
    "read_series",
    "run_git",
    "series_id",
    "sha256_file",
    "tree_sha256",
]
