"""Command line: one function per subcommand, registered with its sub-parser (set_defaults)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from . import __doc__ as PACKAGE_DOC
from .common import SourceUnavailable, ToolError, is_git_repo
from .rebase import Rebase
from .sources import Sources
from .tree import Project
from .wheel import build_wheel, install_pth, local_version

REPO_ROOT = Path(__file__).resolve().parents[2]
Command = Callable[[Project, argparse.Namespace], int]


def iter_names(project: Project, names: Sequence[str]) -> Iterator[str]:
    """The named upstreams (all of vendor/ when none), each validated with a clear message."""
    for name in names or project.names():
        project.pin(name)
        yield name


def cmd_apply(project: Project, args: argparse.Namespace) -> int:
    for name in iter_names(project, args.names):
        try:
            print(project.apply(name, force=args.force))
        except SourceUnavailable as exc:
            if not args.keep_going:
                raise
            print(f"SKIPPED {exc}", file=sys.stderr)
    return 0


def cmd_vendor(project: Project, args: argparse.Namespace) -> int:
    for name in iter_names(project, args.names):
        with tempfile.TemporaryDirectory() as tmp:
            origin = project.sources.export_tree(project.pin(name), Path(tmp) / "t")
        print(f"{name}: {project.pin(name).ref} verified (from {origin})")
    return 0


def cmd_status(project: Project, args: argparse.Namespace) -> int:
    for name in iter_names(project, args.names):
        print("\n".join(project.status(name)))
    return 0


def cmd_refresh(project: Project, args: argparse.Namespace) -> int:
    failed = False
    for name in iter_names(project, args.names):
        if args.check and not is_git_repo(project.tree(name)):
            print(f"{name}: no tree under build/ to check; skipped (run apply first)")
            continue
        changed, changes = project.refresh(name, check=args.check)
        verb = "would change" if args.check else "changed"
        summary = f"{verb}: " + "; ".join(changes) if changed else "patches/ in step with the tree"
        print(f"{name}: {summary}")
        failed |= args.check and changed
    return 1 if failed else 0


def cmd_rebase(project: Project, args: argparse.Namespace) -> int:
    rebase = Rebase(project, args.name)
    if args.abort:
        lines = rebase.abort()
    elif args.cont:
        lines = rebase.resume()
    else:
        lines = rebase.start(args.to)
    print("\n".join(lines))
    return 0


def cmd_version(project: Project, args: argparse.Namespace) -> int:
    print(local_version(project, project.pin(args.name)))
    return 0


def cmd_wheel(project: Project, args: argparse.Namespace) -> int:
    names = args.names or [n for n in project.names() if project.pin(n).version_file]
    for name in iter_names(project, names):
        wheel = build_wheel(project, name, args.dist.resolve(), args.python)
        print(f"{name}: built {wheel}")
    return 0


def cmd_pth(project: Project, args: argparse.Namespace) -> int:
    for name in iter_names(project, args.names):
        for pth in install_pth(project, project.pin(name), args.venv.resolve()):
            print(f"{name}: {pth} -> {pth.read_text().strip()}")
    return 0


def parse_sources(values: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ToolError(f"--source takes NAME=PATH, got {value!r}.")
        overrides[name] = path
    return overrides


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(PACKAGE_DOC or "").split("\n\n")[0])
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        sub_parser = sub.add_parser(name, help=help)
        sub_parser.set_defaults(func=func)
        return sub_parser

    apply = command("apply", cmd_apply, "build patched trees under build/")
    apply.add_argument("names", nargs="*")
    apply.add_argument("--force", action="store_true", help="discard edits in the tree")
    apply.add_argument(
        "--venv", type=Path, default=None, help="folder of environments (build_env); .venv"
    )
    apply.add_argument(
        "--keep-going",
        action="store_true",
        help="build the others when an upstream's source is unavailable",
    )
    command("vendor", cmd_vendor, "obtain and verify pinned sources into the cache").add_argument(
        "names", nargs="*"
    )
    command("status", cmd_status, "show pins, applied patches and pending edits").add_argument(
        "names", nargs="*"
    )
    refresh = command("refresh", cmd_refresh, "export tree commits to patches/NAME")
    refresh.add_argument("names", nargs="*")
    refresh.add_argument(
        "--check", action="store_true", help="fail if refreshing would change anything"
    )
    rebase = command("rebase", cmd_rebase, "replay the series onto another upstream")
    rebase.add_argument("name")
    group = rebase.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", help="PyPI version or full git commit id")
    group.add_argument("--continue", dest="cont", action="store_true")
    group.add_argument("--abort", action="store_true")
    version = command("version", cmd_version, "print the wheel version of a patched release")
    version.add_argument("name")
    wheel = command("wheel", cmd_wheel, "build wheels of patched trees (pins with version_file)")
    wheel.add_argument("names", nargs="*")
    wheel.add_argument("--dist", type=Path, default=Path("dist"), help="output folder")
    wheel.add_argument("--python", default=sys.executable, help="interpreter that runs pip")
    wheel.add_argument(
        "--venv", type=Path, default=None, help="folder of environments (build_env); .venv"
    )
    pth = command("pth", cmd_pth, "make each pin's env import its tree (a .pth line)")
    pth.add_argument("names", nargs="*")
    pth.add_argument("--venv", type=Path, default=Path(".venv"), help="folder of environments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a ToolError is printed as `error: ...` with exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        venv_root = getattr(args, "venv", None) or args.root / ".venv"
        sources = Sources(
            args.cache.expanduser().resolve(),
            parse_sources(args.source),
            args.offline,
            venv_root=venv_root.resolve(),
        )
        return args.func(Project(args.root.resolve(), sources), args)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
