"""Patched trees: build ``build/<name>/`` as a git repository (upstream + one commit per patch),
record what it was built from (the stamp), report its state, and export it back to patches/.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from .build import build_extensions, is_built, output_files
from .common import (
    REBASE_STATE_FILE,
    STAMP_FILE,
    TOOL_VERSION,
    TREE_EXCLUDES,
    UPSTREAM_TAG,
    ToolError,
    is_git_repo,
    read_exact,
    run_git,
)
from .patchfiles import (
    Patch,
    export_changes,
    hash_series,
    hunk_for_line,
    read_series,
    render_patches,
    write_series,
)
from .pins import Pin
from .sources import Sources


def read_stamp(tree: Path) -> dict[str, str]:
    path = tree / ".git" / STAMP_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_stamp(tree: Path, stamp: str, pin: Pin) -> None:
    """Record that the tree at its current HEAD is exactly what `stamp` describes."""
    head = run_git(["rev-parse", "HEAD"], cwd=tree).stdout.strip()
    (tree / ".git" / STAMP_FILE).write_text(
        json.dumps({"stamp": stamp, "head": head, "pin": pin.ref}, indent=1) + "\n"
    )


def rebase_state_path(tree: Path) -> Path:
    return tree / ".git" / REBASE_STATE_FILE


def dirty_files(tree: Path) -> list[str]:
    out = run_git(["status", "--porcelain", "--untracked-files=all"], cwd=tree).stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def init_repo(tree: Path, pin: Pin) -> None:
    """Make the unpacked upstream in `tree` the root commit (tagged upstream) of a new repo."""
    run_git(["init", "-q", "-b", "main"], cwd=tree)
    (tree / ".git" / "info").mkdir(exist_ok=True)
    # the pin's build outputs (compiled extensions) are products, never edits
    excludes = TREE_EXCLUDES + [f"/{pattern}" for pattern in pin.build_outputs]
    (tree / ".git" / "info" / "exclude").write_text("\n".join(excludes) + "\n")
    run_git(["config", "core.autocrlf", "false"], cwd=tree)
    run_git(["add", "-A", "-f", "."], cwd=tree)
    run_git(["commit", "-q", "--allow-empty", "-m", f"upstream: {pin.ref}"], cwd=tree)
    run_git(["tag", UPSTREAM_TAG], cwd=tree)


def apply_patch_file(tree: Path, path: Path) -> None:
    """Apply one patch with zero fuzz and commit it with its header as the message."""
    patch = Patch.parse(path)
    proc = run_git(["apply", "--index", "--whitespace=nowarn", str(path)], cwd=tree, check=False)
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


class Project:
    """Pins, patches and patched trees under one root (vendor/, patches/, build/)."""

    def __init__(self, root: Path, sources: Sources) -> None:
        self.root = root
        self.sources = sources
        self.build_dir = root / "build"
        self.venv_root = sources.venv_root  # the environments a pin's build_env names

    def series_of(self, pin: Pin) -> list[str]:
        """Every pin (this one included) that is a series of the same upstream as `pin`."""
        return [n for n in self.names() if self.pin(n).upstream == pin.upstream]

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
        digest.update(pin.stamp_bytes())
        hash_series(digest, self.patch_dir(pin.name))
        return digest.hexdigest()

    def unexported_commits(self, name: str) -> list[str]:
        """Commits in the tree that differ from what patches/ holds (by rendered content)."""
        exported = {p.name: read_exact(p) for p in read_series(self.patch_dir(name))}
        rendered = render_patches(self.tree(name))
        return [fname for fname, text in rendered if exported.get(fname) != text]

    # -- apply ---------------------------------------------------------------------------
    def apply(self, name: str, force: bool = False) -> str:
        """Build the tree atomically; a no-op when it is up to date, refused over edits."""
        pin = self.pin(name)
        tree = self.tree(name)
        stamp = self.stamp(pin)
        if is_git_repo(tree) and self._up_to_date(name, stamp, force):
            return f"{name}: up to date ({len(read_series(self.patch_dir(name)))} patches)"
        self.build_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.build_dir))
        try:
            new = staging / name
            origin = self.sources.export_tree(pin, new)
            init_repo(new, pin)
            patches = read_series(self.patch_dir(name))
            for path in patches:
                apply_patch_file(new, path)
            build_extensions(pin, new, self.venv_root)  # in staging: a failure keeps the old tree
            write_stamp(new, stamp, pin)
            self._swap_in(new, tree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return f"{name}: built {tree.relative_to(self.root)} from {origin}, {len(patches)} patches"

    def _up_to_date(self, name: str, stamp: str, force: bool) -> bool:
        """Whether the existing tree is current; raise if rebuilding it would lose work."""
        tree = self.tree(name)
        if rebase_state_path(tree).exists():
            raise ToolError(
                f"{name}: a rebase is in progress in {tree}; finish it with "
                f"`rebase {name} --continue` or `--abort` first."
            )
        recorded = read_stamp(tree)
        head = run_git(["rev-parse", "HEAD"], cwd=tree).stdout.strip()
        dirty = dirty_files(tree)
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
        built = is_built(self.pin(name), tree)  # e.g. extensions removed by `git clean -x`
        return recorded.get("stamp") == stamp and not dirty and not moved and built

    def build_in_place(self, name: str) -> list[Path]:
        """Build the extensions of the tree as it stands (after a rebase replaced its files)."""
        return build_extensions(self.pin(name), self.tree(name), self.venv_root)

    def _swap_in(self, new: Path, tree: Path) -> None:
        """Replace tree by new with two renames, so a failure never leaves half a tree."""
        old = self.build_dir / f".{tree.name}-old"
        if old.exists():
            shutil.rmtree(old)
        if tree.exists():
            tree.rename(old)
        new.rename(tree)
        if old.exists():
            shutil.rmtree(old)

    # -- refresh -------------------------------------------------------------------------
    def refresh(self, name: str, check: bool = False) -> tuple[bool, list[str]]:
        """Export the tree's commits to patches/NAME; return (changed, changes)."""
        tree = self.tree(name)
        if not is_git_repo(tree):
            raise ToolError(f"{name}: no patched tree at {tree}; run `apply {name}` first.")
        dirty = dirty_files(tree)
        if dirty and not check:
            raise ToolError(
                f"{name}: {tree} has uncommitted edits ({', '.join(dirty[:5])}); "
                "commit them there (one commit per concern) and refresh again."
            )
        rendered = render_patches(tree)
        changes = export_changes(rendered, self.patch_dir(name))
        if dirty:
            changes.append(f"uncommitted edits in the tree: {', '.join(dirty[:5])}")
        if check or not changes:
            return bool(changes), changes
        write_series(rendered, self.patch_dir(name))
        # the tree now matches patches/: record that so `apply` sees it as up to date
        pin = self.pin(name)
        write_stamp(tree, self.stamp(pin), pin)
        return True, changes

    # -- status --------------------------------------------------------------------------
    def status(self, name: str) -> list[str]:
        pin = self.pin(name)
        lines = [f"{name}: pinned {pin.ref} ({pin.path.relative_to(self.root)})"]
        series = self.series_of(pin)
        if len(series) > 1:
            lines.append(f"  series of {pin.upstream}: {', '.join(series)}")
        tree = self.tree(name)
        if not is_git_repo(tree):
            count = len(read_series(self.patch_dir(name)))
            lines.append(f"  tree: not built ({count} patches in series); run `apply {name}`")
            return lines
        if rebase_state_path(tree).exists():
            return lines + self._rebase_status(name)
        applied = run_git(
            ["log", "--reverse", "--format=%s", f"{UPSTREAM_TAG}..HEAD"], cwd=tree
        ).stdout.splitlines()
        lines.append(f"  tree: {tree.relative_to(self.root)}, {len(applied)} patches applied")
        lines += [f"    {i:2d}. {subject}" for i, subject in enumerate(applied, start=1)]
        dirty = dirty_files(tree)
        lines.append(f"  uncommitted edits: {', '.join(dirty) if dirty else 'none'}")
        if pin.build_ext:
            built = [str(p.relative_to(tree)) for p in output_files(pin, tree)]
            lines.append(
                f"  extensions (built in {pin.build_env}): "
                + (", ".join(built) if is_built(pin, tree) else f"missing; run `apply {name}`")
            )
        unexported = self.unexported_commits(name)
        lines.append(
            "  commits not in patches/: " + (", ".join(unexported) if unexported else "none")
        )
        if unexported:
            verdict = f"stale: the tree has commits not in patches/; run `refresh {name}`"
        elif read_stamp(tree).get("stamp") != self.stamp(pin):
            verdict = f"patches/ or the pin changed since the tree was built; run `apply {name}`"
        else:
            verdict = "in step"
        lines.append(f"  patches/ vs tree: {verdict}")
        return lines

    def _rebase_status(self, name: str) -> list[str]:
        state = json.loads(rebase_state_path(self.tree(name)).read_text())
        return [
            f"  REBASE IN PROGRESS onto {state['target']}: fix the conflict, then "
            f"`rebase {name} --continue`, or `--abort`",
            *[f"    {line}" for line in state["report"]],
            f"    {len(state['todo'])} patches still to replay",
        ]
