"""Every relative link in the README and docs/ leads somewhere.

The README and docs/results.md are the front door: a results row links to the table, figure or
section that backs it. A renamed heading or a moved figure breaks such a link silently, so this
checks every relative link's file and, for ``#anchor`` links, the heading GitHub would make of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def outside_fences(markdown: str) -> Iterator[str]:
    """The lines of ``markdown`` that are not in fenced code (nor its fence lines)."""
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence:
            yield line


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (fenced code skipped).

    GitHub lower-cases the heading text, drops every character but letters, digits, ``_``, ``-``
    and spaces, turns spaces into ``-``, and suffixes repeats with ``-1``, ``-2``, ...
    """
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in outside_fences(markdown):
        match = re.match(r"#{1,6} (.+)", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    """Links in ``path`` outside fenced code that are not URLs or mail addresses."""
    return [
        target
        for line in outside_fences(path.read_text())
        for target in LINK.findall(line)
        if not re.match(r"[a-z]+:", target)
    ]


def test_anchor_rules_match_github():
    text = (
        "# Results\n## At a glance\n```\n# not a heading\n```\n"
        "## CQL: its own (`x.yaml`)\n## At a glance\n"
    )
    assert github_anchors(text) == {"results", "at-a-glance", "cql-its-own-xyaml", "at-a-glance-1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO)}")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{doc.name} has broken links:\n" + "\n".join(broken)
