"""Schedules that would break `slidemill serve`, against a real service: values out of bounds
are refused at creation naming the field; a schedule stored before the bounds existed and one
whose inbox is gone are reported on themselves while a good schedule still fires at the same
tick; run-now on a failing schedule answers a 4xx problem with one line."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from slidemill.service.ledger import Ledger
from slidemill.service.schedules import CatchUp, Schedule
from tests.service.conftest import Service, roots_for, start_service

YESTERDAY = datetime.now(UTC) - timedelta(days=1)
FINISHED = ("done", "stopped", "cancelled")


def _schedule(name: str, inbox: Path, model: Path, out: Path) -> Schedule:
    return Schedule(
        name=name, cron="* * * * *", tz="UTC", inbox=str(inbox), model=str(model),
        out_template=str(out / name / "{date}-{time}"), catch_up=CatchUp.LATEST, settle_s=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, tiny_bundle: Path
) -> Iterator[tuple[Service, Path]]:
    """A service started on a ledger holding, since yesterday, a schedule stored before the
    bounds (settle_s 1e308), one whose inbox has been removed, and a good one; each is due."""
    base = tmp_path_factory.getbasetemp()
    work = tmp_path_factory.mktemp("hostile")
    state = work / "state"
    url = f"sqlite:///{state / 'ledger.sqlite'}"
    with Ledger.open(url, clock=lambda: YESTERDAY) as ledger:
        for name in ("a-unbounded", "b-gone", "c-good"):
            inbox = work / name
            inbox.mkdir()
            shutil.copy(slides_dir / "synth-svs.svs", inbox / f"{name}.svs")
            os.utime(inbox / f"{name}.svs", (1_700_000_000,) * 2)
            ledger.add_schedule(_schedule(name, inbox, tiny_bundle, work / "out"))
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE schedules SET settle_s = 1e308 WHERE name = 'a-unbounded'"))
    engine.dispose()
    shutil.rmtree(work / "b-gone")
    service = start_service(state, roots_for(base))
    yield service, work
    service.stop()


def _schedules(service: Service) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in service.get("/api/schedules")["schedules"]}


def test_a_good_schedule_fires_while_the_ones_before_it_fail(
    hostile: tuple[Service, Path],
) -> None:
    service, _ = hostile
    batches: list[dict[str, Any]] = []

    def fired() -> bool:
        nonlocal batches
        batches = [b for b in service.get("/api/batches")["batches"]
                   if b["origin"] == "schedule:c-good"]  # fmt: skip
        return bool(batches) and _schedules(service)["b-gone"]["last_error"] is not None

    _poll(service, fired, "the good schedule fired and the gone one recorded its error")
    batch = service.wait_for(batches[0]["id"], lambda b: b["status"] in FINISHED)
    assert batch["status"] == "done" and batch["n_done"] == 1
    listed = _schedules(service)
    assert "settle_s" in listed["a-unbounded"]["invalid"]
    assert listed["a-unbounded"]["next_window"] is None
    assert "not a folder" in listed["b-gone"]["last_error"] and listed["b-gone"]["last_error_at"]
    assert listed["c-good"]["invalid"] is None and listed["c-good"]["last_error"] is None


def test_run_now_on_a_failing_schedule_is_a_4xx_with_one_line(
    hostile: tuple[Service, Path],
) -> None:
    service, _ = hostile
    with service.client() as c:
        for name, phrase in (("a-unbounded", "settle_s"), ("b-gone", "not a folder")):
            response = c.post(f"/api/schedules/{name}/run-now")
            assert 400 <= response.status_code < 500, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            detail = response.json()["detail"]
            assert phrase in detail and "\n" not in detail
        assert c.post("/api/schedules/nope/run-now").status_code == 404


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"settle_s": 1e308}, "settle_s"),
        ({"settle_s": 86_401}, "settle_s"),
        ({"max_attempts": 1000}, "max_attempts"),
        ({"options": {"retries": 99}}, "retries"),
        ({"options": {"batch_size": 0}}, "batch_size"),
    ],
)
def test_schedules_out_of_bounds_are_refused_naming_the_field(
    hostile: tuple[Service, Path], tiny_bundle: Path, changes: dict[str, Any], field: str
) -> None:
    service, work = hostile
    body = {"name": "late", "cron": "0 22 * * *", "inbox": str(work / "c-good"),
            "model": str(tiny_bundle), "out": str(work / "out" / "{date}"), **changes}  # fmt: skip
    with service.client() as c:
        response = c.post("/api/schedules", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert field in detail and "\n" not in detail
    assert "late" not in _schedules(service)


def _poll(service: Service, check: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert service.proc.poll() is None, service.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)
