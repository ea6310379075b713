"""Batches that share an output folder wait for each other, against a real service running
several batches at once: every batch submitted to one folder ends `done`, and two schedules that
write the same `{date}` folder both get their slides run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import roots_for, start_service

FINISHED = ("done", "stopped", "cancelled")


def _ended(batch: dict[str, Any]) -> bool:
    return batch["status"] in FINISHED


def test_batches_and_schedules_into_one_folder_queue_and_all_end_done(
    tmp_path_factory: pytest.TempPathFactory, slides_dir: Path, tiny_bundle: Path
) -> None:
    base = tmp_path_factory.getbasetemp()
    work = tmp_path_factory.mktemp("shared")
    service = start_service(work / "state", roots_for(base), "--max-running", "3")
    try:
        out = work / "out"
        body = {"slides": [str(slides_dir)], "model": str(tiny_bundle), "out": str(out)}
        with service.client() as c:
            ids = [c.post("/api/batches", json=body).json()["id"] for _ in range(4)]
        batches = [service.wait_for(i, _ended) for i in ids]
        assert [b["status"] for b in batches] == ["done"] * 4, [b["error"] for b in batches]
        assert all(b["n_done"] == 2 for b in batches)

        # two schedules, one folder per date: both runs happen, one after the other
        for name, slide in (("left", "synth-svs.svs"), ("right", "synth-tiff.tiff")):
            inbox = work / name
            inbox.mkdir()
            (inbox / f"{name}-{slide}").write_bytes((slides_dir / slide).read_bytes())
            os.utime(inbox / f"{name}-{slide}", (1_700_000_000,) * 2)
            schedule = {"name": name, "cron": "0 22 * * *", "inbox": str(inbox),
                        "model": str(tiny_bundle), "out": f"{work}/nightly/{{date}}"}  # fmt: skip
            with service.client() as c:
                assert c.post("/api/schedules", json=schedule).status_code == 201
        with service.client() as c:
            runs = [
                c.post(f"/api/schedules/{n}/run-now").json()["batch"] for n in ("left", "right")
            ]
        ended = [service.wait_for(r, _ended) for r in runs]
        assert [(b["status"], b["n_done"]) for b in ended] == [("done", 1)] * 2, ended
        assert ended[0]["out"] == ended[1]["out"]
    finally:
        service.stop()
