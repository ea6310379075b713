"""The lab service end to end: batches over real HTTP on a real uvicorn process with a real
SQLite ledger; the ledger agrees with results.csv; bad requests are refused with the right
status and touch nothing; a SIGKILLed service resumes its batch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from slidemill.pipeline.synth import write_slide
from tests.helpers import synthetic
from tests.service.conftest import TOKEN, Service, roots_for, start_service

FINISHED = ("done", "stopped", "cancelled")


def _cli(*args: str | Path, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SLIDEMILL_TOKEN"}
    if token:
        env["SLIDEMILL_TOKEN"] = token
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "slidemill.cli", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


def _results_csv(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return {row["slide_id"]: row for row in csv.DictReader(fh)}


def _ended(batch: dict[str, Any]) -> bool:
    return batch["status"] in FINISHED


def test_submit_runs_good_and_bad_slides_and_the_ledger_matches_results_csv(
    service: Service,
    slides_dir: Path,
    bad_dir: dict[str, Path],
    tiny_bundle: Path,
    tmp_path: Path,
    sample_slide: Path,
) -> None:
    out = tmp_path / "out"
    bad = [bad_dir["empty"], bad_dir["truncated"], bad_dir["png"]]
    proc = _cli(
        "submit", slides_dir, sample_slide, *bad, "--model", tiny_bundle, "--out", out,
        "--server", service.url, "--wait",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]  # the bad slides failed, as `run` exits
    batch_id = proc.stdout.strip().splitlines()[0]
    batch = service.get(f"/api/batches/{batch_id}")
    assert batch["status"] == "done" and batch["n_pending"] == 0
    assert (batch["n_done"], batch["n_failed"]) == (3, 3)
    rows = _results_csv(out)
    assert {s["slide_id"] for s in batch["slides"]} == set(rows)
    for s in batch["slides"]:
        row = rows[s["slide_id"]]
        assert s["state"] == row["status"] and (s["error"] or "") == row["error"]
        assert s["n_tiles"] == int(row["n_tiles"]) and (s["label"] or "") == row["label"]
        assert ";".join(s["flags"]) == row["flags"]  # QC flags reach the API, as in the table
        result = json.loads((Path(s["output"]) / "result.json").read_text())
        assert result["status"] == s["state"]
        if s["state"] == "done":
            assert s["probabilities"] == pytest.approx(
                [float(row[f"prob_{c}"]) for c in s["class_names"]], abs=1e-6
            )
    assert any("truncated or corrupt" in (s["error"] or "") for s in batch["slides"])

    # listing and the CLI's view of it
    listed = service.get("/api/batches?status=done")["batches"]
    assert batch_id in {b["id"] for b in listed}
    status = _cli("status", batch_id, "--server", service.url)
    assert status.returncode == 0 and "truncated" in status.stderr

    # retrying takes only the failed slides, as a new batch
    with service.client() as c:
        retried = c.post(f"/api/batches/{batch_id}/retry")
    assert retried.status_code == 202, retried.text
    again = service.wait_for(retried.json()["id"], _ended)
    assert again["origin"] == f"retry:{batch_id}" and again["n_slides"] == 3
    assert again["n_failed"] == 3

    # the batch's results in the viewer, mounted behind the same token
    assert batch["viewer"] == f"/viewer/runs/{batch_id}/"
    with service.client() as c:
        page = c.get(batch["viewer"])
        table = c.get(f"/viewer/api/runs/{batch_id}").json()
        info = c.get(f"/viewer/api/runs/{batch_id}/slides/{sample_slide.stem}")
    assert page.status_code == 200 and "run.js" in page.text
    done = {s["slide_id"] for s in batch["slides"] if s["state"] == "done"}
    assert {s["slide_id"] for s in table["slides"] if s["status"] == "done"} == done
    assert info.status_code == 200 and info.json()["heatmap"]["layers"][-1] == "attention"
    assert httpx.get(service.url + batch["viewer"]).status_code == 401


def test_bad_requests_are_refused_and_touch_nothing(
    service: Service, slides_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    good = {"slides": [str(slides_dir)], "model": str(tiny_bundle), "out": str(out)}
    outside = Path("/etc")
    link = tmp_path / "escape"
    link.symlink_to(outside)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**good, "slides": [str(slides_dir / ".." / ".." / ".." / "..")]}, 403, "allowed roots"),
        ({**good, "slides": [str(outside / "hostname")]}, 403, "allowed roots"),
        ({**good, "slides": [str(link)]}, 403, "allowed roots"),
        ({**good, "out": "relative/out"}, 403, "absolute path"),
        ({**good, "model": str(outside)}, 403, "allowed roots"),
        ({**good, "slides": []}, 422, "slides"),
        ({**good, "retries": 99}, 422, "retries"),
        ({**good, "unexpected": 1}, 422, "unexpected"),
        ({**good, "model": str(slides_dir)}, 422, "not a model bundle"),
    ]
    with service.client() as c:
        for body, status, phrase in cases:
            response = c.post("/api/batches", json=body)
            assert response.status_code == status, (body, response.text)
            problem = response.json()
            assert response.headers["content-type"].startswith("application/problem+json")
            assert phrase in problem["detail"] and "\n" not in problem["detail"], problem
        malformed = c.post(
            "/api/batches", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 422 and "JSON" in malformed.json()["detail"]
        huge = c.post("/api/batches", content=b"x" * (2 << 20))
        assert huge.status_code == 413
        assert c.get("/api/batches/nope").status_code == 404
    for token in (None, "wrong"):
        with service.client(token) as c:
            refused = c.post("/api/batches", json=good)
            assert refused.status_code == 401 and "token" in refused.json()["detail"]
    assert not out.exists()  # nothing was written for any refused request


def test_off_loopback_without_a_token_the_service_refuses_to_start(tmp_path: Path) -> None:
    proc = _cli(
        "serve", "--host", "0.0.0.0", "--port", "0", "--allow-root", tmp_path,
        "--state", tmp_path / "state", token=None,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "needs a token" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()


def test_a_cancelled_batch_stops_and_says_so(
    service: Service, slides_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    body = {"slides": [str(slides_dir)], "model": str(tiny_bundle), "out": str(tmp_path / "o")}
    with service.client() as c:
        batch_id = c.post("/api/batches", json=body).json()["id"]
        cancelled = c.post(f"/api/batches/{batch_id}/cancel")
        assert cancelled.status_code == 202
    batch = service.wait_for(batch_id, _ended)
    assert batch["status"] == "cancelled"


def test_a_service_killed_mid_batch_resumes_it_with_nothing_lost_or_doubled(
    tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path
) -> None:
    base = tmp_path_factory.getbasetemp()
    slides = tmp_path_factory.mktemp("many")
    for i in range(6):
        write_slide(slides / f"s{i}.svs", synthetic(), kind="svs")
    out = tmp_path_factory.mktemp("killed") / "out"
    state = tmp_path_factory.mktemp("killed-state")
    first = start_service(state, roots_for(base))
    try:
        with first.client() as c:
            body = {"slides": [str(slides)], "model": str(tiny_bundle), "out": str(out)}
            batch_id = c.post("/api/batches", json=body).json()["id"]
        partway = first.wait_for(batch_id, lambda b: b["n_done"] >= 1 or _ended(b))
        assert partway["n_done"] < 6, "the batch finished before the kill: make it longer"
        first.kill()
    finally:
        first.stop()
    done_before = {s["slide_id"] for s in partway["slides"] if s["state"] == "done"}
    stamps = {sid: (out / sid / "result.json").stat().st_mtime_ns for sid in done_before}

    second = start_service(state, roots_for(base))
    try:
        batch = second.wait_for(batch_id, _ended)
    finally:
        second.stop()
    assert batch["status"] == "done", batch
    assert (batch["n_slides"], batch["n_done"], batch["n_failed"]) == (6, 6, 0)
    rows = _results_csv(out)
    assert sorted(rows) == sorted(s["slide_id"] for s in batch["slides"])
    assert all(r["status"] == "done" for r in rows.values())
    published = sorted(p.name for p in out.iterdir() if (p / "result.json").is_file())
    assert published == sorted(rows)
    # slides finished before the kill were kept, not done again
    for sid, stamp in stamps.items():
        assert (out / sid / "result.json").stat().st_mtime_ns == stamp
    assert not (out / ".partial").exists() and not (out / ".slidemill.lock").exists()


def test_schedules_over_http_and_the_cli(
    service: Service, slides_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("synth-svs.svs", "synth-tiff.tiff"):
        (inbox / name).write_bytes((slides_dir / name).read_bytes())
        os.utime(inbox / name, (1_700_000_000, 1_700_000_000))  # settled long ago
    added = _cli(
        "schedule", "add", "nightly", "--cron", "0 22 * * *", "--tz", "Europe/Berlin",
        "--inbox", inbox, "--model", tiny_bundle, "--out", f"{tmp_path}/out/{{date}}",
        "--server", service.url,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = service.get("/api/schedules")["schedules"]
    assert [s["name"] for s in listed] == ["nightly"] and listed[0]["next_window"]
    with service.client() as c:
        assert c.post("/api/schedules", json={**_schedule_body(inbox, tiny_bundle, tmp_path),
                      "inbox": "/etc"}).status_code == 403  # fmt: skip
        assert c.post("/api/schedules", json={**_schedule_body(inbox, tiny_bundle, tmp_path),
                      "cron": "every night"}).status_code == 422  # fmt: skip
        duplicate = c.post("/api/schedules", json=_schedule_body(inbox, tiny_bundle, tmp_path))
        assert duplicate.status_code == 409
    run = _cli("schedule", "run-now", "nightly", "--server", service.url)
    assert run.returncode == 0, run.stderr
    batch = service.wait_for(run.stdout.strip(), _ended)
    assert batch["origin"] == "schedule:nightly" and batch["n_done"] == 2
    nothing = _cli("schedule", "run-now", "nightly", "--server", service.url)
    assert "nothing new" in nothing.stderr  # each inbox file is taken once
    assert _cli("schedule", "pause", "nightly", "--server", service.url).returncode == 0
    assert service.get("/api/schedules")["schedules"][0]["paused"] is True
    assert _cli("schedule", "remove", "nightly", "--server", service.url).returncode == 0
    assert service.get("/api/schedules")["schedules"] == []


def _schedule_body(inbox: Path, model: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "name": "nightly", "cron": "0 22 * * *", "tz": "Europe/Berlin", "inbox": str(inbox),
        "model": str(model), "out": f"{tmp_path}/out/{{date}}",
    }  # fmt: skip
