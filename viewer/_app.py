"""The viewer's HTTP app: pages (static HTML and scripts that read the JSON routes), the slide's
DeepZoom tiles, heatmap tiles rendered on demand (the classes, attention, and the explanation
of an explained slide), tile scores and the top-k tiles.

Every route names a run by key and a slide by id; the slide file is the one the run's own
result names. No route takes a file path, and only pyramid levels are served."""

from __future__ import annotations

import hmac
import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from slidemill.pipeline.export import EXPLANATION_CHANNEL
from slidemill.schemas import SlidemillError
from slidemill.viewer._access import MAX_SESSIONS, SESSION_TTL_S, SessionStore, checked_token
from slidemill.viewer._assets import STATIC_DIR, openseadragon_dir
from slidemill.viewer._geometry import COLORMAPS, Pyramid, colormap_lut, heat_tile, top_k
from slidemill.viewer._runs import (
    RunCatalog,
    RunRef,
    SlideData,
    SlideDataCache,
    check_key,
    slide_rows,
)
from slidemill.viewer._slides import SlideSources
from slidemill.viewer.errors import (
    BadRequestError,
    NotFoundError,
    UnauthorizedError,
    UnreadableResultError,
    ViewerConfigError,
)

HEAT_TILE = 256
"""Heatmap tile edge (pixels of its level)."""
SESSION_COOKIE = "slidemill_viewer_session"
"""The browser's cookie: a session id (`SessionStore`), never the token."""
_STATUS: tuple[tuple[type[SlidemillError], int], ...] = (
    (UnauthorizedError, 401),
    (NotFoundError, 404),
    (BadRequestError, 422),
    (UnreadableResultError, 500),
    (SlidemillError, 500),
)


@dataclass(frozen=True, slots=True)
class ViewerOptions:
    """How a viewer app serves."""

    token: str | None = None
    """Required of every request (bearer header, or the session cookie a `?token=` visit sets);
    None only on loopback."""
    cache_bytes: int = 256 << 20
    """Encoded tiles kept in memory (slide and heatmap together)."""
    top_k: int = 8
    """Tiles in each gallery by default."""
    off_loopback: bool = False
    """Bound beyond loopback: the session cookie is then `Secure` even if the request came in
    over plain HTTP (a TLS proxy in front may not say so)."""
    session_ttl_s: float = SESSION_TTL_S
    """How long a browser session lasts (the cookie's Max-Age)."""
    max_sessions: int = MAX_SESSIONS
    """Browser sessions kept at once."""
    slide_roots: tuple[Path, ...] = ()
    """Folders a slide's pixels may be served from, checked at every open (the service's
    allowed roots: a slide swapped for a link after its run is not served); empty: anywhere."""

    def __post_init__(self) -> None:
        if self.token is not None:
            checked_token(self.token, "the viewer's token", ViewerConfigError)


def create_viewer_app(
    catalog: RunCatalog,
    options: ViewerOptions | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The viewer over `catalog`'s runs; mounted by `slidemill serve` under /viewer, served
    alone by `slidemill view`. Pages use relative URLs, so either works. `clock` times the
    sessions (a test moves it to expire one)."""
    options = options or ViewerOptions()
    sources = SlideSources(cache_bytes=options.cache_bytes, roots=options.slide_roots)
    slides = SlideDataCache()
    osd = openseadragon_dir()
    token = options.token
    sessions = SessionStore(options.session_ttl_s, options.max_sessions, clock)

    def authorised(request: Request) -> None:
        if token is None:
            return  # loopback only (`slidemill view` refuses otherwise)
        if request.scope.get("endpoint") is index and "token" in request.query_params:
            given = request.query_params["token"]  # a link with the token: index trades it
            if _same(given, token):
                return
        else:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer":  # API clients send the token each time
                if _same(given, token):
                    return
            elif request.cookies.get(SESSION_COOKIE, "") in sessions:
                return
        raise UnauthorizedError("the viewer needs its token: open it once with ?token=…")

    app = FastAPI(
        title="slidemill viewer",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(authorised)],
    )

    @app.exception_handler(SlidemillError)
    async def ours(_: Request, err: SlidemillError) -> JSONResponse:
        status = next(code for cls, code in _STATUS if isinstance(err, cls))
        return _problem(status, type(err).__name__, str(err).splitlines()[0] if str(err) else "")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # a URL that does not parse names nothing that exists: 404; a bad query value: 422
        errors = err.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        if any(e.get("loc", ("",))[0] == "path" for e in errors):
            return _problem(404, "Not Found", f"{where}: {first['msg']}")
        return _problem(422, "Unprocessable Content", f"{where}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _problem(err.status_code, str(err.detail), str(err.detail))

    def run_of(key: str) -> RunRef:
        ref = catalog.get(check_key(key, "run"))
        if ref is None:
            raise NotFoundError(f"no run {key!r}")
        return ref

    def slide_of(run: str, slide: str) -> SlideData:
        return slides.get(run_of(run).path, slide)

    def image(data: bytes, media_type: str) -> Response:
        return Response(
            data, media_type=media_type, headers={"Cache-Control": "private, max-age=300"}
        )

    # pages ---------------------------------------------------------------------------------

    def page(name: str) -> FileResponse:
        return FileResponse(STATIC_DIR / name, media_type="text/html")

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        if token is not None and "token" in request.query_params:
            # `authorised` checked it: trade the link's token for a session, and drop it from
            # the address bar (and the history). The Location is the path alone (root_path
            # included when mounted): never a host taken from the request's Host header.
            rest = urlencode(
                [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            )
            where = "/" + request.url.path.lstrip("/")  # one slash: "//x" would be a host
            response = RedirectResponse(where + (f"?{rest}" if rest else ""), 303)
            response.set_cookie(
                SESSION_COOKIE,
                sessions.open(),
                max_age=int(sessions.ttl_s),
                path=request.scope.get("root_path") or "/",
                secure=options.off_loopback or request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
            return response
        return page("index.html")

    @app.get("/runs/{run}/", include_in_schema=False)
    def run_page(run: str) -> FileResponse:
        run_of(run)
        return page("run.html")

    @app.get("/runs/{run}/slides/{slide}/", include_in_schema=False)
    def slide_page(run: str, slide: str) -> FileResponse:
        slide_of(run, slide)
        return page("slide.html")

    # JSON ----------------------------------------------------------------------------------

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        return {"runs": [{"key": r.key, "title": r.title} for r in catalog.runs()]}

    @app.get("/api/runs/{run}")
    def run_table(run: str) -> dict[str, Any]:
        ref = run_of(run)
        class_names, rows = slide_rows(ref.path)
        return {
            "key": ref.key,
            "title": ref.title,
            "class_names": list(class_names),
            "slides": [asdict(r) for r in rows],
        }

    @app.get("/api/runs/{run}/slides/{slide}")
    def slide_info(run: str, slide: str) -> dict[str, Any]:
        data = slide_of(run, slide)
        width, height = data.attrs.slide_dimensions
        result = data.result
        tiling = result.provenance.tiling
        layers = data.layers
        default = layers[1] if len(data.attrs.class_names) == 2 else layers[0]
        return {
            "slide_id": data.slide_id,
            "run": run,
            "width": width,
            "height": height,
            "mpp": result.provenance.slide_mpp,
            "label": result.label,
            "class_names": list(data.attrs.class_names),
            "probabilities": dict(zip(result.class_names, result.probabilities, strict=False)),
            "flags": [{"code": c, "reason": r} for c, r in data.flags],
            "n_tiles": result.n_tiles,
            "tile_level0": data.attrs.tile_size_level0,
            "stride_level0": data.attrs.stride_level0,
            "tile_mpp": tiling.mpp if tiling else None,
            "tile_px": tiling.tile_px if tiling else None,
            "model_sha256": result.provenance.model_sha256,
            "heatmap": {
                "layers": layers,
                "default": default,
                "colormaps": list(COLORMAPS),
                "tile_size": HEAT_TILE,
                "max_level": Pyramid(width, height, HEAT_TILE).max_level,
            },
            "explanation": _explanation_info(data),
        }

    @app.get("/api/colormaps/{name}")
    def colormap(name: str) -> dict[str, Any]:
        return {"name": name, "colors": _lut(name).tolist()}

    @app.get("/api/runs/{run}/slides/{slide}/tile-at")
    def tile_at(
        run: str, slide: str, x: Annotated[float, Query()], y: Annotated[float, Query()]
    ) -> dict[str, Any]:
        """The tile whose cell holds level-0 point (x, y), or `tile: null`."""
        data = slide_of(run, slide)
        r, c, inside = data.grid.cells_at(np.array([x]), np.array([y]))
        index = int(data.cell_index[r[0], c[0]]) if inside[0] else -1
        return {"tile": _tile(data, index) if index >= 0 else None}

    @app.get("/api/runs/{run}/slides/{slide}/top-tiles")
    def top_tiles(
        run: str, slide: str, k: Annotated[int, Query(ge=1, le=64)] = options.top_k
    ) -> dict[str, Any]:
        """The k tiles of highest attention, for each class the k highest-scoring, and for an
        explained slide the k of highest Shapley share (`explanation`; null when not
        explained)."""
        data = slide_of(run, slide)
        shapley = data.explanation.shapley if data.explanation is not None else None
        return {
            "attention": [_tile(data, int(i)) for i in top_k(data.attention, k)],
            "classes": {
                name: [_tile(data, int(i)) for i in top_k(data.scores[:, ci], k)]
                for ci, name in enumerate(data.attrs.class_names)
            },
            "explanation": (
                [_tile(data, int(i)) for i in top_k(shapley, k)] if shapley is not None else None
            ),
        }

    # images --------------------------------------------------------------------------------

    @app.get("/api/runs/{run}/slides/{slide}/preview.jpg")
    def preview(run: str, slide: str) -> Response:
        data = slide_of(run, slide)

        def make() -> bytes:
            img = Image.fromarray(data.thumbnail)
            img.thumbnail((192, 192))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
            return buf.getvalue()

        key = ("preview", run, slide, data.version)
        return image(sources.tiles.get_or_make(key, make), "image/jpeg")

    @app.get("/api/runs/{run}/slides/{slide}/slide.dzi")
    def dzi(run: str, slide: str) -> Response:
        data = slide_of(run, slide)
        return Response(sources.dzi(data.slide_path), media_type="application/xml")

    @app.get("/api/runs/{run}/slides/{slide}/slide_files/{level}/{col}_{row}.jpeg")
    def slide_tile(run: str, slide: str, level: int, col: int, row: int) -> Response:
        data = slide_of(run, slide)
        return image(sources.tile(data.slide_path, level, col, row), "image/jpeg")

    @app.get("/api/runs/{run}/slides/{slide}/heatmap/{layer}/{level}/{col}_{row}.png")
    def heatmap_tile(
        run: str,
        slide: str,
        layer: str,
        level: int,
        col: int,
        row: int,
        cmap: str = "inferno",
        threshold: Annotated[float, Query(ge=0, le=1)] = 0.0,
    ) -> Response:
        data = slide_of(run, slide)
        values = data.layer(layer)
        lut = _lut(cmap)
        width, height = data.attrs.slide_dimensions
        pyramid = Pyramid(width, height, HEAT_TILE)
        box = pyramid.tile_box(level, col, row)
        if box is None:
            raise NotFoundError(f"{slide}: no heatmap tile {col},{row} at level {level}")

        def make() -> bytes:
            rgba = heat_tile(values, data.grid, pyramid, level, box, lut, threshold)
            buf = io.BytesIO()
            Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", compress_level=1)
            return buf.getvalue()

        key = ("heat", run, slide, data.version, layer, cmap, threshold, level, col, row)
        return image(sources.tiles.get_or_make(key, make), "image/png")

    @app.get("/api/runs/{run}/slides/{slide}/tiles/{index}.jpg")
    def tile_image(run: str, slide: str, index: int) -> Response:
        """Tile `index` as the model saw it: its footprint at the model's tile size."""
        data = slide_of(run, slide)
        if not 0 <= index < data.grid_index.shape[0]:
            raise NotFoundError(f"{slide} has no tile {index}")
        row, col = (int(v) for v in data.grid_index[index])
        x, y, edge = data.grid.tile_box(row, col)
        tiling = data.result.provenance.tiling
        out_px = min(tiling.tile_px if tiling else 256, 512)
        return image(sources.region(data.slide_path, x, y, edge, out_px), "image/jpeg")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/openseadragon", StaticFiles(directory=osd), name="openseadragon")
    return app


def _same(given: str, token: str) -> bool:
    """Whether `given` is the token, in time that does not depend on where they differ."""
    return hmac.compare_digest(given.encode(), token.encode())


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    """A problem-details body (RFC 9457), as the service answers errors."""
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def _lut(name: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
    try:
        return colormap_lut(name)
    except ValueError as err:
        raise BadRequestError(str(err)) from err


def _tile(data: SlideData, index: int) -> dict[str, Any]:
    row, col = (int(v) for v in data.grid_index[index])
    x, y, edge = data.grid.tile_box(row, col)
    return {
        "index": index,
        "x": x,
        "y": y,
        "size": edge,
        "attention": float(data.attention[index]),
        "scores": {
            name: float(data.scores[index, ci]) for ci, name in enumerate(data.attrs.class_names)
        },
        "explanation": _tile_explanation(data, index),
    }


EXPLANATION_COLORMAP = "coolwarm"
"""The explanation layer's colormap: diverging, white at 0 (`COLORMAPS` holds it)."""


def _explanation_info(data: SlideData) -> dict[str, Any] | None:
    """What the slide page says of an explained slide; None when it was not explained."""
    e = data.explanation
    if e is None:
        return None
    info = e.info
    keys = (
        "budget", "seed", "n_players", "cell", "exact", "permutations", "full_log_odds",
        "empty_log_odds", "seconds", "faithfulness",
    )  # fmt: skip
    return {
        "layer": EXPLANATION_CHANNEL,
        "target": e.target,
        "max_abs": e.max_abs,
        "colormap": EXPLANATION_COLORMAP,
        "reason_names": list(e.reason_names),
        **{k: info.get(k) for k in keys},
    }


def _tile_explanation(data: SlideData, index: int) -> dict[str, Any] | None:
    """A tile's Shapley share, region and top feature-level reasons; None when the slide was
    not explained."""
    e = data.explanation
    if e is None:
        return None
    share = float(e.shapley[index])
    return {
        "shapley": share if math.isfinite(share) else None,
        "region": int(e.region[index]),
        "reasons": [{"feature": n, "value": v} for n, v in e.reasons_of(index)],
    }
