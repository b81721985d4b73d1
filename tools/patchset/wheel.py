"""Artefacts of a patched tree: a wheel with a local version label, and the .pth line that
lets an environment import the tree in place.

The label ``<upstream version>+flatrl.<series id>`` is derived from the patch files alone, so
the same series always gives the same version and any edit to a patch gives a new one.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from .build import check_requires
from .common import ToolError, extract_commit, is_git_repo
from .patchfiles import series_id
from .pins import Pin
from .tree import Project, dirty_files


def local_version(project: Project, pin: Pin) -> str:
    """The wheel version of the patched upstream: its release plus a label of the series."""
    if pin.kind != "pypi-sdist" or not pin.version:
        raise ToolError(
            f"{pin.name}: only a released (pypi-sdist) upstream has a version to label; "
            f"{pin.path} pins a {pin.kind} source."
        )
    return f"{pin.version}+flatrl.{series_id(project.patch_dir(pin.name))}"


def build_wheel(project: Project, name: str, dist: Path, python: str) -> Path:
    """Build the committed patched tree (a clean copy, never the tree itself) into dist/."""
    pin = project.pin(name)
    version = local_version(project, pin)
    if not pin.version_file:
        raise ToolError(
            f"{name}: {pin.path} has no version_file (the file holding "
            f'"{pin.version}"); add e.g. version_file = "{name}/_version.py".'
        )
    tree = project.tree(name)
    if not is_git_repo(tree):
        raise ToolError(f"{name}: no patched tree at {tree}; run `apply {name}` first.")
    if pin.build_env:  # the pin names the environment that holds its build requirements
        python = str(pin.python(project.venv_root))
        check_requires(pin, Path(python))
    dist = dist / pin.wheel_subdir if pin.wheel_subdir else dist
    if dirty_files(tree) or project.unexported_commits(name):
        raise ToolError(
            f"{name}: {tree} differs from patches/ (edits or unexported commits), so the "
            f"version {version} would not describe it; `refresh {name}` or `apply {name} --force`."
        )
    with tempfile.TemporaryDirectory(prefix=f"flatrl-wheel-{name}-") as tmp:
        copy = Path(tmp) / name
        extract_commit(tree, "HEAD", copy)
        set_version(copy / pin.version_file, pin.version or "", version)
        dist.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
            + ["--disable-pip-version-check", "-w", str(dist), str(copy)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ToolError(f"{name}: pip wheel failed:\n{proc.stderr.strip()}")
    wheels = sorted(dist.glob(f"*-{version}-*.whl"))
    if not wheels:
        raise ToolError(f"{name}: pip wheel made no wheel with version {version} in {dist}.")
    return wheels[0]


def set_version(path: Path, old: str, new: str) -> None:
    """Replace the one quoted occurrence of the release version in the copy's version file."""
    text = path.read_text() if path.is_file() else ""
    quoted = [q for q in ('"', "'") if f"{q}{old}{q}" in text]
    if len(quoted) != 1 or text.count(f"{quoted[0]}{old}{quoted[0]}") != 1:
        raise ToolError(
            f"{path.name}: expected exactly one quoted {old!r} to replace with {new!r}; "
            "fix version_file in the pin."
        )
    path.write_text(text.replace(f"{quoted[0]}{old}{quoted[0]}", f"{quoted[0]}{new}{quoted[0]}"))


def install_pth(project: Project, pin: Pin, venv_root: Path) -> list[Path]:
    """Write <venv>/<site-packages>/flatrl-<name>.pth naming the tree's import_path, in each
    environment the pin names.

    A .pth line rather than `pip install -e`: the latter rewrites the tree's egg-info and
    leaves it with edits that the next `apply` refuses to overwrite.
    """
    if not pin.envs or not project.tree(pin.name).is_dir():
        return []
    for other in project.series_of(pin):
        shared = set(pin.envs) & set(project.pin(other).envs) if other != pin.name else set()
        if shared:
            raise ToolError(
                f"{pin.name} and {other} are two series of {pin.upstream}, and both name env "
                f"{sorted(shared)}: one environment can import only one of them. Give each "
                "series its own environment (env = ... in vendor/<name>.toml)."
            )
    written = []
    for env in pin.envs:
        python = venv_root / env / "bin" / "python"
        if not python.exists():
            raise ToolError(
                f"{pin.name}: {pin.path} names env {env!r}, but {python} does not exist; "
                "run `make setup` (environments are made from requirements/<env>.txt)."
            )
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        target = (project.tree(pin.name) / pin.import_path).resolve()
        pth = Path(site) / f"flatrl-{pin.name}.pth"
        pth.write_text(f"{target}\n")
        written.append(pth)
    return written
