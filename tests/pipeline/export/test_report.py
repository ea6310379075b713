"""The batch report: self-contained (no scripts, no URLs), escaped, small thumbnails from
`heatmap.png` only, flags where results carry them, failures with their reasons."""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
from PIL import Image

from slidemill.pipeline.export import (
    THUMB_MAX_PX,
    render_batch_report,
    result_flags,
    thumbnail_uri,
    write_batch_report,
)
from slidemill.schemas import Provenance, SlideResult, TilingSpec
from slidemill.schemas.layout import HEATMAP_PNG, REPORT_HTML

PROV = Provenance(
    slidemill_version="9.9",
    model_sha256="c0ffee" * 10 + "abcd",
    tiling=TilingSpec(mpp=2, tile_px=64),
)


def done(slide_id: str, p: float) -> SlideResult:
    return SlideResult(
        slide_id=slide_id,
        path=f"/slides/{slide_id}.svs",
        status="done",
        class_names=("negative", "positive"),
        probabilities=(1 - p, p),
        label="positive" if p >= 0.5 else "negative",
        n_tiles=12,
        provenance=PROV,
    )


def test_report_is_self_contained_escaped_with_small_thumbnails(tmp_path: Path) -> None:
    out = tmp_path / "night"
    results = [
        done("<b>evil</b>", 0.8),
        done("plain", 0.2),
        done("no-png", 0.4),
        SlideResult(
            slide_id="bad",
            path="/slides/bad.svs",
            status="failed",
            error="/slides/bad.svs: truncated or corrupt <x>",
            provenance=PROV,
        ),
        SlideResult(
            slide_id="blank",
            path="/slides/blank.svs",
            status="skipped",
            error="/slides/blank.svs: no tissue found",
            provenance=PROV,
        ),
    ]
    rng = np.random.default_rng(0)
    for r in results[:2]:
        (out / r.slide_id).mkdir(parents=True)
        pixels = rng.integers(0, 255, (400, 1300, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out / r.slide_id / HEATMAP_PNG)
    (out / "no-png").mkdir()
    (out / "no-png" / HEATMAP_PNG).write_bytes(b"not a png")  # no thumbnail, no failure

    path = write_batch_report(out, results, stopped="no workers for 300 s")
    assert path == out / REPORT_HTML
    page = path.read_text()
    assert "<script" not in page.lower() and "http" not in page.lower()
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page
    assert "truncated or corrupt &lt;x&gt;" in page and "no tissue found" in page
    assert "no workers for 300 s" in page
    assert PROV.model_sha256 is not None and PROV.model_sha256 in page
    assert "64 px at 2 µm/px" in page and "9.9" in page
    assert "0.800" in page and "flags" not in page  # no result carries flags: no column
    uris = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2 == page.count("<img")
    for uri in uris:
        thumb = Image.open(io.BytesIO(base64.b64decode(uri)))
        assert thumb.width <= THUMB_MAX_PX
        assert abs(thumb.height / thumb.width - 400 / 1300) < 0.02

    # written row by row (one thumbnail held at a time), it is the pure function's page
    thumbnails = {
        r.slide_id: u for r in results[:2] if (u := thumbnail_uri(out / r.slide_id / HEATMAP_PNG))
    }
    written = re.search(r"written (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", page)
    assert written is not None
    created = datetime.strptime(written[1], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    title = f"slidemill batch report: {out.name}"
    pure = render_batch_report(
        results, thumbnails, title=title, stopped="no workers for 300 s", created=created
    )
    assert page == pure


def test_flags_are_read_where_results_carry_them() -> None:
    flag = SimpleNamespace(code=SimpleNamespace(value="blur"), reason="42% of tiles out of focus")
    base = done("s1", 0.9)
    flagged = SimpleNamespace(**{k: getattr(base, k) for k in type(base).model_fields})
    flagged.qc = SimpleNamespace(flags=(flag,))
    assert result_flags(cast(Any, flagged)) == ("blur: 42% of tiles out of focus",)
    assert result_flags(base) == ()
    page = render_batch_report([cast(SlideResult, flagged), done("s2", 0.1)], {})
    assert '<th class="l">flags</th>' in page and "blur: 42% of tiles out of focus" in page
