"""The house itself: one namespace, rooms that import only downwards through public names, no
import cycles, and a wheel that installs nothing but `slidemill/`."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO

ROOMS = ("schemas", "cluster", "workers", "pipeline", "viewer", "service", "bench", "cli")


def _modules() -> Iterator[tuple[str, Path]]:
    """(dotted name as installed, file) of every module of the rooms and the tests."""
    for room in (*ROOMS, "tests"):
        for path in sorted((REPO / room).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            prefix = () if room == "tests" else ("slidemill",)
            yield ".".join((*prefix, *parts)), path


def _imports(path: Path, module: str, top_level_only: bool) -> Iterator[tuple[str, int]]:
    """(imported module, line) of `path`; relative imports resolved against `module`."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from pkg import _module` reaches a private module too
                yield f"{base}.{alias.name}", node.lineno


def _private_package(name: str) -> str | None:
    """The package whose private module `name` is (slidemill.pipeline.graph for
    slidemill.pipeline.graph._tasks), or None for a public name."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_no_module_imports_another_packages_private_module() -> None:
    offences = []
    for module, path in _modules():
        for name, line in _imports(path, module, top_level_only=False):
            owner = _private_package(name)
            if owner is None or not owner.startswith("slidemill"):
                continue
            if not (module == owner or module.startswith(owner + ".")):
                offences.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert offences == []


def test_nothing_imports_the_bare_folder_names() -> None:
    offences = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for module, path in _modules()
        for name, line in _imports(path, module, top_level_only=False)
        if name.split(".")[0] in ROOMS
    ]
    assert offences == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_tarjan_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules() -> None:
    """Module-level imports only: an import inside a function runs later and breaks no cycle
    at import time, and `if TYPE_CHECKING:` blocks are not module-level statements here."""
    modules = {m: p for m, p in _modules() if m.startswith("slidemill")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, _ in _imports(path, module, top_level_only=True):
            # `from pkg import name` names a module only when pkg.name is one
            target = name if name in modules else name.rpartition(".")[0]
            if target in modules and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    assert _cycles(graph) == []


def _package_dirs() -> set[str]:
    return {
        "slidemill." + ".".join(p.parent.relative_to(REPO).parts)
        for room in ROOMS
        for p in (REPO / room).rglob("__init__.py")
    }


def _folder(package: str) -> Path:
    """The folder of `slidemill.<room>.<sub>…`."""
    _, room, *rest = package.split(".")
    return REPO.joinpath(room, *rest)


def test_every_package_is_in_the_wheel_list() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    # folders of data alone (pages, templates) are listed as packages too, or setuptools warns
    # at every install that they look like packages left out
    data = {name for name in config["package-data"] if not (_folder(name) / "__init__.py").exists()}
    assert all(_folder(name).is_dir() for name in data), data
    assert set(config["packages"]) == _package_dirs() | data
    assert config["package-dir"] == {f"slidemill.{room}": room for room in ROOMS}


def test_the_link_tree_maps_each_installed_name_to_its_room() -> None:
    """`slidemill/` is what static tools read: one relative link per room, nothing else, so a
    type checker or editor resolves `slidemill.pipeline` to `pipeline/` with no install."""
    links = {p.name: p for p in (REPO / "slidemill").iterdir()}
    assert set(links) == set(ROOMS)
    for room, link in links.items():
        assert link.is_symlink() and str(link.readlink()) == f"../{room}", link
        assert link.resolve() == (REPO / room).resolve()


WHEEL_VERSION = "1.2.3.dev4"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # from a copy of what the wheel is built from: setuptools leaves build/ and egg-info behind
    source = tmp_path_factory.mktemp("source")
    for room in ROOMS:
        shutil.copytree(REPO / room, source / room, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    # a copy has no git metadata to take the version from: it must be named
    env = {**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_SLIDEMILL": WHEEL_VERSION}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, timeout=300, env=env,
    )  # fmt: skip
    (path,) = out.glob("slidemill-*.whl")
    return path


def test_the_wheel_installs_only_the_slidemill_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"slidemill"}
    assert "slidemill/cluster/slurm.yaml" in names
    assert "slidemill/service/ledger/migrations/env.py" in names
    assert "slidemill/service/ledger/migrations/versions/0001_batches_and_slides.py" in names
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)


def test_the_wheel_carries_openseadragon_its_licence_and_its_version(wheel: Path) -> None:
    """The build step's `npm ci` (setup.py): the pinned OpenSeadragon is package data, where
    slidemill.viewer looks first, so `slidemill view` needs no checkout."""
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    osd = "slidemill/viewer/openseadragon/"
    assert {f"{osd}openseadragon.min.js", f"{osd}LICENSE.txt"} <= names
    assert any(n.startswith(f"{osd}images/") and n.endswith(".png") for n in names)
    lock = json.loads((REPO / "viewer/package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/openseadragon"]["version"]
    assert f"openseadragon {pinned}\n" in archive.read(f"{osd}openseadragon.min.js").decode()
    (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
    headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert f"Version: {WHEEL_VERSION}" in headers
    extras = {h.split(": ", 1)[1] for h in headers if h.startswith("Provides-Extra: ")}
    assert {"service", "viewer", "cluster", "encoders", "dev"} <= extras


def test_installed_wheel_imports_as_slidemill_and_not_as_bare_folders(
    wheel: Path, tmp_path: Path
) -> None:
    """A fresh virtual environment that sees this one's dependencies but not its editable
    install: run from outside the checkout, only `slidemill.*` imports."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    zipfile.ZipFile(wheel).extractall(site)
    # the dependencies, as a plain path entry: .pth files there (the editable hook) stay unread
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run(
        [python, "-c", "import slidemill.pipeline, slidemill.workers, slidemill.schemas, "
         "slidemill.cluster, slidemill.cli; print(slidemill.pipeline.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert Path(ok.stdout.strip()).is_relative_to(site)
    for bare in ROOMS:
        gone = subprocess.run(
            [python, "-c", f"import {bare}"], cwd=tmp_path, env=env, capture_output=True
        )
        assert gone.returncode != 0, f"`import {bare}` works outside the checkout"


def test_the_readmes_map_names_every_room_and_subpackage() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    tops = {line.split()[0] for line in block.splitlines() if line and not line[0].isspace()}
    subs = {line.split()[0] for line in block.splitlines() if line.startswith("  ")}
    subs |= {word for line in block.splitlines() for word in line.split() if word.endswith("/")}
    for room in ROOMS:
        assert f"{room}/" in tops
        for init in sorted((REPO / room).glob("*/__init__.py")):
            assert f"{init.parent.name}/" in subs, f"{room}/{init.parent.name}/ is not on the map"
