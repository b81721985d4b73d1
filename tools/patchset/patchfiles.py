"""Patch files: the series, each patch's header (Subject, why, Upstream-Status), and export.

A patch file is a header followed by a git diff. Export renders every commit above the
``upstream`` tag of a patched tree into such files, byte-stably (no dates, fixed context).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from .common import UPSTREAM_TAG, ToolError, read_exact, run_git, write_exact

# `git diff-tree` options of an exported patch: stable text, full blob ids, 3 lines of context
DIFF_OPTIONS = ["-p", "--no-color", "--no-renames", "--full-index", "--binary", "-U3"]


@dataclasses.dataclass
class Patch:
    """One parsed patch file; parsing enforces the header every patch must carry."""

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
    """The patch files named by patch_dir/series, in order (none when there is no series)."""
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


def hash_series(digest: hashlib._Hash, patch_dir: Path) -> None:
    """Feed every patch of the series (name and bytes, in order) into digest."""
    for patch in read_series(patch_dir):
        digest.update(patch.name.encode() + b"\0" + patch.read_bytes())


def series_id(patch_dir: Path, length: int = 10) -> str:
    """A short id of the series' contents: the same patches give the same id, any edit a new one.

    It labels artefacts built from the series (wheel versions) independently of the tool.
    """
    digest = hashlib.sha256(b"flatrl-series\0")
    hash_series(digest, patch_dir)
    return digest.hexdigest()[:length]


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


def slugify(subject: str) -> str:
    """A patch file name's stem from its subject."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-").lower()
    return slug[:60].rstrip("-") or "patch"


def render_commit(tree: Path, rev: str, number: int) -> tuple[str, str]:
    """Render one commit as (file name, patch text); a header without a status gets Pending."""
    message = run_git(["log", "-1", "--format=%B", rev], cwd=tree).stdout.strip()
    subject, _, body = message.partition("\n")
    body = body.strip()
    if "Upstream-Status:" not in body:
        body = (body + "\n\n" if body else "Why: (say why this patch exists)\n\n") + (
            "Upstream-Status: Pending"
        )
    diff = run_git(["diff-tree", *DIFF_OPTIONS, f"{rev}^", rev], cwd=tree).stdout
    fname = f"{number:04d}-{slugify(subject)}.patch"
    return fname, Patch.render(subject.strip(), body, diff)


def render_patches(tree: Path) -> list[tuple[str, str]]:
    """Render every commit above the upstream tag as (file name, patch text), stably."""
    revs = run_git(["rev-list", "--reverse", f"{UPSTREAM_TAG}..HEAD"], cwd=tree).stdout.split()
    return [render_commit(tree, rev, number) for number, rev in enumerate(revs, start=1)]


def export_changes(rendered: list[tuple[str, str]], patch_dir: Path) -> list[str]:
    """What writing `rendered` into patch_dir would change ('add X', 'update series', ...)."""
    current = {p.name: read_exact(p) for p in patch_dir.glob("*.patch")}
    changes = [
        f"{'add' if f not in current else 'update'} {f}"
        for f, text in rendered
        if current.get(f) != text
    ]
    changes += [f"remove {f}" for f in sorted(set(current) - {f for f, _ in rendered})]
    series = patch_dir / "series"
    if (series.read_text() if series.exists() else "") != series_text(rendered):
        changes.append("update series")
    return changes


def series_text(rendered: list[tuple[str, str]]) -> str:
    return "".join(f"{fname}\n" for fname, _ in rendered)


def write_series(rendered: list[tuple[str, str]], patch_dir: Path) -> None:
    """Make patch_dir hold exactly the rendered patches and their series."""
    patch_dir.mkdir(parents=True, exist_ok=True)
    for stale in {p.name for p in patch_dir.glob("*.patch")} - {f for f, _ in rendered}:
        (patch_dir / stale).unlink()
    for fname, text in rendered:
        write_exact(patch_dir / fname, text)
    (patch_dir / "series").write_text(series_text(rendered))
