"""Sources: override, then cache, then network; each gives a tree verified against the pin.

An override (``<NAME>_SOURCE`` or ``--source NAME=PATH``) may be a local sdist, an unpacked tree,
a git checkout or a bare mirror. Whatever is taken is verified (sdist sha256, commit id or the
tree's ``tree_sha256``) and cached, so later runs work offline.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .build import pip_download_args
from .common import (
    SourceUnavailable,
    ToolError,
    extract_commit,
    is_git_repo,
    last_error_line,
    run_git,
    sha256_file,
    tree_sha256,
)
from .pins import Pin


class Sources:
    """Finds, verifies and caches upstream sources."""

    def __init__(
        self,
        cache_dir: Path,
        overrides: dict[str, str],
        offline: bool,
        venv_root: Path | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.overrides = overrides
        self.offline = offline
        # where build_env environments live (a pin built without isolation downloads there)
        self.venv_root = venv_root or Path(".venv").resolve()

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
            self.unpack_sdist(source, dest)
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
            extract_commit(repo, pin.commit or "", dest)
            return True
        path = self._sdist_cache_path(pin)
        if not path.is_file():
            return False
        if sha256_file(path) != pin.sha256:
            path.unlink()  # a corrupt cache entry is dropped and fetched again
            return False
        self.unpack_sdist(path, dest)
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
            sdist = self._pip_download(pin, f"{pin.package or pin.name}=={pin.version}")
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

    def _pip_download(self, pin: Pin, spec: str) -> Path:
        """Download one sdist with pip into a fresh temporary directory; return its path."""
        pip = pip_download_args(pin, self.venv_root, sys.executable)
        tmp = tempfile.mkdtemp(prefix="flatrl-sdist-")
        proc = subprocess.run(
            [*pip, "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp, spec],
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
    def unpack_sdist(path: Path, dest: Path) -> None:
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
        sdist = self._pip_download(pin, f"{pin.package or pin.name}=={version}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sdist, cached)
        shutil.rmtree(sdist.parent, ignore_errors=True)
        return cached

    def pin_for(self, pin: Pin, to: str) -> Pin:
        """The pin a rebase moves to: a full commit id (git) or a release, verified and hashed."""
        if pin.kind == "git":
            if not re.fullmatch(r"[0-9a-f]{40}", to):
                raise ToolError(
                    f"{pin.name}: --to must be a full 40-character commit id, got {to!r}."
                )
            return dataclasses.replace(pin, commit=to, tree_sha256=None)
        sdist = self.fetch_new_sdist(pin, to)
        with tempfile.TemporaryDirectory() as tmp:
            self.unpack_sdist(sdist, Path(tmp) / "t")
            tree_hash = tree_sha256(Path(tmp) / "t")
        return dataclasses.replace(
            pin, version=to, sha256=sha256_file(sdist), tree_sha256=tree_hash
        )
