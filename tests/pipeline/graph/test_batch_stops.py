"""What stops a batch, without a cluster: the worker watch (pure), a bug or Ctrl-C in the client
once the cluster is up, a corrupt bundle and a locked folder before it starts."""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from slidemill.pipeline.errors import OutputLockedError
from slidemill.pipeline.graph import WorkerWatch, hold_output, run_batch
from slidemill.schemas import Provenance, RunSpec, SlideResult
from slidemill.schemas.layout import LOCK_FILE
from slidemill.workers import ModelBundleError, check_bundle


def test_the_watch_counts_only_time_with_no_workers_after_one_was_seen() -> None:
    watch = WorkerWatch(timeout_s=10)
    watch = watch.observe(0, now=0)  # still starting: not counted
    assert not watch.expired(now=1000)
    watch = watch.observe(2, now=1000).observe(0, now=1001).observe(0, now=1005)
    assert watch.empty_since == 1001
    assert not watch.expired(now=1010.5) and watch.expired(now=1011)
    watch = watch.observe(1, now=1011)  # one came back: the clock stops
    assert not watch.expired(now=5000)
    assert watch.observe(0, now=5000).expired(now=5010)


@pytest.fixture()
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`connect` yields a stand-in client and records the call; `_run_on` is the test's."""
    calls: list[str] = []

    class Client:
        dashboard_link = "http://stand-in"

    @contextmanager
    def connect(config: object) -> Iterator[Client]:
        calls.append("connect")
        yield Client()

    monkeypatch.setattr("slidemill.pipeline.graph._batch.connect", connect)
    return calls


def spec(slides_dir: Path, model: Path, out: Path) -> RunSpec:
    return RunSpec(slides=(slides_dir,), model=model, out=out)


def one_done_then(
    monkeypatch: pytest.MonkeyPatch, err: BaseException
) -> None:  # the first slide ends (skipped), then `err` stops the batch
    def run_on(
        client: object, jobs: list, spec: RunSpec, gpu: bool, results: list, hooks: object
    ) -> None:
        job = jobs[0]
        results.append(
            SlideResult(
                slide_id=job.slide_id,
                path=job.path,
                status="skipped",
                error=f"{job.path}: no tissue",
                provenance=Provenance(slidemill_version="test"),
            )
        )
        raise err

    monkeypatch.setattr("slidemill.pipeline.graph._batch._run_on", run_on)


def rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open(newline="") as fh:
        return {row["slide_id"]: row for row in csv.DictReader(fh)}


def test_a_bug_in_the_client_still_writes_every_slide_and_says_what_went_wrong(
    no_cluster: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    slides_dir: Path,
    tiny_bundle: Path,
) -> None:
    one_done_then(monkeypatch, KeyError("n_workers"))
    out = tmp_path / "out"
    report = run_batch(spec(slides_dir, tiny_bundle, out))
    reason = "the batch stopped: KeyError: 'n_workers'"
    assert report.stopped == reason
    table = rows(out)
    assert [table[s]["status"] for s in ("synth-svs", "synth-tiff")] == ["skipped", "failed"]
    failed = next(r for r in report.results if r.status == "failed")
    assert failed.error == table[failed.slide_id]["error"] == f"{failed.path}: {reason}"
    assert (out / failed.slide_id / "result.json").is_file()
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith(reason)
    assert record.exc_info is not None  # a bug keeps its traceback, after the one line
    assert not (out / LOCK_FILE).exists()


def test_ctrl_c_writes_the_table_then_stops(
    no_cluster: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    slides_dir: Path,
    tiny_bundle: Path,
) -> None:
    one_done_then(monkeypatch, KeyboardInterrupt())
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(spec(slides_dir, tiny_bundle, out))
    assert rows(out)["synth-tiff"]["error"].endswith(": interrupted")
    assert not (out / LOCK_FILE).exists()


def test_a_corrupt_bundle_stops_the_run_before_the_cluster(
    no_cluster: list[str], tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    assert check_bundle(bundle).weights_sha256
    weights = bundle / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelBundleError, match=r"weights\.safetensors: sha256 .*\(corrupt"):
        check_bundle(bundle)
    with pytest.raises(ModelBundleError, match=r"weights\.safetensors: sha256"):
        run_batch(spec(slides_dir, bundle, tmp_path / "out"))
    assert no_cluster == [] and not (tmp_path / "out").exists()


def test_a_locked_folder_stops_the_run_before_the_cluster(
    no_cluster: list[str], tmp_path: Path, slides_dir: Path, tiny_bundle: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with hold_output(out), pytest.raises(OutputLockedError, match="in use by another"):
        run_batch(spec(slides_dir, tiny_bundle, out))
    assert no_cluster == [] and not (out / "results.csv").exists()
