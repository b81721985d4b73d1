"""Errors, constants and the small helpers every module of the tool uses (git, hashing, bytes)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

TOOL_VERSION = "1"
UPSTREAM_TAG = "upstream"
STAMP_FILE = "flatrl-stamp.json"
REBASE_STATE_FILE = "flatrl-rebase.json"
# Fixed identity and date for every commit the tool makes: the same pin and patches always give
# the same commit ids, so "is this tree up to date" is a comparison, and nothing churns.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "flatrl",
    "GIT_AUTHOR_EMAIL": "flatrl@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "flatrl",
    "GIT_COMMITTER_EMAIL": "flatrl@localhost",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}
# Output of running upstream code inside a patched tree; never counted as an edit.
TREE_EXCLUDES = [
    "__pycache__/",
    "*.pyc",
    "*.egg-info/",
    ".pytest_cache/",
    "build/",
    "dist/",
    "d3rlpy_logs/",
    "d3rlpy_data/",
    "logs/",
    "outputs/",
    "multirun/",
    "runs/",
    "wandb/",
]


class ToolError(Exception):
    """An error for the user: the message names the problem and how to fix it."""


class SourceUnavailable(ToolError):
    """The pinned upstream source cannot be obtained from any of override, cache or network."""


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every git call runs in: fixed identity, never a credential prompt."""
    return {**os.environ, **GIT_IDENTITY, "GIT_TERMINAL_PROMPT": "0", **(extra or {})}


def run_git(
    args: Sequence[str],
    cwd: Path | None = None,
    check: bool = True,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run git with the tool's fixed identity; raise ToolError with git's message on failure."""
    raw = subprocess.run(["git", *args], cwd=cwd, env=git_env(env_extra), capture_output=True)
    # decoded by hand: text=True would turn CRLF into LF and corrupt patches of CRLF files
    proc = subprocess.CompletedProcess(
        raw.args, raw.returncode, decode(raw.stdout), decode(raw.stderr)
    )
    if check and proc.returncode != 0:
        raise ToolError(f"git {' '.join(args)} failed in {cwd}:\n{proc.stderr.strip()}")
    return proc


def extract_commit(repo: Path, rev: str, dest: Path) -> None:
    """Write the files of `rev` (no .git) into dest, creating it: the one git-archive path.

    Used for cached git pins, for hashing a rebased upstream and for wheel builds, so a commit's
    files are always materialised the same way (modes and symlinks as git stores them).
    """
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=repo, capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:") as tar:
        tar.extractall(dest, filter="tar")


def decode(data: bytes) -> str:
    """Bytes to str with no newline translation; undecodable bytes survive a round trip."""
    return data.decode("utf-8", "surrogateescape")


def read_exact(path: Path) -> str:
    """A file's text exactly as stored (CR characters kept, unlike Path.read_text)."""
    return decode(path.read_bytes())


def write_exact(path: Path, text: str) -> None:
    """Write text back byte for byte (the inverse of read_exact)."""
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


def sha256_file(path: Path) -> str:
    """sha256 of a file, streamed (sdists can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(root: Path) -> str:
    """A content hash of a directory tree (paths, executable bits and bytes; .git excluded).

    It lets an unpacked tree be verified against the pin as strictly as an sdist or a commit.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if ".git" not in p.relative_to(root).parts):
        if path.is_dir():
            continue
        rel = path.relative_to(root).as_posix()
        mode = "x" if os.access(path, os.X_OK) else "-"
        content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        digest.update(f"{rel}\0{mode}\0".encode() + hashlib.sha256(content).digest())
    return digest.hexdigest()


def is_git_repo(path: Path) -> bool:
    """Whether path is (the top of, or inside) a git work tree."""
    probe = run_git(["rev-parse", "--git-dir"], cwd=path, check=False) if path.is_dir() else None
    return probe is not None and probe.returncode == 0


def last_error_line(stderr: str) -> str:
    """The line of a tool's stderr that says what went wrong (pip ends on generic hints)."""
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(("WARNING", "hint:", "note:"))
    ]
    errors = [line for line in lines if line.lower().startswith("error")]
    return (errors or lines or ["no output"])[-1]
