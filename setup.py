"""The wheel's build step, beside the product and never imported by it: `build_py` also fetches
the viewer's OpenSeadragon with `npm ci` (the version viewer/package-lock.json pins, from the npm
registry or npm's cache) and puts its build folder and licence into the wheel as
`slidemill/viewer/openseadragon/`, so `pip install slidemill[viewer]` serves it with no checkout.
Nothing of it is committed. Everything else about the package is in pyproject.toml.

An editable install (`make install`) skips it: the checkout's viewer/node_modules serves."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
NPM_FILES = ("package.json", "package-lock.json")
OSD_BUILD = Path("node_modules/openseadragon/build/openseadragon")
OSD_LICENSE = Path("node_modules/openseadragon/LICENSE.txt")
PACKAGED = Path("slidemill/viewer/openseadragon")
"""Where the wheel holds it; slidemill.viewer.openseadragon_dir() looks there first."""


def fetch_openseadragon(target: Path) -> None:
    """`npm ci` in a scratch folder from viewer/'s manifest and lock, then OpenSeadragon's
    build folder and licence into `target`."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(
            "building slidemill's wheel needs npm: it fetches the viewer's OpenSeadragon from the "
            "npm registry (Debian: apt-get install npm)"
        )
    with tempfile.TemporaryDirectory(prefix="slidemill-npm-") as scratch:
        for name in NPM_FILES:
            shutil.copy2(HERE / "viewer" / name, Path(scratch) / name)
        subprocess.run(
            [npm, "ci", "--prefix", scratch, "--ignore-scripts", "--no-audit", "--no-fund",
             "--loglevel=error"],
            check=True,
        )  # fmt: skip
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(scratch) / OSD_BUILD, target, ignore=shutil.ignore_patterns("*.map"))
        shutil.copy2(Path(scratch) / OSD_LICENSE, target / "LICENSE.txt")


class BuildPyWithOpenSeadragon(build_py):
    """setuptools' build_py, then OpenSeadragon into the build tree (not for editable installs)."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            fetch_openseadragon(Path(self.build_lib) / PACKAGED)


setup(cmdclass={"build_py": BuildPyWithOpenSeadragon})
