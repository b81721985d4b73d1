"""Pins: one upstream per vendor/<name>.toml (where its source comes from, how to verify it)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from .common import ToolError

# Keys that say how a built tree is used, not what it is built from: editing them must not make
# trees stale, so they are left out of the bytes a tree's stamp hashes.
USAGE_KEYS = ("env", "import_path", "version_file")


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
    # the environment(s) (.venv/<env>) that import the tree via a .pth: "a" or ["a", "b"]
    env: str | list[str] | None = None
    import_path: str = "."  # the directory of the tree that goes on that environment's sys.path
    version_file: str | None = None  # file holding the version string, for `wheel`
    # How the tree is built, for upstreams with compiled extensions (all optional):
    build_env: str | None = None  # the environment (.venv/<env>) whose python builds it
    build_isolation: bool = True  # false: pip runs setup.py in build_env (download, wheel)
    build_requires: list[str] = dataclasses.field(default_factory=list)  # checked in build_env
    build_ext: list[str] = dataclasses.field(default_factory=list)  # run on a copy by `apply`
    build_outputs: list[str] = dataclasses.field(default_factory=list)  # globs copied back
    wheel_subdir: str | None = None  # `wheel` puts this pin's wheel in <dist>/<wheel_subdir>

    @property
    def envs(self) -> tuple[str, ...]:
        """The environments that import the tree: `env = "a"` or `env = ["a", "b"]` in the pin."""
        if self.env is None:
            return ()
        return (self.env,) if isinstance(self.env, str) else tuple(self.env)

    @property
    def upstream(self) -> str:
        """The upstream project this pin is a series of: several pins (maintenance lines,
        e.g. d3rlpy 2.8.1 and 1.1.1) may share one, each with its own name, patches and tree."""
        return self.package or self.name

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

    def stamp_bytes(self) -> bytes:
        """The pin file as a tree's stamp sees it: every line but the usage keys' lines."""
        usage = re.compile(rf"^\s*({'|'.join(USAGE_KEYS)})\s*=")
        lines = self.path.read_bytes().splitlines(keepends=True)
        return b"".join(line for line in lines if not usage.match(line.decode(errors="replace")))

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
        name = data.get("name", path.stem)
        if name != path.stem:
            raise ToolError(
                f"{path}: name = {name!r} differs from the file name {path.stem!r}; a pin's "
                "name names its patches/ and build/ folders, so it must be the file's stem. "
                "Another series of the same upstream gets its own file and name, and shares "
                'package = "<PyPI project>".'
            )
        _check_build_keys(path, data)
        fields = {f.name for f in dataclasses.fields(cls)} - {"path", "name", "kind"}
        return cls(
            name=name,
            kind=kind,
            path=path,
            **{k: v for k, v in data.items() if k in fields},
        )

    def python(self, venv_root: Path) -> Path:
        """The interpreter of build_env, which builds this pin's tree and wheel."""
        if not self.build_env:
            raise ToolError(f"{self.path}: no build_env names the environment that builds it.")
        python = venv_root / self.build_env / "bin" / "python"
        if not python.exists():
            raise ToolError(
                f"{self.name}: {self.path} builds in build_env {self.build_env!r}, but {python} "
                "does not exist; run `make setup` (it makes .venv/<env> from "
                "requirements/<env>.txt) first."
            )
        return python

    def save(self, **updates: str) -> None:
        """Rewrite the given keys in place, keeping the file's comments and order."""
        text = self.path.read_text()
        for key, value in updates.items():
            setattr(self, key, value)
            line = f'{key} = "{value}"'
            pattern = re.compile(rf"^{key}\s*=.*$", re.MULTILINE)
            text = pattern.sub(line, text) if pattern.search(text) else text + line + "\n"
        self.path.write_text(text)


def _check_build_keys(path: Path, data: dict[str, object]) -> None:
    """The build keys' types, and the combinations that need build_env."""
    lists = ("build_requires", "build_ext", "build_outputs")
    for key in lists:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ToolError(f'{path}: {key} must be a list of strings, e.g. {key} = ["..."].')
    if not isinstance(data.get("build_isolation", True), bool):
        raise ToolError(f"{path}: build_isolation must be true or false.")
    needs_env = [k for k in lists if data.get(k)]
    if data.get("build_isolation") is False:
        needs_env.append("build_isolation = false")
    if needs_env and not data.get("build_env"):
        raise ToolError(
            f'{path}: {", ".join(needs_env)} need build_env = "<env>", the environment '
            "(requirements/<env>.txt) whose python holds the build requirements."
        )
    if data.get("build_ext") and not data.get("build_outputs"):
        raise ToolError(
            f"{path}: build_ext builds extensions but build_outputs does not say which files "
            'to keep; add e.g. build_outputs = ["pkg/*.so"].'
        )
