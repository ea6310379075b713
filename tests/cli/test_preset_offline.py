"""A foundation-model preset end to end with no network: its publisher's weights in a Hugging
Face cache folder, the bundle made without naming an encoder, then `slidemill run` on the sample
slide on the embedded cluster, inside a network namespace that has only loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import sample_path
from tests.workers.models.test_presets import (
    REVISION,
    card_model,
    into_hub_cache,
    publisher_file,
    randomise,
)

SLIDEMILL = [sys.executable, "-m", "slidemill.cli"]


def offline(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`slidemill ARGS` in a new network namespace (loopback only, brought up for Dask):
    nothing beyond this machine can be reached, whatever the code tries."""
    inner = 'ip link set lo up && exec "$@"'
    command = ["unshare", "--map-root-user", "--net", "sh", "-c", inner, "sh", *SLIDEMILL]
    return subprocess.run(
        [*command, *map(str, args)], env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_phikon_from_the_hub_cache_runs_on_the_sample_slide_with_no_network(
    tmp_path: Path,
) -> None:
    sample = sample_path()
    assert sample is not None, "the sample slide (../shared/data) is needed"
    assert shutil.which("unshare") and shutil.which("ip"), "util-linux and iproute2 are needed"
    net, _ = card_model("phikon", None)
    file = publisher_file(randomise(net, seed=3), "phikon", tmp_path / "download")
    into_hub_cache(tmp_path / "hf", "owkin/phikon", file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}

    made = offline("model", "init", "--out", tmp_path / "model", env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "note:" not in made.stdout + made.stderr  # a preset was found: no fallback notice
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["encoder"] == "phikon" and manifest["feature_dim"] == 768
    assert (manifest["tile_px"], manifest["input_mpp"]) == (224, 0.5)  # the preset's tiles
    assert manifest["encoder_weights_source"] == (f"hf:owkin/phikon@{REVISION}/{Path(file).name}")

    ran = offline("run", sample, "--model", tmp_path / "model", "--out", tmp_path / "run",
                  "--workers", "1", "--no-progress", env=env)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "run").glob("*/result.json")]
    assert result["status"] == "done" and result["n_tiles"] > 0
