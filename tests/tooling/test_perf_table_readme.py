"""The README's performance table is the generated one: bench/perf_table.py swaps only its block.

The README is hand-written around one generated block; regenerating must replace exactly that
block (never append a second table) and refuse, with the fix, when the markers are gone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import perf_table  # noqa: E402


def test_only_the_block_between_the_markers_is_replaced() -> None:
    readme = f"intro\n{perf_table.README_START}\nold table\n{perf_table.README_END}\noutro\n"
    new = perf_table.with_table(readme, "| a | b |\n")
    assert new == f"intro\n{perf_table.README_START}\n| a | b |\n{perf_table.README_END}\noutro\n"
    assert perf_table.with_table(new, "| a | b |") == new  # regenerating is idempotent


def test_missing_markers_are_an_error_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="needs the lines"):
        perf_table.with_table("a README without the block\n", "| a |")
    swapped = f"{perf_table.README_END}\n{perf_table.README_START}\n"
    with pytest.raises(ValueError, match="in that order"):
        perf_table.with_table(swapped, "| a |")


def test_the_real_readme_carries_the_generated_table() -> None:
    readme = (REPO / "README.md").read_text()
    table = perf_table.markdown_table_only((REPO / "docs" / "performance.md").read_text())
    assert perf_table.with_table(readme, table) == readme


def test_a_subset_of_parts_cannot_overwrite_the_whole_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table is regenerated whole, so `--parts mlp` into docs/performance.md would lose the
    other parts' rows: refused before any part runs, naming the fix."""

    def no_part_may_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a part ran before the bad flags were refused")

    monkeypatch.setattr(perf_table.subprocess, "run", no_part_may_run)
    with pytest.raises(SystemExit) as exit_info:
        perf_table.main(["--parts", "mlp"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "leaves out d3rlpy, sam_variants, tdmpc2, muon" in err and "--out /tmp/perf.md" in err
