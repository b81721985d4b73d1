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

    @property
    def envs(self) -> tuple[str, ...]:
        """The environments that import the tree: `env = "a"` or `env = ["a", "b"]` in the pin."""
        if self.env is None:
            return ()
        return (self.env,) if isinstance(self.env, str) else tuple(self.env)

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
