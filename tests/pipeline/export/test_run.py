"""A real `run` (one generated slide on a LocalCluster of worker processes) leaves the heatmap as
OME-Zarr, the QuPath GeoJSON and the batch report, consistent with the slide store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from distributed import LocalCluster
from geojson_pydantic import FeatureCollection
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from slidemill.pipeline.graph import run_batch
from slidemill.schemas import RunSpec
from slidemill.schemas.layout import HEATMAP_OME_ZARR, QUPATH_GEOJSON, REPORT_HTML
from tests.helpers import StoreView


def test_run_leaves_the_files_other_tools_open(
    tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> None:
    out = tmp_path / "out"
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        spec = RunSpec(
            slides=(slides_dir / "synth-svs.svs",),
            model=tiny_bundle,
            out=out,
            scheduler=cluster.scheduler_address,
        )
        report = run_batch(spec)
    (result,) = report.results
    assert result.status == "done", result.error
    folder = out / "synth-svs"
    store = StoreView(folder / "slide.zarr")
    heat = store["heatmap"]

    (image,) = list(Reader(parse_url(str(folder / HEATMAP_OME_ZARR)))())[:1]
    # read in this thread: the reader's arrays are dask's, and whichever scheduler this test
    # process last left configured is not what is being tested
    np.testing.assert_array_equal(image.data[0].compute(scheduler="synchronous"), heat)
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    # tiles of 64 px at 2 µm/px, no overlap: one cell is 128 µm
    assert scale == [1.0, 128.0, 128.0]
    assert image.metadata["channel_names"] == ["negative", "positive"]

    doc = json.loads((folder / QUPATH_GEOJSON).read_text())
    FeatureCollection.model_validate(doc)
    detections = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    assert len(detections) == result.n_tiles
    width, height = store.attrs["slide_dimensions"]
    for f in detections:
        xs, ys = zip(*f["geometry"]["coordinates"][0], strict=True)
        assert min(xs) >= 0 and max(xs) <= width and min(ys) >= 0 and max(ys) <= height

    page = (out / REPORT_HTML).read_text()
    assert "synth-svs" in page and "data:image/jpeg;base64," in page
