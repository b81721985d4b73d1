"""Tests of the wheel version label, the wheel build, and the Makefile's test-folder table.

The version label of a patched release must be a function of the patch series alone (same
patches, same label; any patch edit, a new one), and `make test` must refuse a test folder that
does not say which environment runs it, instead of running it in whichever environment.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "apply_patches.py"
sys.path.insert(0, str(REPO))
import apply_patches  # noqa: E402

GIT_ENV = {**os.environ, **apply_patches.GIT_IDENTITY}
SETUP = 'from setuptools import setup\nexec(open("toy/_version.py").read())\n'
SETUP += 'setup(name="toy", version=__version__, packages=["toy"])\n'


def tool(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cache = root.parent / "cache"
    return subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root), "--cache", str(cache), "--offline", *args],
        text=True,
        capture_output=True,
    )


def toy_release(tmp_path: Path) -> Path:
    """A project root pinning a tiny setuptools sdist (toy 1.0, version in toy/_version.py)."""
    sdist = tmp_path / "toy-1.0.tar.gz"
    files = {"setup.py": SETUP, "toy/__init__.py": "", "toy/_version.py": '__version__ = "1.0"\n'}
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f"toy-1.0/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    root = tmp_path / "project"
    (root / "vendor").mkdir(parents=True)
    (root / "patches" / "toy").mkdir(parents=True)
    (root / "vendor" / "toy.toml").write_text(
        'name = "toy"\nkind = "pypi-sdist"\nversion = "1.0"\n'
        f'sha256 = "{hashlib.sha256(sdist.read_bytes()).hexdigest()}"\n'
        'version_file = "toy/_version.py"\n'
    )
    (root.parent / "cache" / "toy").mkdir(parents=True)
    shutil.copy(sdist, root.parent / "cache" / "toy" / "toy-1.0.tar.gz")
    return root


def add_patch(root: Path, subject: str, line: str) -> None:
    """Commit a change in the toy tree and export it as the next patch of the series."""
    tree = root / "build" / "toy"
    with open(tree / "toy" / "__init__.py", "a") as handle:
        handle.write(line + "\n")
    message = f"{subject}\n\nWhy: a test needs it.\n\nUpstream-Status: Pending"
    subprocess.run(["git", "commit", "-qam", message], cwd=tree, env=GIT_ENV, check=True)
    assert tool(root, "refresh", "toy").returncode == 0


def version(root: Path) -> str:
    result = tool(root, "version", "toy")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_version_label_is_derived_from_the_series(tmp_path: Path) -> None:
    root = toy_release(tmp_path)
    assert tool(root, "apply").returncode == 0
    empty = version(root)
    assert empty.startswith("1.0+flatrl.")
    add_patch(root, "Add a constant", "VALUE = 1")
    one = version(root)
    assert one != empty and one.startswith("1.0+flatrl.")
    assert version(root) == one  # deterministic: nothing else (time, tree, cache) enters
    shutil.rmtree(root / "build")
    assert version(root) == one  # read from patches/, not from the built tree

    patch = root / "patches" / "toy" / "0001-add-a-constant.patch"
    original = patch.read_bytes()
    patch.write_bytes(original.replace(b"VALUE = 1", b"VALUE = 2"))
    assert version(root) not in (one, empty)  # any byte of a patch changes the label
    patch.write_bytes(original)
    assert version(root) == one
    (root / "patches" / "toy" / "notes.txt").write_text("not in the series\n")
    assert version(root) == one  # only the series counts


def test_wheel_carries_the_label_and_leaves_the_tree_clean(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    root = toy_release(tmp_path)
    assert tool(root, "apply").returncode == 0
    add_patch(root, "Add a constant", "VALUE = 1")
    label = version(root)
    result = tool(root, "wheel", "--dist", str(tmp_path / "dist"), "--python", sys.executable)
    assert result.returncode == 0, result.stderr
    wheel = tmp_path / "dist" / f"toy-{label}-py3-none-any.whl"
    assert wheel.is_file(), sorted(p.name for p in (tmp_path / "dist").iterdir())
    with zipfile.ZipFile(wheel) as archive:
        assert "VALUE = 1" in archive.read("toy/__init__.py").decode()
        assert f'"{label}"' in archive.read("toy/_version.py").decode()
    tree = root / "build" / "toy"
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""  # built from a copy: no egg-info, build/ or edits in the tree
    assert '"1.0"' in (tree / "toy" / "_version.py").read_text()

    (tree / "toy" / "__init__.py").write_text("edited\n")
    refused = tool(root, "wheel", "--dist", str(tmp_path / "dist"), "--python", sys.executable)
    assert refused.returncode == 2 and "differs from patches/" in refused.stderr


def make_check(tmp_path: Path, table: str, folders: list[str]) -> subprocess.CompletedProcess:
    """Run the Makefile's check-test-envs on a scratch tree with these folders and table."""
    for folder in folders:
        (tmp_path / "tests" / folder).mkdir(parents=True)
    (tmp_path / "tests" / "environments.txt").write_text(table)
    (tmp_path / "requirements").mkdir()
    for env in ("alpha", "beta", "constraints"):
        (tmp_path / "requirements" / f"{env}.txt").write_text("")
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "check-test-envs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_a_pin_naming_several_environments_gets_a_pth_line_in_each(tmp_path: Path) -> None:
    """`env = ["a", "b"]`: one patched tree imported by two environments (pinned and current)."""
    root = toy_release(tmp_path)
    pin = root / "vendor" / "toy.toml"
    pin.write_text(pin.read_text() + 'env = ["first", "second"]\n')
    assert tool(root, "apply", "toy").returncode == 0
    venvs = tmp_path / "venvs"
    missing = tool(root, "pth", "--venv", str(venvs))
    assert missing.returncode != 0 and "names env 'first'" in missing.stderr
    for env in ("first", "second"):
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venvs / env)], check=True
        )
    result = tool(root, "pth", "--venv", str(venvs))
    assert result.returncode == 0, result.stderr
    written = sorted(venvs.glob("*/lib/python*/site-packages/flatrl-toy.pth"))
    assert [path.relative_to(venvs).parts[0] for path in written] == ["first", "second"]
    tree = str((root / "build" / "toy").resolve())
    assert {path.read_text().strip() for path in written} == {tree}


def test_a_test_folder_without_an_environment_fails_loudly(tmp_path: Path) -> None:
    table = "# folder envs\ncore alpha beta\nagent beta\n"
    ok = make_check(tmp_path / "ok", table, ["core", "agent", "__pycache__"])
    assert ok.returncode == 0, ok.stderr
    new = make_check(tmp_path / "new", table, ["core", "agent", "fresh"])
    assert new.returncode != 0
    assert "tests/fresh has no environment" in new.stderr and "fresh <env>" in new.stderr
    wrong = make_check(tmp_path / "wrong", "core alpha gamma\n", ["core"])
    assert wrong.returncode != 0 and "'gamma', which is not an environment" in wrong.stderr
    gone = make_check(tmp_path / "gone", table, ["core"])
    assert gone.returncode != 0 and "tests/agent, which does not exist" in gone.stderr


def test_the_real_table_covers_every_test_folder() -> None:
    table = (REPO / "tests" / "environments.txt").read_text().splitlines()
    declared = {line.split()[0] for line in table if line.strip() and not line.startswith("#")}
    folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir()} - {"__pycache__"}
    assert declared == folders


def test_test_modules_have_unique_names_within_each_environment() -> None:
    """pytest imports the modules of folders without ``__init__.py`` under their bare name, so
    two such files with one name in folders of one environment's run break its collection."""
    table = (REPO / "tests" / "environments.txt").read_text().splitlines()
    envs_of = {
        line.split()[0]: line.split()[1:]
        for line in table
        if line.strip() and not line.startswith("#")
    }
    seen: dict[tuple[str, str], str] = {}
    clashes = []
    for folder, envs in sorted(envs_of.items()):
        path = REPO / "tests" / folder
        if (path / "__init__.py").exists():
            continue  # a package: its modules are imported under the package's name
        for module in sorted(p.name for p in path.glob("*.py") if p.name != "conftest.py"):
            for env in envs:
                other = seen.setdefault((env, module), folder)
                if other != folder:
                    clashes.append(f"tests/{other}/{module} and tests/{folder}/{module} ({env})")
    assert not clashes, "rename one of each pair (e.g. prefix the folder): " + "; ".join(clashes)
