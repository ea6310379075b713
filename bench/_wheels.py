"""The wheelhouse `make bench-gpu` carries to a GPU machine whose image has torch but not the
rest: slidemill itself and every package it needs that the image lacks, at the versions
installed here, for the image's Python (binary wheels from the index, else built here)."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement

# What an image with PyTorch has by definition: torch, torchvision and what they need.
IMAGE_ROOTS = ("torch", "torchvision")
# Carried whatever is installed here (newest release): the GPU cluster and the GPU's utilisation.
GPU_EXTRAS = ("dask-cuda", "nvidia-ml-py")
# manylinux tags pip matches exactly, newest first
PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in (34, 28, 27, 24, 17)),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: Iterable[str]) -> dict[str, str]:
    """The installed distributions `roots` need, transitively (no extras): name → version."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist.version
        for spec in dist.requires or ():
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def missing(image_has: Iterable[str] = ()) -> dict[str, str]:
    """What slidemill (with dask-cuda, when installed here) needs beyond an image with torch and
    the packages `image_has` (names, e.g. from its `pip freeze`)."""
    have = set(closure(IMAGE_ROOTS)) | {canonical(n) for n in image_has}
    need = closure(["slidemill", *GPU_EXTRAS])
    need |= {canonical(n): "" for n in GPU_EXTRAS if canonical(n) not in need}  # newest
    return {n: v for n, v in sorted(need.items()) if n not in have and n != "slidemill"}


def read_names(freeze: Path) -> list[str]:
    """Package names in a `pip freeze` / `pip list --format=freeze` file."""
    names = []
    for line in freeze.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if m and not line.lstrip().startswith("#"):
            names.append(m.group(1))
    return names


def build_wheelhouse(dest: Path, python: str, image_has: Iterable[str] = ()) -> list[Path]:
    """Download (or build) into `dest` the wheels `missing` names for CPython `python` (e.g.
    "3.12") on x86-64 Linux, and slidemill's own; returns the wheels there."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = _source_tree()
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), str(source)], check=True)
    binary = [*pip, "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
              "--python-version", python, "--implementation", "cp"]  # fmt: skip
    for tag in PLATFORMS:
        binary += ["--platform", tag]
    for name, version in missing(image_has).items():
        pin = f"{name}=={version}" if version else name
        got = subprocess.run([*binary, pin], capture_output=True, text=True)
        if got.returncode != 0:  # no binary for that Python: a pure package's sdist, built here
            subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), pin], check=True)
    return sorted(dest.glob("*.whl"))


def _source_tree() -> Path:
    """slidemill's source folder (the editable install's project root)."""
    import slidemill.schemas

    return Path(slidemill.schemas.__file__).resolve().parents[1]
