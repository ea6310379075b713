"""Run a batch: build each slide's graph on the cluster and collect one result per slide.

The client only submits tasks and collects small results. Each slide is planned first (tissue
and tile grid on a worker); when its plan arrives the rest of its graph is submitted: tiling
tasks → encoding tasks (on GPU workers when there are any) → one MIL task → one reduce task.
A slide whose task fails ends as a failed result; the others go on.

Before any cluster starts the model bundle is checked and the output folder locked (one run per
folder). Workers may come and go at any time; with none at all for `worker_timeout_s`, or when
anything else stops the batch, every unfinished slide fails with that one-line reason and
`results.csv` is still written.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distributed import Client, Future, as_completed
from pydantic import ValidationError

from slidemill.cluster import (
    GPU_RESOURCE,
    check_pools,
    connect,
    gpu_workers,
    load_cluster_config,
    register_worker_plugin,
)
from slidemill.pipeline.errors import (
    BatchCancelledError,
    InvalidInputError,
    NoWorkersError,
    SchedulerLostError,
    SlideFolderNotOursError,
    one_line,
)
from slidemill.pipeline.export import write_batch_report
from slidemill.pipeline.graph._job import Refusal, SlideJob, SlidePlan, refusal_for, write_result
from slidemill.pipeline.graph._lock import hold_output
from slidemill.pipeline.graph._owned import claim_output, mark_slide
from slidemill.pipeline.graph._plan import plan_or_refuse
from slidemill.pipeline.graph._resume import Action, ResumeKey, decide
from slidemill.pipeline.graph._store import final_dir, publish
from slidemill.pipeline.graph._tasks import (
    encode_block,
    finish_features,
    mil_slide,
    reduce_slide,
    tile_block,
)
from slidemill.pipeline.graph._watch import WorkerWatch
from slidemill.pipeline.slides import assign_ids, expand
from slidemill.schemas import (
    AnyClusterConfig,
    ModelManifest,
    RunOptions,
    RunSpec,
    SlidemillError,
    SlideResult,
    TilingSpec,
    describe,
    slidemill_version,
)
from slidemill.schemas.files import write_atomic
from slidemill.schemas.layout import PARTIAL_DIR, RESULT_JSON, RESULTS_CSV
from slidemill.workers import (
    ModelPlugin,
    Quantize,
    check_bundle,
    manifest_sha256,
    resolve_model_dir,
)

log = logging.getLogger(__name__)

POLL_S = 1.0
"""How often the batch asks the scheduler how many workers it has."""


@dataclass(frozen=True, slots=True)
class BatchReport:
    """The outcome of a batch."""

    results: tuple[SlideResult, ...]
    """One per slide, in the order given."""
    results_csv: Path
    """Where the table was written."""
    dashboard: str | None
    """The Dask dashboard used (None when every slide was already done)."""
    kept: tuple[str, ...] = ()
    """Slides whose earlier result was still valid and kept without running."""
    stopped: str | None = None
    """Why the batch stopped before every slide finished (one line); None when it did not."""

    @property
    def n_failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)


def tiling_for(manifest: ModelManifest, spec: RunOptions) -> TilingSpec:
    """The model fixes resolution and tile size; the run chooses overlap and tissue filter.
    Options that do not fit the model (an overlap as large as its tiles) are an
    `InvalidInputError` naming the option."""
    try:
        return TilingSpec(
            mpp=manifest.input_mpp,
            tile_px=manifest.tile_px,
            overlap_px=spec.overlap_px,
            tissue_method=spec.tissue_method,
            min_tissue_fraction=spec.min_tissue_fraction,
        )
    except ValidationError as err:
        raise InvalidInputError(
            f"the run's options do not fit the model ({manifest.tile_px}-px tiles at "
            f"{manifest.input_mpp} µm/px): {describe(err).removeprefix('value: Value error, ')}"
        ) from err


@dataclass(frozen=True, slots=True)
class BatchHooks:
    """How a long-lived caller (the lab service) shares its cluster with a batch and follows it.

    The defaults: a cluster of its own, no callbacks. `batch_progress` draws a progress bar
    from the callbacks (the CLI's and the demo's); run_batch itself displays nothing."""

    client: Client | None = None
    """Run on this client's cluster instead of connecting to the spec's; left open afterwards."""
    on_start: Callable[[int, int], None] | None = None
    """Called once, before any result, with the batch's slide count and how many of them are
    kept from an earlier run (their results come first)."""
    on_result: Callable[[SlideResult], None] | None = None
    """Called with each slide's result once its folder is published (kept ones included)."""
    cancel: threading.Event | None = None
    """Set it to stop the batch: running tasks are cancelled, unfinished slides fail as
    `cancelled` and keep their finished blocks for a later run."""
    priority: int = 0
    """Added to every task's Dask priority: a batch with a higher one goes first when several
    share a cluster."""
    allow_roots: tuple[Path, ...] = ()
    """Folders every slide must lie inside whenever a worker opens it (the service's allowed
    roots, checked again at each open: a file may be swapped for a link after submission);
    empty: anywhere."""


def run_batch(
    spec: RunSpec,
    on_dashboard: Callable[[str], None] | None = None,
    hooks: BatchHooks | None = None,
) -> BatchReport:
    """Run every slide of `spec` and write `results.csv`; never raises for one slide's error.

    Raises before any cluster starts for a bad bundle (`ModelBundleError`), no slides, or an
    output folder another run holds (`OutputLockedError`). Once the cluster is up, whatever
    stops the batch (no workers for `spec.worker_timeout_s`, a lost scheduler, a bug, Ctrl-C)
    fails the unfinished slides with its one-line reason in `results.csv`; Ctrl-C is then
    raised again. `hooks` let the lab service share its cluster, follow and cancel."""
    hooks = hooks or BatchHooks()
    model = resolve_model_dir(spec.model)  # a `slidemill train` folder means its ensemble
    manifest = check_bundle(model)  # the workers' own check, before anything starts
    model_sha = manifest_sha256(manifest)
    tiling = tiling_for(manifest, spec)
    entries = assign_ids(expand(spec.slides))
    if not entries:
        raise InvalidInputError(f"no slide files found in {', '.join(map(str, spec.slides))}")
    out = spec.out.absolute()
    claim_output(out)  # slidemill writes only into folders it made (or took empty)
    jobs = [
        SlideJob(
            slide_id=e.slide_id,
            path=str(e.path),
            out=str(out),
            tiling=tiling,
            fallback_mpp=spec.fallback_mpp,
            tiles_per_task=spec.tiles_per_task,
            model_bundle=str(model.absolute()),
            model_sha256=model_sha,
            class_names=() if spec.stages == "features" else manifest.class_names,
            feature_dim=manifest.feature_dim,
            batch_size=spec.batch_size,
            key=resume_key(e.path, tiling, model_sha, spec.fallback_mpp, spec.quantize),
            force=spec.force,
            features_only=spec.stages == "features",
            threshold=manifest.threshold,
            keep_jpeg=spec.keep_jpeg,  # None: settled in `_run_on`, once GPUs are known
            keep_tiles=spec.keep_tiles,
            qc=spec.qc,
            jpeg_decode=spec.jpeg_decode,
            roots=tuple(str(r) for r in hooks.allow_roots),
            quantize=spec.quantize,
        )
        for e in entries
    ]
    with hold_output(out):  # from the first read of earlier results to the last write
        return _run_locked(spec, out, jobs, on_dashboard, hooks)


def _run_locked(
    spec: RunSpec,
    out: Path,
    jobs: list[SlideJob],
    on_dashboard: Callable[[str], None] | None,
    hooks: BatchHooks,
) -> BatchReport:
    results: list[SlideResult] = []
    to_run: list[SlideJob] = []
    for job in jobs:
        previous = read_result(out, job.slide_id)
        if decide(previous, job.key, spec.force) is Action.REUSE and previous is not None:
            results.append(previous)
        else:
            to_run.append(job)
    kept = tuple(r.slide_id for r in results)
    if hooks.on_start is not None:
        hooks.on_start(len(jobs), len(kept))
    for previous in results:
        _notify(hooks, previous)
    dashboard = None
    stopped: str | None = None
    interrupt: BaseException | None = None
    if to_run:  # a batch that is all done starts no cluster
        cluster = spec.cluster or load_cluster_config(
            scheduler=spec.scheduler, n_workers=spec.n_workers
        )
        started = False
        try:
            with _quiet_cancellations(), _client(cluster, hooks) as client:
                started = True
                dashboard = client.dashboard_link
                if on_dashboard is not None:
                    on_dashboard(dashboard)
                _run_on(client, to_run, spec, cluster.gpu_pool, results, hooks)
        except BaseException as err:
            if not started and isinstance(err, SlidemillError):
                raise  # the cluster did not start: the user's to fix, and no slide ran
            stopped = _stop_reason(err)
            if not isinstance(err, Exception):
                interrupt = err
        if stopped is not None:
            _fail_unfinished(to_run, results, stopped, hooks)
    by_id = {r.slide_id: r for r in results}
    ordered = tuple(by_id[job.slide_id] for job in jobs)
    class_names = jobs[0].class_names
    csv_path = write_results_csv(out, ordered, class_names)
    write_batch_report(out, ordered, stopped=stopped)
    _remove_if_empty(out / PARTIAL_DIR)
    if interrupt is not None:
        raise interrupt
    return BatchReport(ordered, csv_path, dashboard, kept, stopped)


class _Cancelled(logging.Filter):
    """Drops records of a task that was cancelled: closing a client whose scheduler is gone
    cancels its reconnection, which distributed logs as an error with a traceback, though it
    says no more than the batch's one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


@contextlib.contextmanager
def _quiet_cancellations() -> Iterator[None]:
    logger = logging.getLogger("distributed.client")
    quiet = _Cancelled()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _stop_reason(err: BaseException) -> str:
    """The one line a stopped batch gives its unfinished slides, logged as it is decided. A
    cause that is neither ours nor a lost connection is a bug: its traceback is logged too."""
    if isinstance(err, KeyboardInterrupt):
        reason = "interrupted"
    elif isinstance(err, SlidemillError):
        reason = one_line(err)
    else:
        reason = f"the batch stopped: {one_line(err)}"
    bug = not isinstance(err, SlidemillError | OSError) and isinstance(err, Exception)
    log.error(
        "%s; every unfinished slide fails with this reason", reason, exc_info=err if bug else None
    )
    return reason


@contextlib.contextmanager
def _client(cluster: AnyClusterConfig, hooks: BatchHooks) -> Iterator[Client]:
    """The caller's client when it gives one (left open), else a cluster of the batch's own."""
    if hooks.client is not None:
        yield hooks.client
        return
    with connect(cluster) as client:
        yield client


def _notify(hooks: BatchHooks, result: SlideResult) -> None:
    if hooks.on_result is not None:
        hooks.on_result(result)


def _fail_unfinished(
    jobs: list[SlideJob], results: list[SlideResult], reason: str, hooks: BatchHooks
) -> None:
    finished = {r.slide_id for r in results}
    for job in jobs:
        if job.slide_id not in finished:
            # a slide published just before the stop, its result not yet collected, stays done
            result = read_result(Path(job.out), job.slide_id)
            if result is None or decide(result, job.key, force=False) is not Action.REUSE:
                result = _failure(job, Refusal("failed", reason))
                _record_failure(job, result)
            results.append(result)
            _notify(hooks, result)


def resume_key(
    path: Path,
    tiling: TilingSpec,
    model_sha: str,
    fallback_mpp: float | None,
    quantize: Quantize = "none",
) -> ResumeKey | None:
    """The slide's resume key, or None when the file cannot be examined (it will fail)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return ResumeKey(
        path=str(path),
        file_size=st.st_size,
        file_mtime_ns=st.st_mtime_ns,
        tiling=tiling,
        model_sha256=model_sha,
        slidemill_version=slidemill_version(),
        fallback_mpp=fallback_mpp,
        quantize=quantize,
    )


def read_result(out: Path, slide_id: str) -> SlideResult | None:
    """The result of an earlier run, if there is a readable one."""
    try:
        return SlideResult.model_validate_json(
            (final_dir(out, slide_id) / RESULT_JSON).read_bytes()
        )
    except (OSError, ValidationError):
        return None


def keep_jpeg(requested: bool | None, gpus: bool) -> bool:
    """Whether tiling keeps the slide's JPEG tiles for the encode task to decode. Asked for or
    not, by default yes, on CPU and GPU workers alike (`gpus`): one decode wherever the encoder
    runs, and ~1/8 of the bytes through the store. A GPU worker decodes them on its GPU
    (nvJPEG, `choose_decode`), so its host's cores do not; one whose torchvision cannot decodes
    on its host instead, and says so in the result's provenance."""
    del gpus  # no longer decides: kept either way (--decode-tiles still writes RGB)
    return requested if requested is not None else True


def _run_on(
    client: Client,
    jobs: list[SlideJob],
    spec: RunSpec,
    gpu_pool: bool,
    results: list[SlideResult],
    hooks: BatchHooks,
) -> None:
    """Run `jobs` on the cluster, appending each slide's result to `results` as it arrives (so
    a batch stopped halfway still has them); raises `NoWorkersError` when the cluster has had
    no workers for `spec.worker_timeout_s`, `SchedulerLostError` when the scheduler is gone."""
    token = uuid.uuid4().hex[:8]
    job0 = jobs[0]
    # a batch backend's GPU jobs may still be queued: trust the config, not who has joined yet
    gpus = gpu_pool or bool(gpu_workers(client))
    jobs = [replace(j, keep_jpeg=keep_jpeg(j.keep_jpeg, gpus)) for j in jobs]
    register_worker_plugin(
        client,
        ModelPlugin(
            job0.model_bundle, job0.model_sha256, GPU_RESOURCE if gpus else None, job0.quantize
        ),
    )

    def submit(fn: Callable[..., Any], *args: Any, key: str, priority: int, **kw: Any) -> Future:
        return client.submit(
            fn,
            *args,
            key=f"{key}-{token}",
            priority=priority,
            pure=False,
            retries=spec.retries,
            **kw,
        )

    pending: dict[Future, tuple[str, SlideJob]] = {}
    slide_futures: dict[str, list[Future]] = {}
    for i, job in enumerate(jobs):
        # earlier slides first, so results arrive steadily rather than all at the end
        fut = submit(
            plan_or_refuse, job, key=f"plan-{job.slide_id}", priority=hooks.priority + len(jobs) - i
        )
        pending[fut] = ("plan", job)
        slide_futures[job.slide_id] = [fut]
    priority_of = {job.slide_id: hooks.priority + len(jobs) - i for i, job in enumerate(jobs)}
    try:
        _follow(client, pending, slide_futures, priority_of, spec, hooks, results, submit, gpus)
    except BaseException:
        # a shared cluster goes on: the stopped batch's tasks must not (its own cluster would
        # have closed with it)
        client.cancel([f for futures in slide_futures.values() for f in futures])
        raise


def _follow(
    client: Client,
    pending: dict[Future, tuple[str, SlideJob]],
    slide_futures: dict[str, list[Future]],
    priority_of: dict[str, int],
    spec: RunSpec,
    hooks: BatchHooks,
    results: list[SlideResult],
    submit: Callable[..., Future],
    gpus: bool,
) -> None:
    """Collect the slides' results as they arrive, submitting each planned slide's graph."""
    address = getattr(client.scheduler, "address", "")  # named when it is gone
    inference_resources = {GPU_RESOURCE: 1} if gpus else None

    watch = WorkerWatch(spec.worker_timeout_s)
    next_poll = time.monotonic()
    queue = as_completed(list(pending))
    while not queue.is_empty():
        if hooks.cancel is not None and hooks.cancel.is_set():
            raise BatchCancelledError("cancelled")
        done = _next_done(queue, POLL_S)
        if client.status != "running":  # its futures went with the connection
            raise SchedulerLostError(f"lost the connection to the scheduler {address}")
        now = time.monotonic()
        if now >= next_poll:
            next_poll = now + POLL_S
            watch = watch.observe(client.scheduler_info(n_workers=0)["n_workers"], now)
            check_pools(client)  # a batch system's pool that never started stops the batch
            if watch.expired(now):
                raise NoWorkersError(f"no workers for {watch.timeout_s:g} s")
        if done is None:
            continue
        stage, job = pending.pop(done)
        try:
            value = done.result()
        except Exception as err:  # a task raised: the slide fails, the batch goes on
            value = refusal_for(err)
        if isinstance(value, Refusal):
            result = _failure(job, value)
            client.cancel(slide_futures.pop(job.slide_id, []))
            _record_failure(job, result)
        else:
            if stage == "plan":
                graph = _submit_slide(submit, value, priority_of[job.slide_id], inference_resources)
                slide_futures[job.slide_id] = graph
                reduce_fut = graph[-1]
                pending[reduce_fut] = ("reduce", job)
                queue.add(reduce_fut)
                continue
            result = value
            slide_futures.pop(job.slide_id, None)
        results.append(result)
        _notify(hooks, result)
        log.info(
            "%s: %s%s",
            job.slide_id,
            result.status,
            f" ({result.error})" if result.error else "",
        )


def _next_done(queue: as_completed, timeout: float) -> Future | None:
    """The next finished future of `queue`, or None when none finishes within `timeout`.

    `as_completed` has no per-item timeout; this waits on the condition it notifies, as its own
    `__next__` does, so the batch can look at its workers while nothing finishes."""
    deadline = time.monotonic() + timeout
    while not queue.has_ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or queue.is_empty():
            return None
        with queue.thread_condition:
            queue.thread_condition.wait(timeout=min(remaining, 0.1))
    fut: Future = next(queue)
    return fut


def _submit_slide(
    submit: Callable[..., Future],
    plan: SlidePlan,
    priority: int,
    inference_resources: dict[str, int] | None,
) -> list[Future]:
    """Submit a planned slide's graph; the last future returned is the reduce task."""
    sid = plan.job.slide_id
    res = {"resources": inference_resources} if inference_resources else {}
    tiled, encoded = [], []
    for start, stop in plan.blocks:
        t = submit(tile_block, plan, start, stop, key=f"tile-{sid}-{start}", priority=priority)
        e = submit(
            encode_block,
            plan,
            start,
            stop,
            t,
            key=f"encode-{sid}-{start}",
            priority=priority,
            **res,
        )
        tiled.append(t)
        encoded.append(e)
    if plan.job.features_only:
        last = submit(
            finish_features, plan, tiled, encoded, key=f"features-{sid}", priority=priority
        )
        return [*tiled, *encoded, last]
    mil = submit(mil_slide, plan, encoded, key=f"mil-{sid}", priority=priority, **res)
    reduce = submit(reduce_slide, plan, mil, tiled, encoded, key=f"reduce-{sid}", priority=priority)
    return [*tiled, *encoded, mil, reduce]


def _failure(job: SlideJob, refusal: Refusal) -> SlideResult:
    """A failed or skipped result whose one-line error names the file."""
    message = refusal.error
    if job.path not in message:
        message = f"{job.path}: {message}"
    return SlideResult(
        slide_id=job.slide_id,
        path=job.path,
        status=refusal.status,
        error=message,
        provenance=job.provenance(),
    )


def _record_failure(job: SlideJob, result: SlideResult) -> None:
    """Replace the slide's folder by one holding only its failed/skipped result.json.

    Staged in a folder of its own: tasks of the slide that were already running when it failed
    may still write into its work folder (cancelling does not stop them). What they finish stays
    there as resumable work for the next run. A folder in place that slidemill did not build is
    left as it is: the failure is still in `results.csv`."""
    out = Path(job.out)
    staging = out / PARTIAL_DIR / f"{job.slide_id}.result-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    mark_slide(staging)
    write_result(staging, result)
    try:
        publish(out, job.slide_id, staging)
    except SlideFolderNotOursError:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # absent, or holds another run's work
        folder.rmdir()


def write_results_csv(
    out: Path, results: tuple[SlideResult, ...], class_names: tuple[str, ...]
) -> Path:
    """`results.csv`: slide_id, path, status, label, prob_<class>…, n_tiles, flags, error;
    `flags` holds the QC flags' codes separated by semicolons, empty when there are none."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        [
            "slide_id",
            "path",
            "status",
            "label",
            *[f"prob_{c}" for c in class_names],
            "n_tiles",
            "flags",
            "error",
        ]
    )
    for r in results:
        probs = [f"{p:.6f}" for p in r.probabilities] or [""] * len(class_names)
        writer.writerow(
            [
                r.slide_id,
                r.path,
                r.status,
                r.label or "",
                *probs,
                r.n_tiles,
                ";".join(r.flag_codes),
                r.error or "",
            ]
        )
    path = out / RESULTS_CSV
    write_atomic(path, buf.getvalue())
    return path
