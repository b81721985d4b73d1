"""Compiled extensions of a patched tree, built as its pin says (``build_*`` keys).

An upstream with C/Cython extensions (d3rlpy 1.x compiles ``d3rlpy/dataset.pyx``) cannot be
imported in place from its source tree: its environment's ``.pth`` line needs the built
modules next to the sources. The pin names the environment that builds them (``build_env``,
whose requirements hold e.g. ``cython<3``), the requirements checked there first
(``build_requires``), the command (``build_ext``) and the files it produces that the tree keeps
(``build_outputs``, globs; they are git-ignored in the tree, so they never count as edits).

The command runs on a copy of the tree's committed files, never in the tree: generators such as
``cythonize`` rewrite tracked files (``dataset.cpp``) in place, which would leave the tree dirty.
Only the outputs are copied back. ``apply`` builds in its staging tree before swapping it in,
so a failed build leaves the previous tree untouched, like a failed patch.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .common import ToolError, extract_commit, last_error_line
from .pins import Pin

# Run in build_env: which of the requirements are not met there, one line each.
_CHECK_REQUIRES = """
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for text in sys.argv[1:]:
    req = Requirement(text)
    try:
        found = version(req.name)
    except PackageNotFoundError:
        print(f"{text}: not installed")
        continue
    if not req.specifier.contains(found, prereleases=True):
        print(f"{text}: {req.name} {found} is installed")
"""


def output_files(pin: Pin, tree: Path) -> list[Path]:
    """The build outputs present in the tree (empty when it has not been built)."""
    return sorted({p for pattern in pin.build_outputs for p in tree.glob(pattern)})


def is_built(pin: Pin, tree: Path) -> bool:
    """Whether every output glob of the pin matches a file in the tree (true without build_ext)."""
    return all(any(tree.glob(pattern)) for pattern in pin.build_outputs) if pin.build_ext else True


def check_requires(pin: Pin, python: Path) -> None:
    """Fail, naming each unmet requirement and the fix, before anything is compiled."""
    if not pin.build_requires:
        return
    proc = subprocess.run(
        [str(python), "-c", _CHECK_REQUIRES, *pin.build_requires], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise ToolError(f"{pin.name}: cannot check build_requires with {python}: {proc.stderr}")
    unmet = proc.stdout.strip().splitlines()
    if unmet:
        raise ToolError(
            f"{pin.name}: the build environment {pin.build_env!r} ({python}) does not meet "
            f"build_requires of {pin.path.name}: {'; '.join(unmet)}. Add them to "
            f"requirements/{pin.build_env}.in/.txt and run `make setup`."
        )


def build_extensions(pin: Pin, tree: Path, venv_root: Path) -> list[Path]:
    """Build the committed tree's extensions in build_env and copy the outputs into it."""
    if not pin.build_ext:
        return []
    python = pin.python(venv_root)
    check_requires(pin, python)
    with tempfile.TemporaryDirectory(prefix=f"flatrl-build-{pin.name}-") as tmp:
        copy = Path(tmp) / pin.name
        extract_commit(tree, "HEAD", copy)
        proc = subprocess.run(
            [str(python), *pin.build_ext], cwd=copy, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise ToolError(
                f"{pin.name}: `{' '.join(pin.build_ext)}` failed in {pin.build_env!r}: "
                f"{last_error_line(proc.stderr)}\n{proc.stderr[-3000:]}"
            )
        built = output_files(pin, copy)
        if not built or not is_built(pin, copy):
            raise ToolError(
                f"{pin.name}: `{' '.join(pin.build_ext)}` succeeded but produced nothing "
                f"matching build_outputs {pin.build_outputs}; fix build_outputs in {pin.path}."
            )
        for old in output_files(pin, tree):
            old.unlink()
        copied = []
        for path in built:
            target = tree / path.relative_to(copy)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(target)
    return copied


def pip_download_args(pin: Pin, venv_root: Path, default_python: str) -> list[str]:
    """The interpreter and flags pip needs to download (and prepare) this pin's sdist.

    pip prepares an sdist's metadata by running its setup.py; with ``build_isolation = false``
    that runs in build_env (whose Cython/numpy setup.py imports), not in an isolated one.
    """
    if pin.build_isolation:
        return [default_python, "-m", "pip", "download"]
    return [str(pin.python(venv_root)), "-m", "pip", "download", "--no-build-isolation"]
