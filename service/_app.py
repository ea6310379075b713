"""The HTTP API: batches submitted, listed, followed, cancelled and retried. Every error is a
problem-details JSON body (RFC 9457) whose `detail` is one line a person can read."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slidemill.pipeline.errors import one_line
from slidemill.pipeline.graph import output_refusal, tiling_for
from slidemill.pipeline.slides import assign_ids, expand
from slidemill.schemas import InvalidInputError, SlidemillError
from slidemill.schemas.layout import RESULTS_CSV
from slidemill.service._contracts import (
    BatchList,
    BatchRequest,
    BatchView,
    Health,
    RunNow,
    ScheduleList,
    ScheduleRequest,
    ScheduleView,
    SlideView,
)
from slidemill.service._lease import ServiceLease
from slidemill.service._paths import inside_roots
from slidemill.service._runner import BatchRunner
from slidemill.service._scheduler import Scheduler
from slidemill.service._settings import INTERACTIVE_PRIORITY, ServiceSettings
from slidemill.service.errors import (
    ConflictError,
    NotFoundError,
    PathNotAllowedError,
    ServiceError,
    UnauthorizedError,
)
from slidemill.service.ledger import (
    BatchRecord,
    BatchStatus,
    BrokenScheduleRecord,
    Ledger,
    ScheduleRecord,
    SlideRecord,
)
from slidemill.service.schedules import CatchUp, Schedule, next_window, output_folder
from slidemill.viewer import (
    LookupCatalog,
    RunRef,
    ViewerConfigError,
    ViewerOptions,
    create_viewer_app,
    is_loopback,
)
from slidemill.workers import ModelBundleError, check_bundle, resolve_model_dir

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[SlidemillError], int], ...] = (
    (UnauthorizedError, 401),
    (PathNotAllowedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidInputError, 422),
    (ModelBundleError, 422),
    (ServiceError, 500),
    (SlidemillError, 422),
)


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


class BodyLimit:
    """Refuses a request body over `max_bytes` with 413, whether it declares its length or
    streams in chunks, before the route sees any of it: the body is read here (at most
    `max_bytes`), then handed on whole. A route reading a stream itself would turn a limit hit
    mid-read into its own 400."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as a server does

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _problem(
            413, "Payload Too Large", f"the request body is over {self.max_bytes} bytes"
        )
        await response(scope, receive, send)


def create_app(
    settings: ServiceSettings,
    ledger: Ledger,
    runner: BatchRunner,
    scheduler: Scheduler,
    lease: ServiceLease | None = None,
) -> FastAPI:
    """The API over `ledger`, `runner` and `scheduler`, which start and stop with the app;
    `lease`, the service's hold on the ledger, is reported by the health check."""
    token = settings.bearer_token()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runner.start()
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()
            runner.stop()
            if lease is not None:  # here: after SIGTERM, uvicorn ends the process on return
                lease.release()

    def authorised(request: Request) -> None:
        if token is None:
            return  # loopback only (`ServiceSettings.check`)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise UnauthorizedError("a bearer token is required (Authorization: Bearer …)")

    app = FastAPI(
        title="slidemill",
        summary="Submit slide batches, follow them, read their results.",
        lifespan=lifespan,
        dependencies=[Depends(authorised)],  # every API route; the docs stay readable
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    _mount_viewer(
        app,
        ledger,
        token,
        off_loopback=not is_loopback(settings.host),
        roots=tuple(settings.allow_roots),
    )

    @app.exception_handler(SlidemillError)
    async def ours(_: Request, err: SlidemillError) -> JSONResponse:
        status = next(code for cls, code in _STATUS if isinstance(err, cls))
        return _problem(status, type(err).__name__, one_line(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        return _problem(422, "Unprocessable Content", f"{where}: {first['msg']}{more}")

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _problem(err.status_code, str(err.detail), str(err.detail))

    @app.get("/api/health", responses={503: {"model": Health}})
    def health(response: Response) -> Health:
        """`ok`, or `failing` with HTTP 503 when a thread of the service has stopped or its
        lease on the ledger is lost: a monitor sees it without parsing the body."""
        client = runner.client
        workers = len(client.scheduler_info(n_workers=-1)["workers"]) if client else 0
        problems = [*runner.problems(), *scheduler.problems()]
        if lease is not None and (lost := lease.problem()) is not None:
            problems.append(lost)
        if problems:
            response.status_code = 503
        return Health(status="failing" if problems else "ok", workers=workers,
                      running=runner.running, problems=problems)  # fmt: skip

    @app.post("/api/batches", status_code=202)
    def submit(body: BatchRequest) -> BatchView:
        """Queue a batch; answers at once with its id. Paths must lie inside allowed roots."""
        slides, out, model = _checked_paths(body, settings)
        record = ledger.create_batch(
            request={**body.model_dump(mode="json"), "model": str(model), "out": str(out)},
            out=str(out),
            slides=slides,
            origin="api",
            priority=INTERACTIVE_PRIORITY,
        )
        runner.wake()
        return _view(record)

    @app.get("/api/batches")
    def batches(
        status: BatchStatus | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        updated_since: Annotated[
            datetime | None, Query(description="Only batches changed after this (polling).")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> BatchList:
        found = ledger.list(
            status=status,
            since=_utc(since),
            until=_utc(until),
            updated_since=_utc(updated_since),
            limit=limit,
        )
        return BatchList(batches=[_view(r) for r in found])

    @app.get("/api/batches/{batch_id}")
    def batch(batch_id: str) -> BatchView:
        record = _get(ledger, batch_id)
        return _view(record, ledger.slides(batch_id))

    @app.post("/api/batches/{batch_id}/cancel", status_code=202)
    def cancel(batch_id: str) -> BatchView:
        record = ledger.request_cancel(batch_id)
        if record is None:
            raise NotFoundError(f"no batch {batch_id}")
        runner.cancel(batch_id)
        return _view(record)

    @app.post("/api/batches/{batch_id}/retry", status_code=202)
    def retry(batch_id: str) -> BatchView:
        """A new batch of the failed slides of a finished one."""
        _get(ledger, batch_id)
        record = ledger.retry_failed(batch_id)
        if record is None:
            raise NotFoundError(f"no batch {batch_id}")
        runner.wake()
        return _view(record)

    @app.post("/api/schedules", status_code=201)
    def add_schedule(body: ScheduleRequest) -> ScheduleView:
        """Keep a schedule; it fires at its first window after now."""
        roots = settings.allow_roots
        schedule = Schedule(
            name=body.name,
            cron=body.cron,
            tz=body.tz,
            inbox=str(inside_roots(body.inbox, roots, "inbox")),
            model=str(inside_roots(body.model, roots, "model")),
            out_template=body.out,
            catch_up=CatchUp(body.catch_up),
            options=body.options,
            max_attempts=body.max_attempts,
            settle_s=body.settle_s,
        )
        # the output folder of any window must be inside a root too: check one now
        inside_roots(output_folder(schedule, datetime.now(UTC)), roots, "output folder")
        return _schedule_view(ledger.add_schedule(schedule))

    @app.get("/api/schedules")
    def schedules() -> ScheduleList:
        return ScheduleList(schedules=[_schedule_view(r) for r in ledger.schedules()])

    @app.post("/api/schedules/{name}/pause")
    def pause(name: str) -> ScheduleView:
        return _schedule_view(ledger.set_paused(name, True))

    @app.post("/api/schedules/{name}/resume")
    def resume(name: str) -> ScheduleView:
        return _schedule_view(ledger.set_paused(name, False))

    @app.delete("/api/schedules/{name}", status_code=204)
    def remove(name: str) -> None:
        ledger.remove_schedule(name)

    @app.post("/api/schedules/{name}/run-now", status_code=202)
    def run_now(name: str) -> RunNow:
        """Run the schedule once now; its windows are unchanged."""
        return RunNow(batch=scheduler.run_now(name))

    return app


VIEWER_PREFIX = "/viewer"


def _mount_viewer(
    app: FastAPI,
    ledger: Ledger,
    token: str | None,
    *,
    off_loopback: bool,
    roots: tuple[Path, ...],
) -> None:
    """The viewer under /viewer, a batch's output folder at /viewer/runs/<batch id>/ (it checks
    the same token itself: a mounted app is outside the API's dependencies). Off loopback its
    session cookie is always `Secure`."""

    def ref(record: BatchRecord) -> RunRef:
        return RunRef(
            key=record.id,
            title=f"{record.origin} batch of {record.created_at:%Y-%m-%d %H:%M}",
            path=Path(record.out),
        )

    def lookup(key: str) -> RunRef | None:
        record = ledger.get(key)
        return ref(record) if record is not None else None

    try:
        viewer = create_viewer_app(
            LookupCatalog(lookup, lambda: [ref(r) for r in ledger.list(limit=200)]),
            ViewerOptions(token=token, off_loopback=off_loopback, slide_roots=roots),
        )
    except ViewerConfigError as err:
        log.warning("the viewer is off: %s", err)
        return
    app.mount(VIEWER_PREFIX, viewer)


def _schedule_view(record: ScheduleRecord | BrokenScheduleRecord) -> ScheduleView:
    if isinstance(record, BrokenScheduleRecord):  # shown as stored, with why it does not load
        stored = record.stored
        return ScheduleView(
            name=record.name,
            cron=str(stored["cron"]),
            tz=str(stored["tz"]),
            inbox=str(stored["inbox"]),
            model=str(stored["model"]),
            out=str(stored["out_template"]),
            catch_up=str(stored["catch_up"]),
            options=dict(stored["options"]) if isinstance(stored["options"], dict) else {},
            max_attempts=int(stored["max_attempts"]),
            settle_s=float(stored["settle_s"]),
            paused=bool(stored["paused"]),
            created_at=record.created_at,
            last_fired=record.last_fired,
            next_window=None,
            last_error=record.last_error,
            last_error_at=record.last_error_at,
            invalid=record.reason,
        )
    s = record.schedule
    now = datetime.now(UTC)
    after = max(record.last_fired, now) if record.last_fired else now
    return ScheduleView(
        name=s.name,
        cron=s.cron,
        tz=s.tz,
        inbox=s.inbox,
        model=s.model,
        out=s.out_template,
        catch_up=s.catch_up.value,
        options=dict(s.options),
        max_attempts=s.max_attempts,
        settle_s=s.settle_s,
        paused=s.paused,
        created_at=record.created_at,
        last_fired=record.last_fired,
        next_window=None if s.paused else next_window(s, after),
        last_error=record.last_error,
        last_error_at=record.last_error_at,
    )


def _checked_paths(
    body: BatchRequest, settings: ServiceSettings
) -> tuple[list[tuple[str, str]], Path, Path]:
    """The batch's slide files (folders listed now), its output folder and model, each inside
    an allowed root; refuses before anything is read beyond listing the allowed folders."""
    roots = settings.allow_roots
    given = [inside_roots(s, roots, "slide") for s in body.slides]
    out = inside_roots(body.out, roots, "output folder")
    model = resolve_model_dir(inside_roots(body.model, roots, "model"))
    inside_roots(model, roots, "model")  # a training folder's ensemble, through its links
    refusal = output_refusal(out)  # checked again when the batch starts
    if refusal is not None:
        raise InvalidInputError(f"out: {refusal}")
    files = expand(given)
    for f in files:  # a folder may hold links that lead out
        inside_roots(f, roots, "slide")
    if not files:
        raise InvalidInputError(f"no slide files found in {', '.join(body.slides)}")
    if len(files) > settings.max_slides:
        raise InvalidInputError(
            f"{len(files)} slides: over the limit of {settings.max_slides} per batch"
        )
    tiling_for(check_bundle(model), body)  # what the run will refuse, refused now
    return [(e.slide_id, str(e.path)) for e in assign_ids(files)], out, model


def _utc(moment: datetime | None) -> datetime | None:
    """A query's time; one without an offset is taken as UTC, the ledger's clock."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _get(ledger: Ledger, batch_id: str) -> BatchRecord:
    record = ledger.get(batch_id)
    if record is None:
        raise NotFoundError(f"no batch {batch_id}")
    return record


def _view(record: BatchRecord, slides: list[SlideRecord] | None = None) -> BatchView:
    extra: dict[str, Any] = {}
    if slides is not None:
        extra["slides"] = [_slide_view(s) for s in slides]
        extra["request"] = dict(record.request)
    return BatchView(
        id=record.id,
        origin=record.origin,
        status=record.status.value,
        priority=record.priority,
        out=record.out,
        created_at=record.created_at,
        updated_at=record.updated_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        error=record.error,
        n_slides=record.n_slides,
        n_done=record.n_done,
        n_failed=record.n_failed,
        n_skipped=record.n_skipped,
        n_pending=record.n_slides - record.n_done - record.n_failed - record.n_skipped,
        results_csv=str(Path(record.out) / RESULTS_CSV),
        viewer=f"{VIEWER_PREFIX}/runs/{record.id}/",
        **extra,
    )


def _slide_view(s: SlideRecord) -> SlideView:
    return SlideView(
        slide_id=s.slide_id,
        path=s.path,
        state=s.state.value,
        label=s.label,
        class_names=list(s.class_names),
        probabilities=list(s.probabilities),
        n_tiles=s.n_tiles,
        error=s.error,
        timings=dict(s.timings),
        output=s.output,
        flags=list(s.flags),
        updated_at=s.updated_at,
    )
