#!/usr/bin/env python3
"""Build patched upstream trees from pinned sources, and keep the patch series alive.

The model is Electron's / devtool's: a patched tree under ``build/<name>/`` is a git repository
whose first commit is the pristine upstream (tagged ``upstream``) and whose following commits are
our patches, one per entry of ``patches/<name>/series``. Because patches are commits, refreshing
them from an edited tree and rebasing them onto a newer upstream are git operations, not
hand-written diff logic.

Commands (see ``--help`` of each):

* ``apply [NAME...]``   build trees atomically (a temporary tree swapped in on success)
* ``status [NAME...]``  pin, applied patches, edits not yet exported, staleness of patches/
* ``refresh NAME``      export the commits above ``upstream`` back into patches/NAME/
* ``rebase NAME --to X`` replay the series onto another upstream release or commit
* ``vendor [NAME...]``  obtain and verify the pinned sources into the cache only

Source resolution for each upstream, in order: an override (``<NAME>_SOURCE`` environment
variable or ``--source NAME=PATH``) naming a local sdist, unpacked tree, git checkout or bare
mirror; then the download cache (``$FLATRL_CACHE``, default ``~/.cache/flatrl``); then the
network (``pip download`` for an sdist, ``git fetch`` for a git pin). Whatever is taken is
verified against the pin (sha256 of the sdist, commit id, or sha256 of the unpacked tree).

Only the standard library is used, so the tool runs before any environment exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
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


# --------------------------------------------------------------------------------------------
# Small helpers


def run_git(
    args: Sequence[str],
    cwd: Path | None = None,
    check: bool = True,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run git with the tool's fixed identity; raise ToolError with git's message on failure."""
    env = {**os.environ, **GIT_IDENTITY, "GIT_TERMINAL_PROMPT": "0", **(env_extra or {})}
    raw = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True)
    # decoded by hand: text=True would turn CRLF into LF and corrupt patches of CRLF files
    proc = subprocess.CompletedProcess(
        raw.args, raw.returncode, decode(raw.stdout), decode(raw.stderr)
    )
    if check and proc.returncode != 0:
        raise ToolError(f"git {' '.join(args)} failed in {cwd}:\n{proc.stderr.strip()}")
    return proc


def decode(data: bytes) -> str:
    """Bytes to str with no newline translation; undecodable bytes survive a round trip."""
    return data.decode("utf-8", "surrogateescape")


def read_exact(path: Path) -> str:
    """A file's text exactly as stored (CR characters kept, unlike Path.read_text)."""
    return decode(path.read_bytes())


def write_exact(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


def sha256_file(path: Path) -> str:
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


def slugify(subject: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-").lower()
    return slug[:60].rstrip("-") or "patch"


# --------------------------------------------------------------------------------------------
# Pins


@dataclasses.dataclass
class Pin:
    """One upstream as pinned in vendor/<name>.toml."""

    name: str
    kind: str  # "pypi-sdist" or "git"
    path: Path
    version: str | None = None
    sha256: str | None = None
    url: str | None = None
    commit: str | None = None
    tree_sha256: str | None = None
    package: str | None = None  # PyPI project name, defaults to name

    @property
    def env_var(self) -> str:
        return re.sub(r"[^A-Z0-9]", "_", self.name.upper()) + "_SOURCE"

    @property
    def ref(self) -> str:
        """What the pin points at, for messages."""
        return (
            f"{self.package or self.name}=={self.version}"
            if self.kind == "pypi-sdist"
            else (f"{self.url} @ {self.commit}")
        )

    @classmethod
    def load(cls, path: Path) -> Pin:
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ToolError(f"{path}: not valid TOML ({exc}); fix the pin file.") from exc
        kind = data.get("kind")
        required = {"pypi-sdist": ("version", "sha256"), "git": ("url", "commit")}
        if kind not in required:
            raise ToolError(f"{path}: kind must be 'pypi-sdist' or 'git', got {kind!r}.")
        missing = [key for key in required[kind] if not data.get(key)]
        if missing:
            raise ToolError(f"{path}: missing {', '.join(missing)} for kind {kind!r}.")
        fields = {f.name for f in dataclasses.fields(cls)} - {"path", "name", "kind"}
        return cls(
            name=data.get("name", path.stem),
            kind=kind,
            path=path,
            **{k: v for k, v in data.items() if k in fields},
        )

    def save(self, **updates: str) -> None:
        """Rewrite the given keys in place, keeping the file's comments and order."""
        text = self.path.read_text()
        for key, value in updates.items():
            setattr(self, key, value)
            line = f'{key} = "{value}"'
            pattern = re.compile(rf"^{key}\s*=.*$", re.MULTILINE)
            text = pattern.sub(line, text) if pattern.search(text) else text + line + "\n"
        self.path.write_text(text)


# --------------------------------------------------------------------------------------------
# Sources: override, then cache, then network. Each returns an unpacked, verified tree.


class Sources:
    """Finds, verifies and caches upstream sources."""

    def __init__(self, cache_dir: Path, overrides: dict[str, str], offline: bool) -> None:
        self.cache_dir = cache_dir
        self.overrides = overrides
        self.offline = offline

    def override_for(self, pin: Pin) -> Path | None:
        value = self.overrides.get(pin.name) or os.environ.get(pin.env_var)
        return Path(value).expanduser().resolve() if value else None

    def how_to_supply(self, pin: Pin) -> str:
        if pin.kind == "git":
            what = f"a git checkout or bare mirror that contains commit {pin.commit}"
        else:
            what = f"the sdist {pin.package or pin.name}-{pin.version}.tar.gz or its unpacked tree"
        return (
            f"Supply it with {pin.env_var}=/path/to/{pin.name} (or "
            f"`python apply_patches.py apply {pin.name} --source {pin.name}=PATH`), naming "
            f"{what}; it is verified and cached in {self.cache_dir} for later offline runs."
        )

    def export_tree(self, pin: Pin, dest: Path) -> str:
        """Write the pinned upstream tree into dest (which must not exist); return its origin."""
        override = self.override_for(pin)
        if override is not None:
            if not override.exists():
                raise SourceUnavailable(
                    f"{pin.name}: the override {pin.env_var}={override} does not exist. "
                    + self.how_to_supply(pin)
                )
            self._from_override(pin, override, dest)
            return f"override {override}"
        if self._from_cache(pin, dest):
            return f"cache {self.cache_dir}"
        self._from_network(pin)
        if not self._from_cache(pin, dest):  # pragma: no cover - network put it in the cache
            raise SourceUnavailable(f"{pin.name}: downloaded, but not found in the cache.")
        return "network"

    # -- override ------------------------------------------------------------------------
    def _from_override(self, pin: Pin, source: Path, dest: Path) -> None:
        if pin.kind == "git":
            if is_git_repo(source):
                self._git_into_cache(pin, str(source))
                if not self._from_cache(pin, dest):
                    raise SourceUnavailable(
                        f"{pin.name}: {source} does not contain commit {pin.commit}. "
                        + self.how_to_supply(pin)
                    )
                return
            if source.is_dir():
                self._copy_tree_verified(pin, source, dest)
                return
            raise SourceUnavailable(
                f"{pin.name}: {source} is neither a git repository nor a "
                "directory. " + self.how_to_supply(pin)
            )
        if source.is_file():
            self._check_sha256(pin, source)
            self._cache_sdist(pin, source)
            self._unpack_sdist(source, dest)
        elif source.is_dir():
            self._copy_tree_verified(pin, source, dest)
        else:
            raise SourceUnavailable(
                f"{pin.name}: {source} is neither a file nor a directory. "
                + self.how_to_supply(pin)
            )

    def _copy_tree_verified(self, pin: Pin, source: Path, dest: Path) -> None:
        if not pin.tree_sha256:
            raise ToolError(
                f"{pin.name}: {source} is an unpacked tree, but {pin.path} has no "
                "tree_sha256 to verify it against; supply an sdist or git repository."
            )
        actual = tree_sha256(source)
        if actual != pin.tree_sha256:
            raise ToolError(
                f"{pin.name}: the tree {source} does not match the pin ({pin.ref}): expected "
                f"tree_sha256 {pin.tree_sha256}, got {actual}. Point {pin.env_var} at the "
                "pinned release, or rebase the series onto this one."
            )
        shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))

    # -- cache ---------------------------------------------------------------------------
    def _sdist_cache_path(self, pin: Pin) -> Path:
        return self.cache_dir / pin.name / f"{pin.package or pin.name}-{pin.version}.tar.gz"

    def _git_cache_path(self, pin: Pin) -> Path:
        return self.cache_dir / pin.name / "repo.git"

    def _from_cache(self, pin: Pin, dest: Path) -> bool:
        if pin.kind == "git":
            repo = self._git_cache_path(pin)
            if not repo.is_dir():
                return False
            probe = run_git(["cat-file", "-e", f"{pin.commit}^{{commit}}"], cwd=repo, check=False)
            if probe.returncode != 0:
                return False
            dest.mkdir(parents=True)
            archive = subprocess.run(
                ["git", "archive", "--format=tar", pin.commit],
                cwd=repo,
                capture_output=True,
                check=True,
            )
            with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:") as tar:
                tar.extractall(dest, filter="tar")
            return True
        path = self._sdist_cache_path(pin)
        if not path.is_file():
            return False
        if sha256_file(path) != pin.sha256:
            path.unlink()  # a corrupt cache entry is dropped and fetched again
            return False
        self._unpack_sdist(path, dest)
        return True

    def _cache_sdist(self, pin: Pin, source: Path) -> None:
        target = self._sdist_cache_path(pin)
        if source.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)

    def _git_into_cache(self, pin: Pin, remote: str) -> None:
        repo = self._git_cache_path(pin)
        if not repo.is_dir():
            repo.parent.mkdir(parents=True, exist_ok=True)
            run_git(["init", "--bare", "-q", str(repo)])
        fetched = run_git(["fetch", "-q", "--no-tags", remote, pin.commit], cwd=repo, check=False)
        if fetched.returncode != 0:  # servers that refuse a bare sha: take every branch instead
            fetched = run_git(
                ["fetch", "-q", "--no-tags", remote, "+refs/heads/*:refs/remotes/origin/*"],
                cwd=repo,
                check=False,
            )
        if fetched.returncode != 0:
            raise SourceUnavailable(
                f"{pin.name}: git fetch from {remote} failed: "
                f"{fetched.stderr.strip()}. " + self.how_to_supply(pin)
            )
        run_git(["update-ref", f"refs/flatrl/{pin.commit}", pin.commit], cwd=repo, check=False)

    # -- network -------------------------------------------------------------------------
    def _from_network(self, pin: Pin) -> None:
        if self.offline:
            raise SourceUnavailable(
                f"{pin.name}: not in the cache {self.cache_dir} and "
                "--offline was given. " + self.how_to_supply(pin)
            )
        if pin.kind == "git":
            try:
                self._git_into_cache(pin, pin.url or "")
            except SourceUnavailable as exc:
                raise SourceUnavailable(
                    f"{pin.name}: cannot obtain {pin.ref}: no override ({pin.env_var}), not in "
                    f"the cache {self._git_cache_path(pin)}, and the network fetch failed "
                    f"({str(exc).split(': ', 1)[-1].split('. Supply')[0]}). "
                    + self.how_to_supply(pin)
                ) from exc
            return
        try:
            sdist = self._pip_download(f"{pin.package or pin.name}=={pin.version}")
        except SourceUnavailable as exc:
            raise SourceUnavailable(
                f"{pin.name}: cannot obtain {pin.ref}: no override ({pin.env_var}), not in the "
                f"cache {self._sdist_cache_path(pin)}, and {exc}. " + self.how_to_supply(pin)
            ) from exc
        try:
            self._check_sha256(pin, sdist)
            self._cache_sdist(pin, sdist)
        finally:
            shutil.rmtree(sdist.parent, ignore_errors=True)

    @staticmethod
    def _pip_download(spec: str) -> Path:
        """Download one sdist with pip into a fresh temporary directory; return its path."""
        tmp = tempfile.mkdtemp(prefix="flatrl-sdist-")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q"]
            + ["-d", tmp, spec],
            capture_output=True,
            text=True,
        )
        files = list(Path(tmp).glob("*.tar.gz")) + list(Path(tmp).glob("*.zip"))
        if proc.returncode != 0 or not files:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SourceUnavailable(f"pip download {spec} failed ({last_error_line(proc.stderr)})")
        return files[0]

    # -- sdists --------------------------------------------------------------------------
    @staticmethod
    def _check_sha256(pin: Pin, path: Path) -> None:
        actual = sha256_file(path)
        if actual != pin.sha256:
            raise ToolError(
                f"{pin.name}: checksum mismatch for {path}: expected sha256 {pin.sha256} "
                f"({pin.ref} as pinned in {pin.path}), got {actual}. The file is not the pinned "
                "release: supply the right one, or rebase the series onto this release."
            )

    @staticmethod
    def _unpack_sdist(path: Path, dest: Path) -> None:
        """Unpack an sdist and strip its single top-level directory."""
        with tempfile.TemporaryDirectory() as tmp:
            if path.suffix == ".zip":
                with zipfile.ZipFile(path) as archive:
                    archive.extractall(tmp)
            else:
                with tarfile.open(path) as archive:
                    archive.extractall(tmp, filter="data")
            entries = list(Path(tmp).iterdir())
            top = entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp)
            shutil.copytree(top, dest, symlinks=True)

    def fetch_new_sdist(self, pin: Pin, version: str) -> Path:
        """Obtain another release for a rebase: override file/dir, cache, or pip download."""
        probe = dataclasses.replace(pin, version=version, sha256=None)
        override = self.override_for(pin)
        if override is not None and override.is_file():
            target = self._sdist_cache_path(probe)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(override, target)
            return target
        cached = self._sdist_cache_path(probe)
        if cached.is_file():
            return cached
        if self.offline:
            raise SourceUnavailable(
                f"{pin.name}: {version} is not in the cache and --offline "
                "was given. " + self.how_to_supply(probe)
            )
        sdist = self._pip_download(f"{pin.package or pin.name}=={version}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sdist, cached)
        shutil.rmtree(sdist.parent, ignore_errors=True)
        return cached


# --------------------------------------------------------------------------------------------
# Patch files: a header (Subject, why, Upstream-Status) and a git diff.


@dataclasses.dataclass
class Patch:
    path: Path
    subject: str
    body: str
    diff: str

    @classmethod
    def parse(cls, path: Path) -> Patch:
        text = read_exact(path)
        start = text.find("\ndiff --git ")
        if start < 0:
            raise ToolError(
                f"{path}: no 'diff --git' section; a patch is a header followed by "
                "a git diff (make one with `apply_patches.py refresh`)."
            )
        header, diff = text[: start + 1], text[start + 1 :]
        header = re.sub(r"\n---\n?$", "\n", header)
        match = re.match(r"Subject: *(.+)\n", header)
        if not match:
            raise ToolError(f"{path}: the header must start with 'Subject: <one line>'.")
        body = header[match.end() :].strip("\n")
        if "Upstream-Status:" not in body:
            raise ToolError(
                f"{path}: the header has no 'Upstream-Status:' line; add one "
                "(Pending, Submitted [url], Accepted, Inappropriate [why])."
            )
        if not body.replace(re.search(r"Upstream-Status:.*", body).group(0), "").strip():
            raise ToolError(
                f"{path}: the header says nothing about why the patch exists; "
                "add a paragraph under the Subject."
            )
        return cls(path=path, subject=match.group(1).strip(), body=body, diff=diff)

    @property
    def message(self) -> str:
        return f"{self.subject}\n\n{self.body}\n"

    @staticmethod
    def render(subject: str, body: str, diff: str) -> str:
        return f"Subject: {subject}\n\n{body.strip()}\n---\n{diff}"


def read_series(patch_dir: Path) -> list[Path]:
    series = patch_dir / "series"
    if not series.is_file():
        return []
    names = [line.strip() for line in series.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    missing = [n for n in names if not (patch_dir / n).is_file()]
    if missing:
        raise ToolError(
            f"{series} names patches that do not exist: {', '.join(missing)}; "
            "add the files or remove the lines."
        )
    return [patch_dir / n for n in names]


def hunk_for_line(patch_text: str, file: str, line: int) -> str:
    """Name the hunk of `file` in a patch whose old range starts at `line`, for error messages."""
    current, index = None, 0
    for text_line in patch_text.splitlines():
        if text_line.startswith("diff --git "):
            current, index = text_line.split(" b/", 1)[-1], 0
        elif text_line.startswith("@@") and current == file:
            index += 1
            match = re.match(r"@@ -(\d+)", text_line)
            if match and int(match.group(1)) == line:
                return f"hunk #{index} ({text_line.split('@@')[1].strip()})"
    return f"the hunk at line {line}"


# --------------------------------------------------------------------------------------------
# The project: pins, patches and patched trees under one root.


class Project:
    def __init__(self, root: Path, sources: Sources) -> None:
        self.root = root
        self.sources = sources
        self.build_dir = root / "build"

    def names(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "vendor").glob("*.toml"))

    def pin(self, name: str) -> Pin:
        path = self.root / "vendor" / f"{name}.toml"
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise ToolError(f"unknown upstream {name!r}: no {path} (known: {known}).")
        return Pin.load(path)

    def patch_dir(self, name: str) -> Path:
        return self.root / "patches" / name

    def tree(self, name: str) -> Path:
        return self.build_dir / name

    def stamp(self, pin: Pin) -> str:
        """What a tree was built from: the pin and every patch in series order."""
        digest = hashlib.sha256(f"{TOOL_VERSION}\0".encode())
        digest.update(pin.path.read_bytes())
        for patch in read_series(self.patch_dir(pin.name)):
            digest.update(patch.name.encode() + b"\0" + patch.read_bytes())
        return digest.hexdigest()

    # -- tree state --------------------------------------------------------------------
    @staticmethod
    def read_stamp(tree: Path) -> dict[str, str]:
        path = tree / ".git" / STAMP_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    @staticmethod
    def dirty_files(tree: Path) -> list[str]:
        out = run_git(["status", "--porcelain", "--untracked-files=all"], cwd=tree).stdout
        return [line[3:] for line in out.splitlines() if line.strip()]

    def unexported_commits(self, name: str) -> list[str]:
        """Commits in the tree that differ from what patches/ holds (by rendered content)."""
        tree = self.tree(name)
        exported = {p.name: read_exact(p) for p in read_series(self.patch_dir(name))}
        rendered = self.render_patches(tree)
        return [fname for fname, text in rendered if exported.get(fname) != text]

    # -- apply ---------------------------------------------------------------------------
    def apply(self, name: str, force: bool = False) -> str:
        pin = self.pin(name)
        tree = self.tree(name)
        stamp = self.stamp(pin)
        if is_git_repo(tree):
            if (tree / ".git" / REBASE_STATE_FILE).exists():
                raise ToolError(
                    f"{name}: a rebase is in progress in {tree}; finish it with "
                    f"`rebase {name} --continue` or `--abort` first."
                )
            recorded = self.read_stamp(tree)
            head = run_git(["rev-parse", "HEAD"], cwd=tree).stdout.strip()
            dirty = self.dirty_files(tree)
            moved = recorded.get("head") != head
            if not force and (dirty or moved):
                what = (
                    f"uncommitted edits ({', '.join(dirty[:5])})"
                    if dirty
                    else "commits not exported to patches/"
                )
                raise ToolError(
                    f"{name}: {tree} has {what}; applying would lose them. Commit and run "
                    f"`python apply_patches.py refresh {name}` to keep them, or pass --force to "
                    "discard them."
                )
            if recorded.get("stamp") == stamp and not dirty and not moved:
                return f"{name}: up to date ({len(read_series(self.patch_dir(name)))} patches)"
        self.build_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.build_dir))
        try:
            origin = self.sources.export_tree(pin, staging / name)
            applied = self._build_repo(pin, staging / name)
            head = run_git(["rev-parse", "HEAD"], cwd=staging / name).stdout.strip()
            (staging / name / ".git" / STAMP_FILE).write_text(
                json.dumps({"stamp": stamp, "head": head, "pin": pin.ref}, indent=1) + "\n"
            )
            old = self.build_dir / f".{name}-old"
            if old.exists():
                shutil.rmtree(old)
            if tree.exists():
                tree.rename(old)
            (staging / name).rename(tree)
            if old.exists():
                shutil.rmtree(old)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return f"{name}: built {tree.relative_to(self.root)} from {origin}, {applied} patches"

    def _build_repo(self, pin: Pin, tree: Path) -> int:
        run_git(["init", "-q", "-b", "main"], cwd=tree)
        (tree / ".git" / "info").mkdir(exist_ok=True)
        (tree / ".git" / "info" / "exclude").write_text("\n".join(TREE_EXCLUDES) + "\n")
        run_git(["config", "core.autocrlf", "false"], cwd=tree)
        run_git(["add", "-A", "-f", "."], cwd=tree)
        run_git(["commit", "-q", "--allow-empty", "-m", f"upstream: {pin.ref}"], cwd=tree)
        run_git(["tag", UPSTREAM_TAG], cwd=tree)
        patches = read_series(self.patch_dir(pin.name))
        for path in patches:
            self.apply_patch_file(tree, path)
        return len(patches)

    @staticmethod
    def apply_patch_file(tree: Path, path: Path) -> None:
        patch = Patch.parse(path)
        proc = run_git(
            ["apply", "--index", "--whitespace=nowarn", str(path)], cwd=tree, check=False
        )
        if proc.returncode != 0:
            where = re.search(r"patch failed: (.+):(\d+)", proc.stderr)
            if where:
                hunk = hunk_for_line(read_exact(path), where.group(1), int(where.group(2)))
                detail = f"file {where.group(1)}, {hunk} does not apply"
            else:
                detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"
            raise ToolError(
                f"patch {path.parent.name}/{path.name} failed: {detail}. The previous tree is "
                "untouched. Fix the patch (or rebase the series if upstream moved).\n"
                f"git said: {proc.stderr.strip()}"
            )
        run_git(["commit", "-q", "--allow-empty", "-m", patch.message], cwd=tree)

    # -- refresh -------------------------------------------------------------------------
    @staticmethod
    def render_patches(tree: Path) -> list[tuple[str, str]]:
        """Render every commit above the upstream tag as (file name, patch text), stably."""
        revs = run_git(["rev-list", "--reverse", f"{UPSTREAM_TAG}..HEAD"], cwd=tree).stdout.split()
        rendered: list[tuple[str, str]] = []
        for number, rev in enumerate(revs, start=1):
            message = run_git(["log", "-1", "--format=%B", rev], cwd=tree).stdout.strip()
            subject, _, body = message.partition("\n")
            body = body.strip()
            if "Upstream-Status:" not in body:
                body = (body + "\n\n" if body else "Why: (say why this patch exists)\n\n") + (
                    "Upstream-Status: Pending"
                )
            diff = run_git(
                [
                    "diff-tree",
                    "-p",
                    "--no-color",
                    "--no-renames",
                    "--full-index",
                    "--binary",
                    "-U3",
                    f"{rev}^",
                    rev,
                ],
                cwd=tree,
            ).stdout
            fname = f"{number:04d}-{slugify(subject)}.patch"
            rendered.append((fname, Patch.render(subject.strip(), body, diff)))
        return rendered

    def refresh(self, name: str, check: bool = False) -> tuple[bool, list[str]]:
        """Export the tree's commits to patches/NAME; return (changed, changes)."""
        tree = self.tree(name)
        if not is_git_repo(tree):
            raise ToolError(f"{name}: no patched tree at {tree}; run `apply {name}` first.")
        dirty = self.dirty_files(tree)
        if dirty and not check:
            raise ToolError(
                f"{name}: {tree} has uncommitted edits ({', '.join(dirty[:5])}); "
                "commit them there (one commit per concern) and refresh again."
            )
        rendered = self.render_patches(tree)
        patch_dir = self.patch_dir(name)
        series_text = "".join(f"{fname}\n" for fname, _ in rendered)
        old_series = patch_dir / "series"
        current = {p.name: read_exact(p) for p in patch_dir.glob("*.patch")}
        changes = [
            f"{'add' if f not in current else 'update'} {f}"
            for f, text in rendered
            if current.get(f) != text
        ]
        changes += [f"remove {f}" for f in sorted(set(current) - {f for f, _ in rendered})]
        if (old_series.read_text() if old_series.exists() else "") != series_text:
            changes.append("update series")
        if dirty:
            changes.append(f"uncommitted edits in the tree: {', '.join(dirty[:5])}")
        if check or not changes:
            return bool(changes), changes
        patch_dir.mkdir(parents=True, exist_ok=True)
        for fname in set(current) - {f for f, _ in rendered}:
            (patch_dir / fname).unlink()
        for fname, text in rendered:
            write_exact(patch_dir / fname, text)
        old_series.write_text(series_text)
        # the tree now matches patches/: record that so `apply` sees it as up to date
        pin = self.pin(name)
        head = run_git(["rev-parse", "HEAD"], cwd=tree).stdout.strip()
        (tree / ".git" / STAMP_FILE).write_text(
            json.dumps({"stamp": self.stamp(pin), "head": head, "pin": pin.ref}, indent=1) + "\n"
        )
        return True, changes

    # -- status --------------------------------------------------------------------------
    def status(self, name: str) -> list[str]:
        pin = self.pin(name)
        lines = [f"{name}: pinned {pin.ref} ({pin.path.relative_to(self.root)})"]
        series = read_series(self.patch_dir(name))
        tree = self.tree(name)
        if not is_git_repo(tree):
            lines.append(f"  tree: not built ({len(series)} patches in series); run `apply {name}`")
            return lines
        if (tree / ".git" / REBASE_STATE_FILE).exists():
            state = self._load_rebase_state(name)
            lines.append(
                f"  REBASE IN PROGRESS onto {state['target']}: fix the conflict, then "
                f"`rebase {name} --continue`, or `--abort`"
            )
            lines += [f"    {line}" for line in state["report"]]
            lines.append(f"    {len(state['todo'])} patches still to replay")
            return lines
        applied = run_git(
            ["log", "--reverse", "--format=%s", f"{UPSTREAM_TAG}..HEAD"], cwd=tree
        ).stdout.splitlines()
        lines.append(f"  tree: {tree.relative_to(self.root)}, {len(applied)} patches applied")
        lines += [f"    {i:2d}. {subject}" for i, subject in enumerate(applied, start=1)]
        dirty = self.dirty_files(tree)
        lines.append(f"  uncommitted edits: {', '.join(dirty) if dirty else 'none'}")
        unexported = self.unexported_commits(name)
        lines.append(
            "  commits not in patches/: " + (", ".join(unexported) if unexported else "none")
        )
        if unexported:
            verdict = f"stale: the tree has commits not in patches/; run `refresh {name}`"
        elif self.read_stamp(tree).get("stamp") != self.stamp(pin):
            verdict = f"patches/ or the pin changed since the tree was built; run `apply {name}`"
        else:
            verdict = "in step"
        lines.append(f"  patches/ vs tree: {verdict}")
        return lines

    # -- rebase --------------------------------------------------------------------------
    def rebase(self, name: str, to: str) -> list[str]:
        pin = self.pin(name)
        tree = self.tree(name)
        self.apply(name)  # an up-to-date, clean tree whose commits are exactly patches/
        if self.dirty_files(tree) or self.unexported_commits(name):
            raise ToolError(f"{name}: refresh or discard the edits in {tree} before rebasing.")
        new_pin = self._resolve_new_pin(pin, to)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-rebase-", dir=self.build_dir))
        try:
            new_tree = staging / "src"
            self.sources.export_tree(new_pin, new_tree)
            # the new upstream becomes a root commit inside the existing tree's repository
            run_git(["checkout", "-q", "--orphan", "flatrl-rebase"], cwd=tree)
            run_git(["rm", "-rq", "--cached", "."], cwd=tree)
            for entry in tree.iterdir():
                if entry.name != ".git":
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else (
                        entry.unlink()
                    )
            for entry in new_tree.iterdir():
                shutil.move(str(entry), tree / entry.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        run_git(["add", "-A", "-f", "."], cwd=tree)
        run_git(["commit", "-q", "--allow-empty", "-m", f"upstream: {new_pin.ref}"], cwd=tree)
        old_base = run_git(["rev-parse", UPSTREAM_TAG], cwd=tree).stdout.strip()
        old_head = run_git(["rev-parse", "main"], cwd=tree).stdout.strip()
        commits = run_git(["rev-list", "--reverse", f"{old_base}..{old_head}"], cwd=tree).stdout
        state = {
            "pin": dataclasses.asdict(new_pin) | {"path": str(pin.path)},
            "old_base": old_base,
            "old_head": old_head,
            "target": new_pin.ref,
            "todo": commits.split(),
            "report": [],
        }
        self._save_rebase_state(tree, state)
        return self._rebase_continue(name, state)

    def _resolve_new_pin(self, pin: Pin, to: str) -> Pin:
        if pin.kind == "git":
            commit = to
            if not re.fullmatch(r"[0-9a-f]{40}", commit):
                raise ToolError(
                    f"{pin.name}: --to must be a full 40-character commit id, got {to!r}."
                )
            return dataclasses.replace(pin, commit=commit, tree_sha256=None)
        sdist = self.sources.fetch_new_sdist(pin, to)
        with tempfile.TemporaryDirectory() as tmp:
            self.sources._unpack_sdist(sdist, Path(tmp) / "t")
            tree_hash = tree_sha256(Path(tmp) / "t")
        return dataclasses.replace(
            pin, version=to, sha256=sha256_file(sdist), tree_sha256=tree_hash
        )

    @staticmethod
    def _save_rebase_state(tree: Path, state: dict) -> None:
        (tree / ".git" / REBASE_STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")

    def _rebase_continue(self, name: str, state: dict) -> list[str]:
        tree = self.tree(name)
        while state["todo"]:
            commit = state["todo"][0]
            subject = run_git(["log", "-1", "--format=%s", commit], cwd=tree).stdout.strip()
            message = run_git(["log", "-1", "--format=%B", commit], cwd=tree).stdout
            diff = run_git(
                ["diff-tree", "-p", "--binary", "--full-index", f"{commit}^", commit], cwd=tree
            ).stdout
            clean = subprocess.run(
                ["git", "apply", "--index", "--whitespace=nowarn", "-"],
                cwd=tree,
                input=diff.encode("utf-8", "surrogateescape"),
                capture_output=True,
                env={**os.environ, **GIT_IDENTITY},
            )
            if clean.returncode == 0:
                outcome = "clean"
            else:
                picked = run_git(
                    ["cherry-pick", "--no-commit", "--strategy=recursive", commit],
                    cwd=tree,
                    check=False,
                )
                if picked.returncode != 0:
                    conflicted = run_git(
                        ["diff", "--name-only", "--diff-filter=U"], cwd=tree
                    ).stdout.split()
                    state["report"].append(f"conflict  {subject} ({', '.join(conflicted)})")
                    state["current_message"] = message
                    self._save_rebase_state(tree, state)
                    raise ToolError(
                        "\n".join(state["report"]) + f"\n{name}: patch '{subject}' conflicts in "
                        f"{', '.join(conflicted) or '?'}. Fix the files in {tree}, `git add` "
                        f"them, then `python apply_patches.py rebase {name} --continue` "
                        "(or `--abort` to return to the old upstream)."
                    )
                outcome = "merged"
            run_git(["commit", "-q", "--allow-empty", "-m", message], cwd=tree)
            state["report"].append(f"{outcome:9s} {subject}")
            state["todo"].pop(0)
            state.pop("current_message", None)
            self._save_rebase_state(tree, state)
        return self._rebase_finish(name, state)

    def rebase_continue(self, name: str) -> list[str]:
        tree = self.tree(name)
        state = self._load_rebase_state(name)
        if state.get("current_message"):
            unmerged = run_git(["diff", "--name-only", "--diff-filter=U"], cwd=tree).stdout
            if unmerged.strip():
                raise ToolError(f"{name}: still unmerged: {unmerged.split()}; fix and `git add`.")
            markers = run_git(
                ["grep", "-l", "-E", "^(<<<<<<<|>>>>>>>) ", "--cached"], cwd=tree, check=False
            ).stdout.split()
            if markers:
                raise ToolError(f"{name}: conflict markers left in {', '.join(markers)}.")
            subject = state["current_message"].splitlines()[0]
            run_git(["commit", "-q", "--allow-empty", "-m", state["current_message"]], cwd=tree)
            state["report"][-1] = f"{'resolved':9s} {subject}"
            state["todo"].pop(0)
            state.pop("current_message")
            self._save_rebase_state(tree, state)
        return self._rebase_continue(name, state)

    def rebase_abort(self, name: str) -> list[str]:
        tree = self.tree(name)
        state = self._load_rebase_state(name)
        run_git(["cherry-pick", "--abort"], cwd=tree, check=False)
        run_git(["reset", "-q", "--hard"], cwd=tree, check=False)
        run_git(["checkout", "-q", "-f", "main"], cwd=tree)
        run_git(["reset", "-q", "--hard", state["old_head"]], cwd=tree)
        run_git(["clean", "-qfdx"], cwd=tree, check=False)
        run_git(["branch", "-D", "flatrl-rebase"], cwd=tree, check=False)
        (tree / ".git" / REBASE_STATE_FILE).unlink()
        return [f"{name}: rebase aborted; the tree is back on {self.pin(name).ref}"]

    def _load_rebase_state(self, name: str) -> dict:
        path = self.tree(name) / ".git" / REBASE_STATE_FILE
        if not path.is_file():
            raise ToolError(f"{name}: no rebase in progress.")
        return json.loads(path.read_text())

    def _rebase_finish(self, name: str, state: dict) -> list[str]:
        tree = self.tree(name)
        pin = self.pin(name)
        new = state["pin"]
        run_git(["branch", "-f", "main", "HEAD"], cwd=tree)
        run_git(["checkout", "-q", "main"], cwd=tree)
        run_git(["branch", "-D", "flatrl-rebase"], cwd=tree, check=False)
        base = run_git(["rev-list", "--max-parents=0", "HEAD"], cwd=tree).stdout.split()[0]
        run_git(["tag", "-f", UPSTREAM_TAG, base], cwd=tree)
        if new["tree_sha256"] is None:
            with tempfile.TemporaryDirectory() as tmp:
                archive = subprocess.run(
                    ["git", "archive", "--format=tar", base],
                    cwd=tree,
                    capture_output=True,
                    check=True,
                )
                with tarfile.open(fileobj=io.BytesIO(archive.stdout), mode="r:") as tar:
                    tar.extractall(tmp, filter="tar")
                new["tree_sha256"] = tree_sha256(Path(tmp))
        keys = ("version", "sha256") if pin.kind == "pypi-sdist" else ("commit",)
        pin.save(**{k: new[k] for k in keys}, tree_sha256=new["tree_sha256"])
        (tree / ".git" / REBASE_STATE_FILE).unlink()
        self.refresh(name)
        return [*state["report"], f"{name}: rebased onto {pin.ref}; pin and patches/ updated."]


# --------------------------------------------------------------------------------------------
# Command line


def parse_sources(values: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ToolError(f"--source takes NAME=PATH, got {value!r}.")
        overrides[name] = path
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="project root holding vendor/, patches/ and build/",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("FLATRL_CACHE", "~/.cache/flatrl")),
        help="download cache (default $FLATRL_CACHE or ~/.cache/flatrl)",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="local sdist, tree, checkout or mirror for an upstream",
    )
    parser.add_argument("--offline", action="store_true", help="never use the network")
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="build patched trees under build/")
    apply.add_argument("names", nargs="*")
    apply.add_argument("--force", action="store_true", help="discard edits in the tree")
    apply.add_argument(
        "--keep-going",
        action="store_true",
        help="build the others when an upstream's source is unavailable",
    )
    vendor = sub.add_parser("vendor", help="obtain and verify pinned sources into the cache")
    vendor.add_argument("names", nargs="*")
    status = sub.add_parser("status", help="show pins, applied patches and pending edits")
    status.add_argument("names", nargs="*")
    refresh = sub.add_parser("refresh", help="export tree commits to patches/NAME")
    refresh.add_argument("names", nargs="*")
    refresh.add_argument(
        "--check", action="store_true", help="fail if refreshing would change anything"
    )
    rebase = sub.add_parser("rebase", help="replay the series onto another upstream")
    rebase.add_argument("name")
    group = rebase.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", help="PyPI version or full git commit id")
    group.add_argument("--continue", dest="cont", action="store_true")
    group.add_argument("--abort", action="store_true")
    return parser


def iter_names(project: Project, names: Sequence[str]) -> Iterator[str]:
    for name in names or project.names():
        project.pin(name)  # validates the name with a clear message
        yield name


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sources = Sources(
            args.cache.expanduser().resolve(), parse_sources(args.source), args.offline
        )
        project = Project(args.root.resolve(), sources)
        if args.command == "apply":
            unavailable = []
            for name in iter_names(project, args.names):
                try:
                    print(project.apply(name, force=args.force))
                except SourceUnavailable as exc:
                    if not args.keep_going:
                        raise
                    unavailable.append(name)
                    print(f"SKIPPED {exc}", file=sys.stderr)
            return 0
        if args.command == "vendor":
            for name in iter_names(project, args.names):
                with tempfile.TemporaryDirectory() as tmp:
                    origin = sources.export_tree(project.pin(name), Path(tmp) / "t")
                print(f"{name}: {project.pin(name).ref} verified (from {origin})")
            return 0
        if args.command == "status":
            for name in iter_names(project, args.names):
                print("\n".join(project.status(name)))
            return 0
        if args.command == "refresh":
            failed = False
            for name in iter_names(project, args.names):
                if args.check and not is_git_repo(project.tree(name)):
                    print(f"{name}: no tree under build/ to check; skipped (run apply first)")
                    continue
                changed, changes = project.refresh(name, check=args.check)
                verb = "would change" if args.check else "changed"
                print(
                    f"{name}: "
                    + (
                        f"{verb}: " + "; ".join(changes)
                        if changed
                        else "patches/ in step with the tree"
                    )
                )
                failed |= args.check and changed
            return 1 if failed else 0
        if args.command == "rebase":
            if args.abort:
                lines = project.rebase_abort(args.name)
            elif args.cont:
                lines = project.rebase_continue(args.name)
            else:
                lines = project.rebase(args.name, args.to)
            print("\n".join(lines))
            return 0
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
