"""The service's clients (`submit`, `status`, `schedule list`) against canned replies built from
the service's own response models: the request carries every run option, replies are read
through the models, and `submit --wait --fail-on-flags` exits as `run --fail-on-flags` does."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from slidemill.cli import EXIT_FAILED, EXIT_USAGE, app
from slidemill.schemas import FlagCode, RunOptions
from slidemill.service import BatchList, BatchView, SlideView

runner = CliRunner()
SERVER = "http://service.test"
NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def _slide(out: Path, slide_id: str, flags: tuple[str, ...]) -> SlideView:
    """A done slide as the service reports it, with the QC flag codes it recorded."""
    return SlideView(
        slide_id=slide_id, path=f"/slides/{slide_id}.svs", state="done", label="b",
        class_names=["a", "b"], probabilities=[0.3, 0.7], n_tiles=4, error=None, timings={},
        output=str(out / slide_id), flags=list(flags), updated_at=NOW,
    )  # fmt: skip


def _batch(out: Path, slides: list[SlideView]) -> BatchView:
    return BatchView(
        id="b1", origin="api", status="done", priority=0, out=str(out), created_at=NOW,
        updated_at=NOW, started_at=NOW, finished_at=NOW, error=None, n_slides=len(slides),
        n_done=len(slides), n_failed=0, n_skipped=0, n_pending=0,
        results_csv=str(out / "results.csv"), viewer="/viewer/runs/b1/", slides=slides,
    )  # fmt: skip


Replies = dict[tuple[str, str], str]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Callable[[Replies], list[tuple[str, str, Any]]]:
    """Answer the clients' requests from canned bodies by (method, path); the requests made."""

    def serve(replies: Replies) -> list[tuple[str, str, Any]]:
        requests: list[tuple[str, str, Any]] = []

        def request(method: str, url: str, json: Any = None, **_: Any) -> httpx.Response:
            path = url.removeprefix(SERVER)
            requests.append((method, path, json))
            body = replies.get((method, path))
            status = 404 if body is None else 200
            return httpx.Response(
                status, content=body or '{"detail": "no such route"}',
                request=httpx.Request(method, url),
            )  # fmt: skip

        monkeypatch.setattr(httpx, "request", request)
        return requests

    return serve


def _submit(tmp_path: Path, *extra: str) -> Any:
    args = ["submit", str(tmp_path / "a.svs"), "--model", str(tmp_path / "model"), "--out",
            str(tmp_path / "out"), "--server", SERVER, *extra]  # fmt: skip
    return runner.invoke(app, args, env={"COLUMNS": "200"})


def test_submit_sends_every_run_option(
    sent: Callable[[Replies], list[tuple[str, str, Any]]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    requests = sent({("POST", "/api/batches"): _batch(out, []).model_dump_json()})
    result = _submit(tmp_path, "--qc", "exclude", "--jpeg-decode", "cpu", "--mpp", "0.25")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "b1"
    ((method, path, body),) = requests
    assert (method, path) == ("POST", "/api/batches")
    assert set(body) == {"slides", "model", "out", *RunOptions.model_fields}
    assert (body["qc"], body["jpeg_decode"], body["fallback_mpp"]) == ("exclude", "cpu", 0.25)


@pytest.mark.parametrize("fail_on_flags", [True, False])
def test_submit_wait_fails_on_a_flagged_slide_with_fail_on_flags(
    sent: Callable[[Replies], list[tuple[str, str, Any]]], tmp_path: Path, fail_on_flags: bool
) -> None:
    out = tmp_path / "out"
    batch = _batch(out, [_slide(out, "clean", ()), _slide(out, "inked", (FlagCode.PEN_MARKS,))])
    sent({("POST", "/api/batches"): batch.model_dump_json(),
          ("GET", "/api/batches/b1"): batch.model_dump_json()})  # fmt: skip
    result = _submit(tmp_path, "--wait", *(["--fail-on-flags"] if fail_on_flags else []))
    if fail_on_flags:
        assert result.exit_code == EXIT_FAILED, result.output
        assert "1 slide(s) flagged by QC" in result.output
    else:
        assert result.exit_code == 0, result.output


def test_fail_on_flags_without_wait_is_a_usage_error_and_sends_nothing(
    sent: Callable[[Replies], list[tuple[str, str, Any]]], tmp_path: Path
) -> None:
    requests = sent({})
    result = _submit(tmp_path, "--fail-on-flags")
    assert result.exit_code == EXIT_USAGE and "--fail-on-flags needs --wait" in result.output
    assert requests == []


def test_a_reply_that_is_not_the_contract_is_one_line_and_exit_1(
    sent: Callable[[Replies], list[tuple[str, str, Any]]], tmp_path: Path
) -> None:
    sent({("POST", "/api/batches"): json.dumps({"id": "b1"})})
    result = _submit(tmp_path)
    assert result.exit_code == EXIT_FAILED, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "the reply is not a BatchView" in lines[0], result.output


def test_status_lists_the_batches_from_the_reply(
    sent: Callable[[Replies], list[tuple[str, str, Any]]], tmp_path: Path
) -> None:
    batch = _batch(tmp_path, []).model_copy(update={"id": "b7", "n_slides": 5})
    sent({("GET", "/api/batches?limit=20"): BatchList(batches=[batch]).model_dump_json()})
    result = runner.invoke(app, ["status", "--server", SERVER], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "b7" in line)
    assert "2026-12-07T03:00:00" in row and " 5 " in row
