"""Against real `dask scheduler` and `dask worker` processes on loopback: `--scheduler` uses the
existing cluster, and inference goes only to the workers that declare a GPU resource."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from slidemill.pipeline.graph import keep_jpeg
from slidemill.workers import init_bundle, manifest_sha256, read_manifest
from tests.helpers import StoreView, slidemill


def test_existing_scheduler_runs_the_batch_and_inference_stays_on_gpu_workers(
    external_cluster: str, slides_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    proc = slidemill(
        "run", slides_dir, "--model", tiny_bundle, "--out", tmp_path,
        "--scheduler", external_cluster, "--tiles-per-task", "8", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sid in ("synth-svs", "synth-tiff"):
        result = json.loads((tmp_path / sid / "result.json").read_text())
        assert result["status"] == "done" and result["n_tiles"] > 0
    sha = manifest_sha256(read_manifest(tiny_bundle))

    def has_model() -> bool:
        from slidemill.workers.inference import loaded_models

        return sha in loaded_models()

    with Client(external_cluster) as client:
        loaded = client.run(has_model)
        names = {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}
    # the model is loaded on the GPU worker only: no encode or MIL task ran on the CPU worker
    assert loaded[names["gpu-0"]] is True
    assert loaded[names["cpu-0"]] is False


def test_with_gpu_workers_the_jpeg_is_kept_for_the_encoder_unless_asked(
    external_cluster: str, slides_dir: Path, tmp_path: Path
) -> None:
    """256-px tiles at 0.5 µm/px line up with the generated SVS's stored JPEG tiles: kept by
    default with GPU workers too (the encoder's worker decodes them; this one's "GPU" has no
    CUDA, so on its host, as the provenance says), decoded at tiling time when asked."""
    bundle = tmp_path / "m256"
    init_bundle(bundle, encoder="tiny_cnn", tile_px=256, mpp=0.5)
    slide = slides_dir / "synth-svs.svs"
    stores = {}
    for name, flag in (("auto", []), ("decoded", ["--decode-tiles"])):
        out = tmp_path / name
        proc = slidemill(
            "run", slide, "--model", bundle, "--out", out, "--scheduler", external_cluster,
            "--keep-tiles", "--no-progress", *flag,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        stores[name] = StoreView(out / "synth-svs" / "slide.zarr")
        result = json.loads((out / "synth-svs" / "result.json").read_text())
        assert result["provenance"]["decode"] == "cpu"
    assert "tile_jpeg" in stores["auto"] and "tiles" not in stores["auto"]
    assert "tiles" in stores["decoded"] and "tile_jpeg" not in stores["decoded"]
    # the same pixels either way, so the same features
    np.testing.assert_allclose(
        stores["auto"]["features"][...], stores["decoded"]["features"][...], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("requested", "gpus", "kept"),
    [(None, False, True), (None, True, True), (True, True, True), (False, True, False)],
)
def test_jpeg_is_kept_by_default_on_gpu_workers_too(
    requested: bool | None, gpus: bool, kept: bool
) -> None:
    assert keep_jpeg(requested, gpus) is kept
