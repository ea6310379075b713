"""Explain a run's slides: one task per slide on the cluster's workers that hold the model (the
same `ModelPlugin` and resources as the run's MIL step), results gathered as they finish. A slide
that cannot be explained fails alone, with one line."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from distributed import Client, as_completed
from pydantic import ValidationError

from slidemill.cluster import GPU_RESOURCE, connect, gpu_workers, register_worker_plugin
from slidemill.pipeline.errors import InvalidInputError, one_line
from slidemill.pipeline.explain._task import ExplainedSlide, ExplainJob, explain_slide
from slidemill.pipeline.graph import hold_output
from slidemill.schemas import AnyClusterConfig, SlidemillError, SlideResult
from slidemill.schemas.layout import PARTIAL_DIR, RESULT_JSON, SLIDE_STORE
from slidemill.workers import ModelPlugin, check_bundle, manifest_sha256, resolve_model_dir
from slidemill.workers.explain import ExplainSettings, choose_target

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExplainFailure:
    """A slide that could not be explained."""

    slide_id: str
    """Its folder's name."""
    error: str
    """One line naming the cause."""


@dataclass(frozen=True, slots=True)
class ExplainReport:
    """The outcome of `explain_run`."""

    explained: tuple[ExplainedSlide, ...]
    """Slides explained, in the run folder's order."""
    failed: tuple[ExplainFailure, ...]
    """Slides that could not be, each with its reason."""
    skipped: tuple[str, ...]
    """Slides with nothing to explain: failed or skipped by the run, or features only."""


def explain_run(
    run_dir: Path,
    model: Path,
    *,
    slides: Sequence[str] = (),
    settings: ExplainSettings | None = None,
    target: str | None = None,
    cluster: AnyClusterConfig | None = None,
    on_slide: Callable[[ExplainedSlide | ExplainFailure], None] | None = None,
) -> ExplainReport:
    """Explain the done slides of `run_dir` (those named in `slides`, else all) as `model`
    predicted them, writing each one's `explain.zarr` and its export files again.

    `model`: the bundle (or `slidemill train` folder) the run used; a slide the run made with
    another model fails, since its features and scores are not this model's. `target`: the class
    explained (default: the positive class of two, else each slide's predicted class).
    `cluster`: where to run (None: the environment's config, else a LocalCluster). Raises
    `InvalidInputError` for a folder that is no run, slides it does not hold or an unknown class,
    `ModelBundleError` for a bad bundle, `OutputLockedError` while a run writes the folder."""
    settings = settings or ExplainSettings()
    run_dir = run_dir.absolute()
    if not run_dir.is_dir():
        raise InvalidInputError(f"{run_dir}: not a folder; give a `slidemill run` output folder")
    bundle = resolve_model_dir(model).absolute()
    manifest = check_bundle(bundle)
    sha = manifest_sha256(manifest)
    if target is not None and target not in manifest.class_names:
        raise InvalidInputError(
            f"--target {target!r}: the model's classes are {', '.join(manifest.class_names)}"
        )
    folders = _slide_folders(run_dir, slides)
    jobs: list[ExplainJob] = []
    failed: list[ExplainFailure] = []
    skipped: list[str] = []
    for folder in folders:
        try:
            result = SlideResult.model_validate_json((folder / RESULT_JSON).read_bytes())
        except (OSError, ValidationError) as err:
            failed.append(ExplainFailure(folder.name, f"{folder / RESULT_JSON}: {one_line(err)}"))
            continue
        if result.status != "done" or not result.class_names or not (folder / SLIDE_STORE).is_dir():
            skipped.append(folder.name)
            continue
        if result.provenance.model_sha256 != sha:
            made_by = (result.provenance.model_sha256 or "?")[:12]
            failed.append(
                ExplainFailure(
                    folder.name,
                    f"{folder}: made by model {made_by}…, not {bundle} ({sha[:12]}…); "
                    "give the model the run used",
                )
            )
            continue
        index = choose_target(result.class_names, result.probabilities, target)
        qc = result.qc
        jobs.append(
            ExplainJob(
                slide_id=folder.name,
                folder=str(folder),
                model_bundle=str(bundle),
                model_sha256=sha,
                target=index,
                target_name=result.class_names[index],
                settings=settings,
                qc_exclude=qc is not None and qc.mode == "exclude" and qc.excluded_tiles > 0,
                threshold=manifest.threshold,
            )
        )
    explained: list[ExplainedSlide] = []
    if jobs:
        with hold_output(run_dir), connect(cluster) as client:
            _run_jobs(client, jobs, explained, failed, on_slide)
    order = {f.name: i for i, f in enumerate(folders)}
    return ExplainReport(
        tuple(sorted(explained, key=lambda e: order[e.slide_id])),
        tuple(sorted(failed, key=lambda f: order.get(f.slide_id, -1))),
        tuple(skipped),
    )


def _slide_folders(run_dir: Path, slides: Sequence[str]) -> list[Path]:
    """The run's slide folders (each with a result.json), or those named in `slides`."""
    found = sorted(
        p.parent for p in run_dir.glob(f"*/{RESULT_JSON}")
        if not p.parent.name.startswith(".") and p.parent.name != PARTIAL_DIR
    )  # fmt: skip
    if not found:
        raise InvalidInputError(f"{run_dir}: no slide results found; is it a run's output folder?")
    if not slides:
        return found
    by_name = {f.name: f for f in found}
    missing = [s for s in slides if s not in by_name]
    if missing:
        raise InvalidInputError(
            f"{run_dir} has no slide {', '.join(map(repr, missing))}; "
            f"its slides: {', '.join(sorted(by_name))}"
        )
    return [by_name[s] for s in dict.fromkeys(slides)]


def _run_jobs(
    client: Client,
    jobs: list[ExplainJob],
    explained: list[ExplainedSlide],
    failed: list[ExplainFailure],
    on_slide: Callable[[ExplainedSlide | ExplainFailure], None] | None,
) -> None:
    """One task per slide on the workers holding the model; each result or failure as it
    comes."""
    job0 = jobs[0]
    gpus = bool(gpu_workers(client))
    register_worker_plugin(
        client,
        ModelPlugin(job0.model_bundle, job0.model_sha256, GPU_RESOURCE if gpus else None),
    )
    token = uuid.uuid4().hex[:8]
    resources = {"resources": {GPU_RESOURCE: 1}} if gpus else {}
    futures = {
        client.submit(
            explain_slide, job, key=f"explain-{job.slide_id}-{token}", pure=False, **resources
        ): job
        for job in jobs
    }
    try:
        for future in as_completed(futures):
            job = futures[future]
            try:
                outcome: ExplainedSlide | ExplainFailure = future.result()
            except Exception as err:
                # one slide's failure is reported with its reason and the others go on; an
                # error that is neither ours nor the file system's is a bug: its traceback
                # is logged as well
                bug = not isinstance(err, SlidemillError | OSError)
                log.error("%s: %s", job.slide_id, one_line(err), exc_info=err if bug else None)
                outcome = ExplainFailure(job.slide_id, f"{job.folder}: {one_line(err)}")
            if isinstance(outcome, ExplainedSlide):
                explained.append(outcome)
            else:
                failed.append(outcome)
            if on_slide is not None:
                on_slide(outcome)
    except BaseException:
        client.cancel(list(futures))
        raise
