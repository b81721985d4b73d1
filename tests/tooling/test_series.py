"""Several series (maintenance lines) of one upstream, and trees with compiled extensions.

d3rlpy is pinned twice: 2.8.1 (vendor/d3rlpy.toml) and the 1.x line at 1.1.1
(vendor/d3rlpy1.toml), one PyPI project with two names, patch series, trees and environments.
1.1.1 compiles a Cython extension that must be built (Cython < 3, no build isolation, in its own
environment) for the tree to be importable in place; the pin says so in its ``build_*`` keys.
These tests drive the tool's command line on toy releases made inside each test.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "apply_patches.py"
sys.path.insert(0, str(REPO))
import apply_patches  # noqa: E402

GIT_ENV = {**os.environ, **apply_patches.GIT_IDENTITY}
# The toy's "extension build": writes toy/_ext.bin (the product) and, like cythonize, rewrites
# a tracked file (toy/gen.c); FAIL in the environment makes it fail.
BUILD = (
    "import os, pathlib, sys\n"
    "if os.environ.get('TOY_BUILD_FAIL'): sys.exit('toy build failed: no compiler')\n"
    "pathlib.Path('toy/gen.c').write_text('regenerated\\n')\n"
    "pathlib.Path('toy/_ext.bin').write_text(pathlib.Path('toy/__init__.py').read_text())\n"
)

FILLER = "".join(f"# line {i}\n" for i in range(8))


def make_sdist(path: Path, version: str, files: dict[str, str]) -> Path:
    sdist = path / f"toy-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f"toy-{version}/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return sdist


def cache_release(tmp_path: Path, series: str, version: str, files: dict[str, str]) -> str:
    """Put toy-<version>.tar.gz in the cache folder of pin `series`; return its sha256."""
    folder = tmp_path / "cache" / series
    folder.mkdir(parents=True, exist_ok=True)
    sdist = make_sdist(folder, version, files)
    return hashlib.sha256(sdist.read_bytes()).hexdigest()


def write_pin(root: Path, name: str, version: str, sha: str, extra: str = "") -> None:
    (root / "vendor").mkdir(parents=True, exist_ok=True)
    (root / "patches" / name).mkdir(parents=True, exist_ok=True)
    (root / "patches" / name / "series").touch()
    (root / "vendor" / f"{name}.toml").write_text(
        f'name = "{name}"\nkind = "pypi-sdist"\npackage = "toy"\nversion = "{version}"\n'
        f'sha256 = "{sha}"\n{extra}'
    )


def tool(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cache = root.parent / "cache"
    return subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root), "--cache", str(cache), "--offline", *args],
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
    )


def commit_patch(root: Path, name: str, line: str) -> None:
    tree = root / "build" / name
    with open(tree / "toy" / "__init__.py", "a") as handle:
        handle.write(line + "\n")
    message = f"Add {line}\n\nWhy: a test needs it.\n\nUpstream-Status: Pending"
    subprocess.run(["git", "commit", "-qam", message], cwd=tree, env=GIT_ENV, check=True)
    assert tool(root, "refresh", name).returncode == 0


def builder_env(tmp_path: Path) -> Path:
    """A folder of environments holding 'builder', whose python is this test's interpreter."""
    python = tmp_path / "venvs" / "builder" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would lose
    python.chmod(0o755)  # the venv (python finds pyvenv.cfg beside the link, not the target)
    return tmp_path / "venvs"


def module(root: Path, series: str) -> str:
    return (root / "build" / series / "toy" / "__init__.py").read_text()


def head(tree: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tree, text=True, capture_output=True, check=True
    ).stdout.strip()


def test_two_series_of_one_upstream_are_independent(tmp_path: Path) -> None:
    """Two pins of package toy (2.0 and the 1.x line): own patches, trees, status and rebase."""
    root = tmp_path / "project"
    for series, version in (("toy", "2.0"), ("toy1", "1.1"), ("toy1", "1.2")):
        text = f"V = '{version}'\n" + FILLER  # our patches append, far from line 1
        sha = cache_release(tmp_path, series, version, {"toy/__init__.py": text})
        if version != "1.2":
            write_pin(root, series, version, sha)
    assert tool(root, "apply").returncode == 0
    commit_patch(root, "toy", "TWO = 2")
    commit_patch(root, "toy1", "ONE = 1")
    assert module(root, "toy1") == f"V = '1.1'\n{FILLER}ONE = 1\n"
    assert module(root, "toy") == f"V = '2.0'\n{FILLER}TWO = 2\n"

    status = tool(root, "status")
    assert status.stdout.count("series of toy: toy, toy1") == 2, status.stdout
    assert "toy1: pinned toy==1.1" in status.stdout
    assert tool(root, "refresh", "--check").returncode == 0

    rebased = tool(root, "rebase", "toy1", "--to", "1.2")
    assert rebased.returncode == 0, rebased.stderr
    assert 'version = "1.2"' in (root / "vendor" / "toy1.toml").read_text()
    assert 'version = "2.0"' in (root / "vendor" / "toy.toml").read_text()
    assert module(root, "toy1") == f"V = '1.2'\n{FILLER}ONE = 1\n"
    assert tool(root, "refresh", "--check").returncode == 0
    assert tool(root, "apply").stdout.count("up to date") == 2


def test_a_pin_named_unlike_its_file_is_refused(tmp_path: Path) -> None:
    """`name = "toy"` in toy1.toml would make both series share patches/toy and build/toy."""
    root = tmp_path / "project"
    write_pin(root, "toy1", "1.1", "0" * 64)
    pin = root / "vendor" / "toy1.toml"
    pin.write_text(pin.read_text().replace('name = "toy1"', 'name = "toy"'))
    result = tool(root, "status")
    assert result.returncode == 2
    assert "differs from the file name 'toy1'" in result.stderr and "package =" in result.stderr


def test_two_series_cannot_share_an_environment(tmp_path: Path) -> None:
    root = tmp_path / "project"
    for series, version in (("toy", "2.0"), ("toy1", "1.1")):
        sha = cache_release(tmp_path, series, version, {"toy/__init__.py": "V = 1\n"})
        write_pin(root, series, version, sha, 'env = "shared"\n')
    assert tool(root, "apply").returncode == 0
    result = tool(root, "pth", "--venv", str(tmp_path / "venvs"))
    assert result.returncode == 2
    assert "two series of toy" in result.stderr and "['shared']" in result.stderr


@pytest.fixture
def built_release(tmp_path: Path) -> tuple[Path, Path]:
    """A toy 1.1 whose tree needs a build step, run by the pin's build_env ('builder')."""
    venvs = builder_env(tmp_path)
    files = {"toy/__init__.py": "V = 1\n", "toy/gen.c": "shipped\n", "build.py": BUILD}
    sha = cache_release(tmp_path, "toy1", "1.1", files)
    root = tmp_path / "project"
    write_pin(
        root,
        "toy1",
        "1.1",
        sha,
        'build_env = "builder"\nbuild_isolation = false\nbuild_requires = ["pytest"]\n'
        'build_ext = ["build.py"]\nbuild_outputs = ["toy/_ext.*"]\n',
    )
    return root, venvs


def test_apply_builds_the_extensions_without_dirtying_the_tree(built_release) -> None:
    root, venvs = built_release
    result = tool(root, "apply", "--venv", str(venvs))
    assert result.returncode == 0, result.stderr
    tree = root / "build" / "toy1"
    assert (tree / "toy" / "_ext.bin").read_text() == "V = 1\n"
    assert (tree / "toy" / "gen.c").read_text() == "shipped\n"  # built on a copy
    status = tool(root, "status", "toy1")
    assert "uncommitted edits: none" in status.stdout, status.stdout
    assert "extensions (built in builder): toy/_ext.bin" in status.stdout
    assert tool(root, "refresh", "--check").returncode == 0
    # a patch rebuilds the extension from the patched sources
    commit_patch(root, "toy1", "PATCHED = True")
    (tree / "toy" / "_ext.bin").unlink()  # e.g. `git clean -x`: not up to date any more
    rebuilt = tool(root, "apply", "--venv", str(venvs))
    assert rebuilt.returncode == 0 and "built" in rebuilt.stdout, rebuilt.stderr
    assert (tree / "toy" / "_ext.bin").read_text() == "V = 1\nPATCHED = True\n"


def test_a_failed_build_leaves_the_previous_tree(built_release) -> None:
    root, venvs = built_release
    assert tool(root, "apply", "--venv", str(venvs)).returncode == 0
    tree = root / "build" / "toy1"
    commit_patch(root, "toy1", "NEXT = 2")
    before = head(tree)
    subprocess.run(["git", "reset", "-q", "--hard", "HEAD^"], cwd=tree, check=True)
    old = head(tree)
    assert old != before
    failed = tool(root, "apply", "--force", "--venv", str(venvs), env={"TOY_BUILD_FAIL": "1"})
    assert failed.returncode == 2 and "toy build failed: no compiler" in failed.stderr
    assert head(tree) == old and (tree / "toy" / "_ext.bin").read_text() == "V = 1\n"
    assert not [p for p in (root / "build").iterdir() if p.name.startswith(".")]


def test_unmet_build_requirements_and_a_missing_environment_are_named(built_release) -> None:
    root, venvs = built_release
    pin = root / "vendor" / "toy1.toml"
    pin.write_text(pin.read_text().replace('["pytest"]', '["pytest<1", "no-such-dist"]'))
    unmet = tool(root, "apply", "--venv", str(venvs))
    assert unmet.returncode == 2
    assert "pytest<1: pytest" in unmet.stderr and "no-such-dist: not installed" in unmet.stderr
    assert "requirements/builder.in" in unmet.stderr
    assert not (root / "build" / "toy1").exists()
    missing = tool(root, "apply", "--venv", str(venvs.parent / "none"))
    assert missing.returncode == 2 and "run `make setup`" in missing.stderr
    pin.write_text(pin.read_text().replace('build_env = "builder"\n', ""))
    no_env = tool(root, "status")
    assert no_env.returncode == 2 and "need build_env" in no_env.stderr


def test_the_real_pins_are_two_series_of_d3rlpy() -> None:
    names = {p.stem: apply_patches.Pin.load(p) for p in (REPO / "vendor").glob("d3rlpy*.toml")}
    assert {pin.upstream for pin in names.values()} == {"d3rlpy"}
    one = names["d3rlpy1"]
    assert one.version == "1.1.1" and not one.build_isolation
    assert "cython<3" in one.build_requires and one.build_env in one.envs
    assert not set(one.envs) & set(names["d3rlpy"].envs)


def test_a_series_wheel_is_built_in_its_environment_and_kept_apart(tmp_path: Path) -> None:
    """The 1.x wheel is built by build_env's python into <dist>/<wheel_subdir>, so a
    `pip install dist/*.whl` of the main series never picks up two releases of one package."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    venvs = builder_env(tmp_path)
    setup = 'from setuptools import setup\nsetup(name="toy", version="1.1", packages=["toy"])\n'
    files = {"setup.py": setup, "toy/__init__.py": "V = 1\n"}
    root = tmp_path / "project"
    extra = 'version_file = "setup.py"\nwheel_subdir = "toy1"\nbuild_env = "builder"\n'
    write_pin(root, "toy1", "1.1", cache_release(tmp_path, "toy1", "1.1", files), extra)
    assert tool(root, "apply", "--venv", str(venvs)).returncode == 0
    dist = tmp_path / "dist"
    # --python names an interpreter that does not exist: the pin's build_env is used instead
    result = tool(root, "wheel", "--dist", str(dist), "--python", "/nowhere", "--venv", str(venvs))
    assert result.returncode == 0, result.stderr
    assert [p.relative_to(dist).as_posix() for p in dist.rglob("*.whl")] == [
        f"toy1/toy-1.1+flatrl.{apply_patches.series_id(root / 'patches' / 'toy1')}-py3-none-any.whl"
    ]
    missing = tool(root, "wheel", "--dist", str(dist), "--venv", str(tmp_path / "none"))
    assert missing.returncode == 2 and "build_env 'builder'" in missing.stderr
