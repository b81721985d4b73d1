"""Rebase: replay a tree's patch commits onto another upstream release or commit.

The state machine lives in ``.git/flatrl-rebase.json`` of the tree, so a conflict can be fixed
by hand and the replay resumed (``--continue``) or undone (``--abort``) by a later invocation:

    start -> replay each commit: clean | merged | conflict (stop; state saved)
    continue -> commit the hand-fixed conflict as "resolved", replay the rest -> finish
    finish -> main = HEAD, tag upstream, update vendor/<name>.toml, refresh patches/
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from .common import UPSTREAM_TAG, ToolError, extract_commit, git_env, run_git, tree_sha256
from .pins import Pin
from .tree import Project, dirty_files, rebase_state_path

BRANCH = "flatrl-rebase"


class Rebase:
    """One upstream's rebase, driven by start / resume / abort."""

    def __init__(self, project: Project, name: str) -> None:
        self.project = project
        self.name = name
        self.tree = project.tree(name)

    # -- state -------------------------------------------------------------------------
    def _save(self, state: dict) -> None:
        rebase_state_path(self.tree).write_text(json.dumps(state, indent=1) + "\n")

    def _load(self) -> dict:
        path = rebase_state_path(self.tree)
        if not path.is_file():
            raise ToolError(f"{self.name}: no rebase in progress.")
        return json.loads(path.read_text())

    def _git(self, *args: str, check: bool = True) -> str:
        return run_git(list(args), cwd=self.tree, check=check).stdout

    # -- transitions ---------------------------------------------------------------------
    def start(self, to: str) -> list[str]:
        """Put the new upstream under the old commits as a new root, then replay them."""
        pin = self.project.pin(self.name)
        self.project.apply(self.name)  # an up-to-date, clean tree whose commits are patches/
        if dirty_files(self.tree) or self.project.unexported_commits(self.name):
            raise ToolError(
                f"{self.name}: refresh or discard the edits in {self.tree} before rebasing."
            )
        new_pin = self.project.sources.pin_for(pin, to)
        self._commit_new_upstream(new_pin)
        old_base = self._git("rev-parse", UPSTREAM_TAG).strip()
        old_head = self._git("rev-parse", "main").strip()
        state = {
            "pin": dataclasses.asdict(new_pin) | {"path": str(pin.path)},
            "old_base": old_base,
            "old_head": old_head,
            "target": new_pin.ref,
            "todo": self._git("rev-list", "--reverse", f"{old_base}..{old_head}").split(),
            "report": [],
        }
        self._save(state)
        return self._replay(state)

    def resume(self) -> list[str]:
        """--continue: commit the hand-resolved conflict, then replay the rest."""
        state = self._load()
        if state.get("current_message"):
            unmerged = self._git("diff", "--name-only", "--diff-filter=U")
            if unmerged.strip():
                raise ToolError(
                    f"{self.name}: still unmerged: {unmerged.split()}; fix and `git add`."
                )
            markers = self._git(
                "grep", "-l", "-E", "^(<<<<<<<|>>>>>>>) ", "--cached", check=False
            ).split()
            if markers:
                raise ToolError(f"{self.name}: conflict markers left in {', '.join(markers)}.")
            subject = state["current_message"].splitlines()[0]
            self._git("commit", "-q", "--allow-empty", "-m", state["current_message"])
            state["report"][-1] = f"{'resolved':9s} {subject}"
            state["todo"].pop(0)
            state.pop("current_message")
            self._save(state)
        return self._replay(state)

    def abort(self) -> list[str]:
        """--abort: back to the old upstream and commits, as before `start`."""
        state = self._load()
        self._git("cherry-pick", "--abort", check=False)
        self._git("reset", "-q", "--hard", check=False)
        self._git("checkout", "-q", "-f", "main")
        self._git("reset", "-q", "--hard", state["old_head"])
        self._git("clean", "-qfdx", check=False)
        self._git("branch", "-D", BRANCH, check=False)
        rebase_state_path(self.tree).unlink()
        self.project.build_in_place(self.name)  # `git clean -x` removed built extensions
        return [
            f"{self.name}: rebase aborted; the tree is back on {self.project.pin(self.name).ref}"
        ]

    # -- steps ---------------------------------------------------------------------------
    def _commit_new_upstream(self, new_pin: Pin) -> None:
        """Commit the new upstream as a root commit on an orphan branch of the tree's repo."""
        staging = Path(tempfile.mkdtemp(prefix=f".{self.name}-rebase-", dir=self.project.build_dir))
        try:
            new_tree = staging / "src"
            self.project.sources.export_tree(new_pin, new_tree)
            self._git("checkout", "-q", "--orphan", BRANCH)
            self._git("rm", "-rq", "--cached", ".")
            for entry in self.tree.iterdir():
                if entry.name == ".git":
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            for entry in new_tree.iterdir():
                shutil.move(str(entry), self.tree / entry.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._git("add", "-A", "-f", ".")
        self._git("commit", "-q", "--allow-empty", "-m", f"upstream: {new_pin.ref}")

    def _replay(self, state: dict) -> list[str]:
        while state["todo"]:
            commit = state["todo"][0]
            subject = self._git("log", "-1", "--format=%s", commit).strip()
            message = self._git("log", "-1", "--format=%B", commit)
            outcome = self._replay_one(commit)
            if outcome == "conflict":
                self._stop_at_conflict(state, subject, message)
            self._git("commit", "-q", "--allow-empty", "-m", message)
            state["report"].append(f"{outcome:9s} {subject}")
            state["todo"].pop(0)
            state.pop("current_message", None)
            self._save(state)
        return self._finish(state)

    def _replay_one(self, commit: str) -> str:
        """Stage one commit's change: 'clean' (exact apply), 'merged' (3-way) or 'conflict'."""
        diff = self._git("diff-tree", "-p", "--binary", "--full-index", f"{commit}^", commit)
        exact = subprocess.run(
            ["git", "apply", "--index", "--whitespace=nowarn", "-"],
            cwd=self.tree,
            input=diff.encode("utf-8", "surrogateescape"),
            capture_output=True,
            env=git_env(),
        )
        if exact.returncode == 0:
            return "clean"
        picked = run_git(
            ["cherry-pick", "--no-commit", "--strategy=recursive", commit],
            cwd=self.tree,
            check=False,
        )
        return "merged" if picked.returncode == 0 else "conflict"

    def _stop_at_conflict(self, state: dict, subject: str, message: str) -> None:
        """Save the state with the conflicting commit's message and raise the how-to."""
        conflicted = self._git("diff", "--name-only", "--diff-filter=U").split()
        state["report"].append(f"conflict  {subject} ({', '.join(conflicted)})")
        state["current_message"] = message
        self._save(state)
        raise ToolError(
            "\n".join(state["report"]) + f"\n{self.name}: patch '{subject}' conflicts in "
            f"{', '.join(conflicted) or '?'}. Fix the files in {self.tree}, `git add` "
            f"them, then `python apply_patches.py rebase {self.name} --continue` "
            "(or `--abort` to return to the old upstream)."
        )

    def _finish(self, state: dict) -> list[str]:
        """Move main and the upstream tag, write the new pin, refresh patches/."""
        pin = self.project.pin(self.name)
        new = state["pin"]
        self._git("branch", "-f", "main", "HEAD")
        self._git("checkout", "-q", "main")
        self._git("branch", "-D", BRANCH, check=False)
        base = self._git("rev-list", "--max-parents=0", "HEAD").split()[0]
        self._git("tag", "-f", UPSTREAM_TAG, base)
        if new["tree_sha256"] is None:
            with tempfile.TemporaryDirectory() as tmp:
                extract_commit(self.tree, base, Path(tmp))
                new["tree_sha256"] = tree_sha256(Path(tmp))
        keys = ("version", "sha256") if pin.kind == "pypi-sdist" else ("commit",)
        pin.save(**{k: new[k] for k in keys}, tree_sha256=new["tree_sha256"])
        rebase_state_path(self.tree).unlink()
        self.project.refresh(self.name)
        self.project.build_in_place(self.name)  # the new upstream's extensions, if it has any
        return [*state["report"], f"{self.name}: rebased onto {pin.ref}; pin and patches/ updated."]
