"""The viewer as users meet it: `slidemill view` serving a real run over real HTTP, and a real
browser (Playwright driving Debian's chromium) on its pages."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openslide
import pytest
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from slidemill.bench import Latencies, pan_benchmark
from slidemill.schemas.layout import SLIDE_STORE, StoreArray
from slidemill.viewer import COLORMAPS, Pyramid, colormap_lut
from tests.helpers import REPO, StoreView, slidemill
from tests.pipeline.export.test_explanation import NAMES, explain_store
from tests.viewer.conftest import HIGH, LOW, ViewedRun, Viewer, start_viewer

ARTEFACTS = REPO / "build" / "test-artifacts" / "viewer"
"""Screenshots the browser tests keep (build/ is ignored by git)."""
RUN = "night-1"


def api(viewer: Viewer, *parts: str) -> str:
    return "/".join([viewer.url, "api", "runs", RUN, "slides", *parts])


# --- routes ------------------------------------------------------------------------------------


def test_the_run_table_lists_every_slide_of_the_run_with_its_results(
    viewer: Viewer, viewed_run: ViewedRun
) -> None:
    body = httpx.get(f"{viewer.url}/api/runs/{RUN}").json()
    with (viewed_run.out / "results.csv").open() as f:
        table = {row["slide_id"]: row for row in csv.DictReader(f)}
    assert {s["slide_id"] for s in body["slides"]} == set(table) == {"synth-svs", "synth-tiff"}
    for s in body["slides"]:
        row = table[s["slide_id"]]
        assert s["status"] == row["status"] == "done"
        assert s["label"] == row["label"] and s["n_tiles"] == int(row["n_tiles"])
        assert s["probabilities"]["positive"] == pytest.approx(float(row["prob_positive"]))
        assert s["viewable"]
    thumb = httpx.get(api(viewer, "synth-svs", "preview.jpg"))
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 192


def test_the_slide_pyramid_is_the_level_0_image_read_tile_by_tile(
    viewer: Viewer, viewed_run: ViewedRun, slides_dir: Path
) -> None:
    dzi = httpx.get(api(viewer, "synth-svs", "slide.dzi"))
    assert dzi.status_code == 200
    with openslide.OpenSlide(str(slides_dir / "synth-svs.svs")) as slide:
        width, height = slide.dimensions
        assert f'Width="{width}" Height="{height}"' in dzi.text
        pyramid = Pyramid(width, height, 254)
        top = pyramid.max_level
        tile = httpx.get(api(viewer, "synth-svs", "slide_files", str(top), "1_1.jpeg"))
        image = np.asarray(Image.open(io.BytesIO(tile.content)).convert("RGB"), np.float32)
        assert image.shape == (256, 256, 3)  # 254 + an overlap pixel on each side
        truth = np.asarray(slide.read_region((253, 253), 0, (256, 256)).convert("RGB"), np.float32)
        assert np.abs(image - truth).mean() < 4  # the same pixels, through one JPEG encode
    info = httpx.get(api(viewer, "synth-svs")).json()
    assert (info["width"], info["height"]) == (width, height)
    assert info["heatmap"]["max_level"] == top  # both layers share one pyramid
    for bad in (f"{top + 1}/0_0", f"{top}/999_0", "0/1_0"):
        assert httpx.get(api(viewer, "synth-svs", "slide_files", f"{bad}.jpeg")).status_code == 404


@pytest.mark.parametrize("levels_down", [0, 2, 4])
def test_heatmap_tiles_draw_each_tile_score_on_its_tile_at_three_zooms(
    viewer: Viewer, viewed_run: ViewedRun, levels_down: int
) -> None:
    info = httpx.get(api(viewer, "synth-svs")).json()
    pyramid = Pyramid(info["width"], info["height"], info["heatmap"]["tile_size"])
    level = pyramid.max_level - levels_down
    d = pyramid.downsample(level)
    lut = colormap_lut("viridis")
    tiles: dict[tuple[int, int], np.ndarray] = {}
    grid, values = viewed_run.grid, viewed_run.values
    rows, cols = grid.shape
    for r in range(rows):
        for c in range(cols):
            x, y, w, h = grid.cell_box(r, c)
            px, py = int((x + w / 2) / d), int((y + h / 2) / d)
            key = (px // 256, py // 256)
            if key not in tiles:
                url = api(
                    viewer, "synth-svs", "heatmap", "positive", str(level), f"{key[0]}_{key[1]}.png"
                )
                got = httpx.get(url, params={"cmap": "viridis"})
                assert got.status_code == 200 and got.headers["content-type"] == "image/png"
                tiles[key] = np.asarray(Image.open(io.BytesIO(got.content)).convert("RGBA"))
            pixel = tiles[key][py % 256, px % 256]
            if np.isnan(values[r, c]):
                assert pixel[3] == 0, f"cell {r},{c} is off tissue but drawn"
            else:
                expected = lut[int(values[r, c] * 255 + 0.5)]
                assert tuple(pixel) == (*expected, 255), f"cell {r},{c} at level {level}"


def test_tile_scores_answer_for_the_point_under_the_pointer(
    viewer: Viewer, viewed_run: ViewedRun
) -> None:
    top = httpx.get(api(viewer, "synth-svs", "top-tiles"), params={"k": 3}).json()
    first = top["attention"][0]
    assert first["index"] == viewed_run.top_tile and first["attention"] == pytest.approx(0.5)
    best = [t["scores"]["positive"] for t in top["classes"]["positive"]]
    assert best == pytest.approx([HIGH] * 3)
    centre = {"x": first["x"] + first["size"] / 2, "y": first["y"] + first["size"] / 2}
    hit = httpx.get(api(viewer, "synth-svs", "tile-at"), params=centre).json()["tile"]
    assert hit["index"] == viewed_run.top_tile and hit["scores"]["positive"] == pytest.approx(LOW)
    corner = httpx.get(api(viewer, "synth-svs", "tile-at"), params={"x": 5, "y": 5}).json()
    assert corner["tile"] is None  # the slide's corner is background
    image = httpx.get(api(viewer, "synth-svs", "tiles", f"{first['index']}.jpg"))
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)  # the model's tile size


def test_no_route_serves_associated_images_or_anything_outside_the_runs(
    viewer: Viewer, viewed_run: ViewedRun, slides_dir: Path
) -> None:
    with openslide.OpenSlide(str(slides_dir / "synth-svs.svs")) as slide:
        names = set(slide.associated_images)
    assert "label" in names  # the generated SVS carries one: it must never come out
    names |= {"label", "macro", "thumbnail", "overview"}
    for name in sorted(names):
        for url in (
            api(viewer, "synth-svs", name),
            api(viewer, "synth-svs", f"{name}.jpg"),
            api(viewer, "synth-svs", "associated", name),
            api(viewer, "synth-svs", "associated", f"{name}.jpeg"),
            api(viewer, "synth-svs", "slide_files", name, "0_0.jpeg"),
            api(viewer, "synth-svs", "heatmap", name, "0", "0_0.png"),
            f"{viewer.url}/runs/{RUN}/slides/synth-svs/{name}",
        ):
            assert httpx.get(url).status_code == 404, url
    for url in (
        f"{viewer.url}/api/runs/nope",
        api(viewer, "no-such-slide"),
        api(viewer, "..", "..", "etc"),
        api(viewer, "%2e%2e", "slide.dzi"),
        api(viewer, "synth-svs%2F..%2F..", "slide.dzi"),
        f"{viewer.url}/api/runs/..%2F{RUN}/slides/synth-svs",
        api(viewer, "synth-svs", "tiles", "99999.jpg"),
    ):
        assert httpx.get(url).status_code == 404, url
    # a colormap is a name from a list, never anything else
    bad = httpx.get(
        api(viewer, "synth-svs", "heatmap", "positive", "0", "0_0.png"), params={"cmap": "../x"}
    )
    assert bad.status_code == 422 and "unknown colormap" in bad.json()["detail"]
    for cmap in COLORMAPS:  # every name the page offers is served
        tile = httpx.get(
            api(viewer, "synth-svs", "heatmap", "positive", "0", "0_0.png"), params={"cmap": cmap}
        )
        assert tile.status_code == 200 and tile.headers["content-type"] == "image/png", cmap


def test_a_damaged_slide_fails_alone(viewed_run: ViewedRun, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(viewed_run.out, run)
    (run / "synth-tiff" / "result.json").write_text("{ not json")
    viewer = start_viewer([run], tmp_path / "viewer.log")
    try:
        broken = httpx.get(f"{viewer.url}/api/runs/copy/slides/synth-tiff")
        assert broken.status_code == 500 and "synth-tiff" in broken.json()["detail"]
        assert httpx.get(f"{viewer.url}/api/runs/copy/slides/synth-svs").status_code == 200
        assert httpx.get(f"{viewer.url}/api/runs/copy").status_code == 200
    finally:
        viewer.stop()


def test_off_loopback_needs_a_token_and_the_token_is_checked(
    viewed_run: ViewedRun, tmp_path: Path
) -> None:
    refused = slidemill("view", viewed_run.out, "--host", "0.0.0.0")
    assert refused.returncode == 2 and "needs a token" in refused.stderr
    not_a_run = slidemill("view", tmp_path)
    assert not_a_run.returncode == 2 and "not a run" in not_a_run.stderr
    token = "viewer-token-0123456789"
    viewer = start_viewer([viewed_run.out], tmp_path / "v.log", env={"SLIDEMILL_TOKEN": token})
    try:
        assert httpx.get(f"{viewer.url}/api/runs").status_code == 401
        assert httpx.get(f"{viewer.url}/?token=wrong").status_code == 401
        ok = httpx.get(f"{viewer.url}/api/runs", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        with httpx.Client(base_url=viewer.url) as browser:
            first = browser.get(f"/?token={token}")
            assert first.status_code == 303 and "token" not in first.headers["location"]
            assert browser.get(f"/api/runs/{RUN}").status_code == 200  # by the cookie
    finally:
        viewer.stop()


def test_the_pan_benchmark_asks_each_tile_twice_and_watches_the_viewer_memory(
    viewed_run: ViewedRun, tmp_path: Path
) -> None:
    reports = pan_benchmark([viewed_run.out], tmp_path, views=2)
    assert {r.slide_id for r in reports} == {"synth-svs", "synth-tiff"}
    for r in reports:
        assert r.views == 2
        for times in (r.slide_tiles, r.heatmap_tiles):
            assert len(times.uncached) == len(times.cached) > 0
            assert all(t > 0 for t in times.uncached + times.cached)
            assert Latencies.p(times.uncached, 0.5) <= Latencies.p(times.uncached, 0.95)
        assert 0 < r.rss_start_mib <= r.rss_peak_mib


# --- in a real browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(viewer: Viewer) -> Iterator[Page]:
    chromium = shutil.which("chromium")
    assert chromium, (
        "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    )
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        yield tab
        browser.close()
        assert errors == []


def _shot(page: Page, name: str) -> np.ndarray:
    """A screenshot of the viewer's canvas area, kept as an artefact, as RGB pixels."""
    png = page.screenshot(path=str(ARTEFACTS / f"{name}.png"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int16)


SETTLE_MS = 240_000
"""How long a page may take to draw every tile: generous, since a machine busy with other jobs
(CI beside a benchmark) starves the browser, the viewer and the slide reads at once; the tests
check what is drawn, never how fast."""


def _settle(page: Page) -> None:
    page.wait_for_function("window.slidemill && window.slidemill.ready()", timeout=SETTLE_MS)


@pytest.mark.timeout(3 * SETTLE_MS // 1000)
def test_in_a_browser_the_run_page_sorts_filters_and_opens_a_slide(
    page: Page, viewer: Viewer
) -> None:
    p = page
    p.goto(f"{viewer.url}/runs/{RUN}/")
    p.wait_for_selector("tr.slide")
    _shot(p, "run-page")
    ids = lambda: p.eval_on_selector_all("tr.slide", "rows => rows.map(r => r.dataset.slide)")  # noqa: E731
    assert ids() == ["synth-svs", "synth-tiff"]
    p.click("th[data-key='slide_id']")
    assert ids() == ["synth-tiff", "synth-svs"]
    p.fill("#filter", "tiff")
    assert ids() == ["synth-tiff"]
    p.fill("#filter", "")
    p.click("tr[data-slide='synth-svs']")
    p.wait_for_url(f"**/runs/{RUN}/slides/synth-svs/")
    _settle(p)


@pytest.mark.timeout(3 * SETTLE_MS // 1000)
def test_in_a_browser_the_heatmap_lies_on_the_tissue_and_the_sliders_change_it(
    page: Page, viewer: Viewer, viewed_run: ViewedRun
) -> None:
    p = page
    p.goto(f"{viewer.url}/runs/{RUN}/slides/synth-svs/")
    _settle(p)
    p.fill("#opacity", "0")
    _settle(p)
    bare = _shot(p, "slide-heatmap-hidden")
    p.fill("#opacity", "1")
    _settle(p)
    full = _shot(p, "slide-heatmap-opaque")
    p.fill("#opacity", "0.4")
    _settle(p)
    faded = _shot(p, "slide-heatmap-faded")

    grid, values = viewed_run.grid, viewed_run.values
    rows, cols = grid.shape
    high: list[tuple[int, int]] = []
    low: list[tuple[int, int]] = []
    off: list[tuple[int, int]] = []
    for r in range(rows):
        for c in range(cols):
            x, y, w, h = grid.cell_box(r, c)
            s = p.evaluate(f"window.slidemill.imageToScreen({x + w / 2}, {y + h / 2})")
            at = (int(s["y"]), int(s["x"]))
            v = values[r, c]
            (off if np.isnan(v) else high if v == HIGH else low).append(at)
    assert high and low and off

    def change(a: np.ndarray, b: np.ndarray, at: tuple[int, int]) -> int:
        return int(np.abs(a[at] - b[at]).max())

    assert all(change(full, bare, at) > 40 for at in high), "the heatmap is missing on tissue"
    assert all(change(full, bare, at) > 40 for at in low)
    assert all(change(full, bare, at) <= 2 for at in off), "the heatmap is drawn off tissue"
    assert all(0 < change(faded, bare, at) < change(full, bare, at) for at in high)

    p.fill("#opacity", "1")
    p.fill("#threshold", "0.5")  # fires change: a new layer
    _settle(p)
    thresholded = _shot(p, "slide-heatmap-threshold-0.5")
    assert all(change(thresholded, bare, at) <= 2 for at in low), "under the threshold shows"
    assert all(change(thresholded, bare, at) > 40 for at in high)
    p.fill("#threshold", "0")
    _settle(p)


@pytest.mark.timeout(3 * SETTLE_MS // 1000)
def test_in_a_browser_a_top_k_tile_flies_the_view_onto_it_and_hover_shows_scores(
    page: Page, viewer: Viewer, viewed_run: ViewedRun
) -> None:
    p = page
    p.goto(f"{viewer.url}/runs/{RUN}/slides/synth-svs/")
    _settle(p)
    whole = p.evaluate("window.slidemill.viewportImageBounds()")
    button = p.locator("#top-attention button").first
    assert button.get_attribute("data-tile") == str(viewed_run.top_tile)
    button.click()
    _settle(p)
    _shot(p, "slide-top-tile")
    bounds = p.evaluate("window.slidemill.viewportImageBounds()")
    tile = p.evaluate(f"fetch('{api(viewer, 'synth-svs', 'top-tiles')}').then(r => r.json())")[
        "attention"
    ][0]
    assert bounds["x"] <= tile["x"] and tile["x"] + tile["size"] <= bounds["x"] + bounds["width"]
    assert bounds["y"] <= tile["y"] and tile["y"] + tile["size"] <= bounds["y"] + bounds["height"]
    assert bounds["width"] < whole["width"] / 2  # zoomed in on it
    outline = p.locator(".outline")
    assert outline.get_attribute("data-tile") == str(viewed_run.top_tile)
    half = tile["size"] / 2
    centre = p.evaluate(f"window.slidemill.imageToScreen({tile['x'] + half}, {tile['y'] + half})")
    p.mouse.move(centre["x"] + 3, centre["y"] + 3)
    p.wait_for_selector(f"#hover [data-tile='{viewed_run.top_tile}']")
    assert f"P(positive) {LOW:.3f}" in p.inner_text("#hover")


@pytest.fixture(scope="module")
def explained(
    viewed_run: ViewedRun, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Viewer, np.ndarray]]:
    """A copy of the run whose SVS has an explanation (`explain.zarr`, reasons for its tiles 0
    and 5, tile 1 left out of the bag), served by a viewer of its own; and its Shapley shares."""
    copy = tmp_path_factory.mktemp("explained") / RUN
    shutil.copytree(viewed_run.out, copy)
    shapley = explain_store(copy / viewed_run.slide_id)
    running = start_viewer([copy], tmp_path_factory.mktemp("explained-viewer") / "viewer.log")
    yield running, shapley
    running.stop()


@pytest.mark.timeout(3 * SETTLE_MS // 1000)
def test_in_a_browser_an_explained_slide_shows_its_layer_and_says_why_under_the_pointer(
    page: Page, explained: tuple[Viewer, np.ndarray], viewed_run: ViewedRun
) -> None:
    viewer, shapley = explained
    p = page
    p.goto(f"{viewer.url}/runs/{RUN}/slides/synth-svs/")
    _settle(p)
    layer = p.evaluate("window.slidemill.info.explanation.layer")
    options = p.eval_on_selector_all("#layer option", "os => os.map(o => [o.value, o.textContent])")
    assert [layer, "explanation: Shapley, P(positive)"] in options
    summary = p.inner_text("#explain-summary")
    assert "8 orders, seed 0" in summary
    assert "Shapley: deletion AUC 0.250, insertion AUC 0.850" in summary
    p.fill("#opacity", "1")
    _settle(p)
    scores = _shot(p, "explained-scores")
    p.select_option("#layer", layer)
    _settle(p)
    shares = _shot(p, "explained-shapley")
    assert p.inner_text("#bar-name") == "Shapley share, log-odds"
    assert p.evaluate("window.slidemill.state.cmap") != p.evaluate(
        "window.slidemill.info.heatmap.colormaps[0]"
    )

    # the tiles' pixels change from P(positive) to their shares; off tissue nothing is drawn
    grid = viewed_run.grid
    gi = StoreView(viewed_run.out / viewed_run.slide_id / SLIDE_STORE)[StoreArray.GRID_INDEX]
    centres = []
    for r, c in gi:
        x, y, w, h = grid.cell_box(int(r), int(c))
        s = p.evaluate(f"window.slidemill.imageToScreen({x + w / 2}, {y + h / 2})")
        centres.append((int(s["y"]), int(s["x"])))
    changed = [int(np.abs(shares[at] - scores[at]).max()) > 10 for at in centres]
    assert np.mean(changed) > 0.5, "the explanation layer looks like the scores"

    # the first tile has reasons: its share, region and the named features show on hover
    x, y, w, h = grid.cell_box(int(gi[0, 0]), int(gi[0, 1]))
    at = p.evaluate(f"window.slidemill.imageToScreen({x + w / 2}, {y + h / 2})")
    p.mouse.move(at["x"], at["y"])
    p.wait_for_selector("#hover [data-tile='0'] [data-explanation='shapley']")
    text = p.inner_text("#hover")
    assert f"Shapley {float(shapley[0]):+.3f} (region 0)" in text
    assert all(name in text for name in NAMES)
    p.select_option("#layer", p.evaluate("window.slidemill.info.heatmap.default"))
    _settle(p)
