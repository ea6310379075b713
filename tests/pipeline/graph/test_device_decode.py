"""A whole run with kept JPEG decoded where the encoder runs (torchvision's `decode_jpeg`, the
nvJPEG path, here on the CPU device) against the host decode (imagecodecs): the same slide
scores, and each result says where its tiles were decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torchvision.io
from distributed import LocalCluster

from slidemill.pipeline.graph import run_batch
from slidemill.schemas import RunSpec
from slidemill.workers import init_bundle
from tests.helpers import StoreView


def test_device_decode_gives_the_host_decodes_scores(
    sample_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "m"
    # the sample slide's own resolution: tiles cut without resizing, so its JPEG is kept (a
    # mosaic of its 240-px stored tiles under the 256-px grid)
    init_bundle(bundle, encoder="tiny_cnn", tile_px=256, mpp=0.499, seed=0)
    calls: list[int] = []
    decode_jpeg = torchvision.io.decode_jpeg

    def counted(data: list[object], **kw: object) -> object:
        calls.append(len(data))
        return decode_jpeg(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", counted)
    results = {}
    # a worker thread in this process, so the count above sees the device path's calls
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster:
        for decode in ("cpu", "device"):
            spec = RunSpec(
                slides=(sample_slide,),
                model=bundle,
                out=tmp_path / decode,
                scheduler=cluster.scheduler_address,
                jpeg_decode=decode,
                keep_tiles=True,
            )
            (result,) = run_batch(spec).results
            assert result.status == "done", result.error
            assert result.provenance.decode == "cpu"  # torchvision on the CPU is the host
            store = StoreView(tmp_path / decode / result.slide_id / "slide.zarr")
            assert "tile_jpeg" in store
            results[decode] = (result, store["scores"][...], store["features"][...])
            # the host decode never calls torchvision; the device path decodes every block
            assert (sum(calls) > 0) is (decode == "device")
    (a, scores_a, feats_a), (b, scores_b, feats_b) = results["cpu"], results["device"]
    assert a.n_tiles == b.n_tiles > 0
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-3)
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-3)
    np.testing.assert_allclose(feats_a, feats_b, rtol=1e-4, atol=1e-5)
