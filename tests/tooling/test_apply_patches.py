"""Tests of apply_patches.py on small upstreams made inside each test.

Each test builds a throw-away project root (vendor/, patches/) and a toy upstream: a git
repository for the "git" pin kind and an sdist tarball for the "pypi-sdist" kind. The tool is
driven through its command line, the interface users and the Makefile have.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
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
ORIGINAL = "".join(f"line {i}\n" for i in range(1, 21))


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, text=True, capture_output=True
    ).stdout.strip()


def run_tool(root: Path, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root), "--cache", str(cache), "--offline", *args],
        text=True,
        capture_output=True,
    )


def write_patch(tree: Path, path: str, edit, subject: str) -> None:
    """Commit an edit inside a patched tree with a proper patch header."""
    target = tree / path
    target.write_text(edit(target.read_text()))
    git(
        "commit",
        "-qam",
        f"{subject}\n\nWhy: a test needs it.\n\nUpstream-Status: Pending",
        cwd=tree,
    )


def replace_line(number: int, new: str):
    def edit(text: str) -> str:
        lines = text.splitlines(keepends=True)
        lines[number - 1] = new + "\n"
        return "".join(lines)

    return edit


@pytest.fixture
def project(tmp_path: Path):
    """A project root with a git-pinned toy upstream whose history allows rebase tests."""
    upstream = tmp_path / "upstream"
    (upstream / "pkg").mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=upstream)
    (upstream / "pkg" / "mod.py").write_text(ORIGINAL)
    (upstream / "README").write_text("toy\n")
    git("add", "-A", cwd=upstream)
    git("commit", "-qm", "v1", cwd=upstream)
    commits = {"v1": git("rev-parse", "HEAD", cwd=upstream)}
    # far from our patch (line 5): replays cleanly
    (upstream / "README").write_text("toy, release 2\n")
    git("commit", "-qam", "v2", cwd=upstream)
    commits["v2"] = git("rev-parse", "HEAD", cwd=upstream)
    # two lines below our patch: inside its context, so only a 3-way merge replays it
    git("checkout", "-q", "-b", "near", commits["v1"], cwd=upstream)
    (upstream / "pkg" / "mod.py").write_text(ORIGINAL.replace("line 7\n", "line seven\n"))
    git("commit", "-qam", "near", cwd=upstream)
    commits["near"] = git("rev-parse", "HEAD", cwd=upstream)
    # the very line our patch changes: a conflict
    git("checkout", "-q", "-b", "clash", commits["v1"], cwd=upstream)
    (upstream / "pkg" / "mod.py").write_text(ORIGINAL.replace("line 5\n", "line five\n"))
    git("commit", "-qam", "clash", cwd=upstream)
    commits["clash"] = git("rev-parse", "HEAD", cwd=upstream)

    root = tmp_path / "project"
    (root / "vendor").mkdir(parents=True)
    (root / "patches" / "toy").mkdir(parents=True)
    (root / "patches" / "toy" / "series").write_text("")
    (root / "vendor" / "toy.toml").write_text(
        f'# toy upstream\nname = "toy"\nkind = "git"\nurl = "file://{tmp_path}/nowhere"\n'
        f'commit = "{commits["v1"]}"\n'
    )
    cache = tmp_path / "cache"

    def tool(*args: str) -> subprocess.CompletedProcess[str]:
        return run_tool(root, "--source", f"toy={upstream}", *args, cache=cache)

    return root, upstream, commits, tool


def make_one_patch(root: Path, tool) -> Path:
    """Apply the empty series, patch line 5 in the tree, export it; return the tree."""
    assert tool("apply").returncode == 0
    tree = root / "build" / "toy"
    write_patch(tree, "pkg/mod.py", replace_line(5, "line 5 patched"), "Patch line five")
    result = tool("refresh", "toy")
    assert result.returncode == 0, result.stderr
    return tree


def test_clean_apply_builds_upstream_plus_one_commit_per_patch(project) -> None:
    root, _, commits, tool = project
    make_one_patch(root, tool)
    shutil.rmtree(root / "build")
    result = tool("apply")
    assert result.returncode == 0, result.stderr
    tree = root / "build" / "toy"
    assert git("log", "--format=%s", cwd=tree).splitlines() == [
        "Patch line five",
        f"upstream: file://{root.parent}/nowhere @ {commits['v1']}",
    ]
    assert "line 5 patched\n" in (tree / "pkg" / "mod.py").read_text()
    head = git("rev-parse", "HEAD", cwd=tree)
    again = tool("apply")
    assert "up to date" in again.stdout
    assert git("rev-parse", "HEAD", cwd=tree) == head


def test_failing_patch_leaves_previous_tree_untouched(project) -> None:
    root, _, _, tool = project
    tree = make_one_patch(root, tool)
    head = git("rev-parse", "HEAD", cwd=tree)
    bad = root / "patches" / "toy" / "0002-bad.patch"
    bad.write_text(
        "Subject: Does not apply\n\nWhy: to test failure.\n\nUpstream-Status: Pending\n---\n"
        "diff --git a/pkg/mod.py b/pkg/mod.py\n--- a/pkg/mod.py\n+++ b/pkg/mod.py\n"
        "@@ -10,3 +10,3 @@\n line 10\n-no such line\n+replacement\n line 12\n"
    )
    with open(root / "patches" / "toy" / "series", "a") as series:
        series.write("0002-bad.patch\n")
    result = tool("apply")
    assert result.returncode == 2
    assert "0002-bad.patch" in result.stderr
    assert "pkg/mod.py" in result.stderr and "hunk #1" in result.stderr
    assert git("rev-parse", "HEAD", cwd=tree) == head
    assert "line 5 patched\n" in (tree / "pkg" / "mod.py").read_text()
    assert sorted(p.name for p in (root / "build").iterdir()) == ["toy"]


def test_refresh_round_trip_is_byte_stable(project) -> None:
    root, _, _, tool = project
    make_one_patch(root, tool)
    patch_dir = root / "patches" / "toy"
    before = {p.name: p.read_bytes() for p in patch_dir.iterdir()}
    assert tool("apply", "--force").returncode == 0
    shutil.rmtree(root / "build")
    assert tool("apply").returncode == 0
    check = tool("refresh", "--check")
    assert check.returncode == 0, check.stdout
    assert tool("refresh", "toy").returncode == 0
    assert {p.name: p.read_bytes() for p in patch_dir.iterdir()} == before
    text = (patch_dir / "0001-patch-line-five.patch").read_text()
    assert text.startswith("Subject: Patch line five\n\nWhy: a test needs it.\n")
    assert "Upstream-Status: Pending" in text and "Date:" not in text


def test_refresh_check_catches_a_stale_patch(project) -> None:
    root, _, _, tool = project
    tree = make_one_patch(root, tool)
    write_patch(tree, "pkg/mod.py", replace_line(15, "line 15 patched"), "Patch line fifteen")
    check = tool("refresh", "--check")
    assert check.returncode == 1
    assert "add 0002-patch-line-fifteen.patch" in check.stdout
    status = tool("status", "toy")
    assert "0002-patch-line-fifteen.patch" in status.stdout and "stale" in status.stdout


def test_apply_refuses_to_overwrite_edits_unless_forced(project) -> None:
    root, _, _, tool = project
    tree = make_one_patch(root, tool)
    (tree / "pkg" / "mod.py").write_text("edited\n")
    refused = tool("apply")
    assert refused.returncode == 2 and "uncommitted edits" in refused.stderr
    assert (tree / "pkg" / "mod.py").read_text() == "edited\n"
    assert tool("apply", "--force").returncode == 0
    assert "line 5 patched\n" in (tree / "pkg" / "mod.py").read_text()


@pytest.mark.parametrize(("target", "outcome"), [("v2", "clean"), ("near", "merged")])
def test_rebase_replays_and_updates_the_pin(project, target: str, outcome: str) -> None:
    root, _, commits, tool = project
    tree = make_one_patch(root, tool)
    result = tool("rebase", "toy", "--to", commits[target])
    assert result.returncode == 0, result.stderr
    assert f"{outcome}" in result.stdout.split("\n")[0]
    assert commits[target] in (root / "vendor" / "toy.toml").read_text()
    assert "# toy upstream" in (root / "vendor" / "toy.toml").read_text()
    text = (tree / "pkg" / "mod.py").read_text()
    assert "line 5 patched\n" in text
    if target == "near":
        assert "line seven\n" in text
    # the refreshed series rebuilds the same tree from scratch
    shutil.rmtree(root / "build")
    assert tool("apply").returncode == 0
    assert (tree / "pkg" / "mod.py").read_text() == text
    assert tool("refresh", "--check").returncode == 0


def test_rebase_conflict_then_abort_and_continue(project) -> None:
    root, _, commits, tool = project
    tree = make_one_patch(root, tool)
    pin_before = (root / "vendor" / "toy.toml").read_text()
    conflict = tool("rebase", "toy", "--to", commits["clash"])
    assert conflict.returncode == 2
    assert "conflict" in conflict.stderr and "pkg/mod.py" in conflict.stderr
    assert "REBASE IN PROGRESS" in tool("status", "toy").stdout
    assert tool("apply").returncode == 2  # no silent rebuild in the middle of a rebase
    aborted = tool("rebase", "toy", "--abort")
    assert aborted.returncode == 0, aborted.stderr
    assert "line 5 patched\n" in (tree / "pkg" / "mod.py").read_text()
    assert (root / "vendor" / "toy.toml").read_text() == pin_before

    assert tool("rebase", "toy", "--to", commits["clash"]).returncode == 2
    early = tool("rebase", "toy", "--continue")
    assert early.returncode == 2 and "unmerged" in early.stderr
    (tree / "pkg" / "mod.py").write_text(ORIGINAL.replace("line 5\n", "line five, patched\n"))
    git("add", "pkg/mod.py", cwd=tree)
    done = tool("rebase", "toy", "--continue")
    assert done.returncode == 0, done.stderr
    assert "resolved" in done.stdout
    assert commits["clash"] in (root / "vendor" / "toy.toml").read_text()
    patch = (root / "patches" / "toy" / "0001-patch-line-five.patch").read_text()
    assert "-line five\n+line five, patched\n" in patch


def make_sdist(path: Path, version: str, body: str) -> Path:
    sdist = path / f"toy-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        data = body.encode()
        info = tarfile.TarInfo(f"toy-{version}/toy.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return sdist


def sdist_project(tmp_path: Path, sha256: str) -> Path:
    root = tmp_path / "project"
    (root / "vendor").mkdir(parents=True)
    (root / "vendor" / "toy.toml").write_text(
        f'name = "toy"\nkind = "pypi-sdist"\nversion = "1.0"\nsha256 = "{sha256}"\n'
    )
    return root


def test_sdist_is_verified_cached_and_used_offline(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path, "1.0", "VALUE = 1\n")
    root = sdist_project(tmp_path, hashlib.sha256(sdist.read_bytes()).hexdigest())
    cache = tmp_path / "cache"
    first = run_tool(root, "--source", f"toy={sdist}", "apply", cache=cache)
    assert first.returncode == 0, first.stderr
    assert (root / "build" / "toy" / "toy.py").read_text() == "VALUE = 1\n"
    sdist.unlink()
    shutil.rmtree(root / "build")
    second = run_tool(root, "apply", cache=cache)
    assert second.returncode == 0 and "from cache" in second.stdout


def test_checksum_mismatch_names_expected_and_actual(tmp_path: Path) -> None:
    sdist = make_sdist(tmp_path, "1.0", "VALUE = 2\n")
    root = sdist_project(tmp_path, "0" * 64)
    result = run_tool(root, "--source", f"toy={sdist}", "apply", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "checksum mismatch" in result.stderr
    assert "0" * 64 in result.stderr
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() in result.stderr
    assert not (root / "build" / "toy").exists()


def test_unpacked_tree_is_verified_against_tree_sha256(tmp_path: Path) -> None:
    tree = tmp_path / "toy-src"
    tree.mkdir()
    (tree / "toy.py").write_text("VALUE = 3\n")
    root = sdist_project(tmp_path, "0" * 64)
    pin = root / "vendor" / "toy.toml"
    pin.write_text(pin.read_text() + f'tree_sha256 = "{apply_patches.tree_sha256(tree)}"\n')
    ok = run_tool(root, "--source", f"toy={tree}", "apply", cache=tmp_path / "cache")
    assert ok.returncode == 0, ok.stderr
    (tree / "toy.py").write_text("VALUE = 4\n")
    shutil.rmtree(root / "build")
    bad = run_tool(root, "--source", f"toy={tree}", "apply", cache=tmp_path / "cache")
    assert bad.returncode == 2 and "does not match the pin" in bad.stderr


def test_missing_source_says_how_to_supply_it(project) -> None:
    root, _, _, _ = project
    result = run_tool(root, "apply", cache=root.parent / "empty-cache")
    assert result.returncode == 2
    assert "TOY_SOURCE=" in result.stderr and "--source toy=PATH" in result.stderr
    assert not (root / "build" / "toy").exists()
    kept_going = run_tool(root, "apply", "--keep-going", cache=root.parent / "empty-cache")
    assert kept_going.returncode == 0
    assert "SKIPPED" in kept_going.stderr and "TOY_SOURCE=" in kept_going.stderr


def test_patch_without_header_is_rejected_with_the_fix(project) -> None:
    root, _, _, tool = project
    make_one_patch(root, tool)
    patch = root / "patches" / "toy" / "0001-patch-line-five.patch"
    patch.write_text(patch.read_text().replace("Upstream-Status: Pending\n", ""))
    result = tool("apply", "--force")
    assert result.returncode == 2 and "Upstream-Status" in result.stderr


def test_real_d3rlpy_sdist_applies_with_an_empty_series(tmp_path: Path) -> None:
    """The real pin: sdist checksum and unpacked-tree hash both match vendor/d3rlpy.toml."""
    cache = Path(os.environ.get("FLATRL_CACHE", "~/.cache/flatrl")).expanduser()
    root = tmp_path / "project"
    (root / "vendor").mkdir(parents=True)
    shutil.copy(REPO / "vendor" / "d3rlpy.toml", root / "vendor")
    result = subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root), "--cache", str(cache), "apply", "d3rlpy"],
        text=True,
        capture_output=True,
    )
    if result.returncode != 0 and "cannot obtain" in result.stderr:
        pytest.skip(f"d3rlpy sdist unavailable offline: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    tree = root / "build" / "d3rlpy"
    pin = apply_patches.Pin.load(root / "vendor" / "d3rlpy.toml")
    assert apply_patches.tree_sha256(tree) == pin.tree_sha256
    assert (tree / "d3rlpy" / "optimizers" / "optimizers.py").is_file()


def test_crlf_files_survive_refresh_and_apply(project) -> None:
    """A patch to a CRLF file (TD-MPC2 has one) must keep its CRs through export and re-apply."""
    root, upstream, commits, tool = project
    (upstream / "dos.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    git("add", "dos.txt", cwd=upstream)
    git("commit", "-qm", "crlf", cwd=upstream)
    crlf = git("rev-parse", "HEAD", cwd=upstream)
    pin = root / "vendor" / "toy.toml"
    pin.write_text(pin.read_text().replace(commits["v1"], crlf))
    assert tool("apply").returncode == 0
    tree = root / "build" / "toy"
    (tree / "dos.txt").write_bytes(b"one\r\nTWO\r\nthree\r\n")
    git("commit", "-qam", "Shout two\n\nWhy: test.\n\nUpstream-Status: Pending", cwd=tree)
    assert tool("refresh", "toy").returncode == 0
    assert b"+TWO\r\n" in (root / "patches" / "toy" / "0001-shout-two.patch").read_bytes()
    shutil.rmtree(root / "build")
    result = tool("apply")
    assert result.returncode == 0, result.stderr
    assert (tree / "dos.txt").read_bytes() == b"one\r\nTWO\r\nthree\r\n"
    assert tool("refresh", "--check").returncode == 0
