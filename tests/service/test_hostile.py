"""The service as a hostile or careless client would use it, against a real `slidemill serve` on
loopback: folders it did not make are never replaced, nothing listens beyond loopback, a slide
swapped for a link after submission is not read, and odd requests are a 4xx naming the field,
never a 500."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slidemill.schemas.layout import RESULT_JSON, RUN_MARK
from slidemill.service.ledger import Ledger
from tests.schemas.bounds import outside_bounds
from tests.service.conftest import Service, start_service

ENDED = ("done", "stopped", "cancelled")


def _ended(batch: dict[str, Any]) -> bool:
    return batch["status"] in ENDED


def _problem(response: httpx.Response, status: int, phrase: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    assert phrase in detail and "\n" not in detail, detail


def test_a_batch_never_replaces_a_folder_slidemill_did_not_make(
    service: Service, sample_slide: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    victims = tmp_path / "victims"
    (victims / "precious").mkdir(parents=True)
    (victims / "precious" / "notes.txt").write_text("a lab's own file")
    missing = tmp_path / "slides" / "x" / "precious.svs"
    body = {"slides": [str(missing)], "model": str(tiny_bundle), "out": str(victims)}
    with service.client() as c:
        # a folder of someone else's files is refused at once
        _problem(c.post("/api/batches", json=body), 422, "did not write")
        # an output folder slidemill made earlier may hold a folder someone put there since:
        # a slide named like it (a missing one, or one named like a model bundle) fails alone
        out = tmp_path / "shared-out"
        out.mkdir()
        (out / RUN_MARK).write_text("1\n")
        shutil.copytree(victims / "precious", out / "precious")
        shutil.copytree(tiny_bundle, out / "bundle")
        slide = tmp_path / "in" / "bundle.svs"
        slide.parent.mkdir()
        shutil.copy(sample_slide, slide)
        body = {"slides": [str(missing), str(slide)], "model": str(tiny_bundle), "out": str(out)}
        response = c.post("/api/batches", json=body)
        assert response.status_code == 202, response.text
        batch = service.wait_for(response.json()["id"], _ended)
    assert batch["status"] == "done" and batch["n_failed"] == 2, batch
    errors = {s["slide_id"]: s["error"] for s in batch["slides"]}
    assert "not written by slidemill" in errors["bundle"], errors
    assert (out / "precious" / "notes.txt").read_text() == "a lab's own file"
    assert sorted(p.name for p in (out / "precious").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in (out / "bundle").iterdir()) == sorted(
        p.name for p in tiny_bundle.iterdir()
    )
    assert (victims / "precious" / "notes.txt").is_file()


def _listening(root: psutil.Process) -> set[tuple[str, int]]:
    """The TCP addresses `root` and its descendants listen on now."""
    found: set[tuple[str, int]] = set()
    try:
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for proc in family:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def test_serve_and_run_listen_on_loopback_only(
    service: Service, sample_slide: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    served = _listening(psutil.Process(service.proc.pid))
    # the API, the embedded scheduler, its dashboard, a worker and its nanny
    assert len(served) >= 4, served
    assert all(_loopback(ip) for ip, _ in served), served
    args = [sys.executable, "-m", "slidemill.cli", "run", str(sample_slide), "--model",
            str(tiny_bundle), "--out", str(tmp_path / "out"), "--workers", "1",
            "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[tuple[str, int]] = set()
    while proc.poll() is None:  # sampled for as long as it runs
        seen |= _listening(psutil.Process(proc.pid))
        time.sleep(0.05)
    output = proc.communicate()[0]
    assert proc.returncode == 0, output[-3000:]
    dashboard = next(line for line in output.splitlines() if line.startswith("dashboard:"))
    assert "127.0.0.1" in dashboard
    assert len(seen) >= 3, (seen, output[-2000:])  # scheduler, dashboard, worker at least
    assert all(_loopback(ip) for ip, _ in seen), seen


def test_a_slide_swapped_for_a_link_after_submission_is_not_read(
    sample_slide: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    root, outside, state = tmp_path / "root", tmp_path / "outside", tmp_path / "state"
    for folder in (root, outside, state):
        folder.mkdir()
    secret = outside / "secret.svs"
    shutil.copy(sample_slide, secret)
    slide = root / "good.svs"
    shutil.copy(sample_slide, slide)
    model = root / "model"
    shutil.copytree(tiny_bundle, model)
    out = root / "out"
    # queued as the API queues it, after every submission check passed
    ledger = Ledger.open(f"sqlite:///{state / 'ledger.sqlite'}")
    try:
        request = {"slides": [str(slide)], "model": str(model), "out": str(out)}
        batch_id = ledger.create_batch(
            request=request, out=str(out), slides=[("good", str(slide))]
        ).id
    finally:
        ledger.close()
    slide.unlink()
    slide.symlink_to(secret)  # swapped while the batch waited
    service = start_service(state, (root,))
    try:
        batch = service.wait_for(batch_id, _ended)
    finally:
        service.stop()
    (only,) = batch["slides"]
    assert only["state"] == "failed" and "outside the allowed roots" in only["error"], only
    result = json.loads((out / "good" / RESULT_JSON).read_text())
    assert result["file_sha256"] is None and result["status"] == "failed"
    assert str(outside) not in only["error"]  # where the link leads is not told


def test_odd_requests_are_refused_with_a_line_naming_the_field(
    service: Service, slides_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    good = {"slides": [str(slides_dir)], "model": str(tiny_bundle), "out": str(out)}
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    long = str(tmp_path) + ("/" + "d" * 200) * 25
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "slides": [f"{slides_dir}\x00/x.svs"]}, "slides.0: Value error, contains a"),
        ({**good, "out": str(out) + "\x00"}, "out: Value error, contains a NUL"),
        ({**good, "model": long}, "model: Value error, is longer than the limit"),
        ({**good, "out": str(tmp_path / ("n" * 300))}, "out: Value error, has a name longer"),
        ({**good, "out": str(a_file)}, "exists and is not a folder"),
        ({**good, "tiles_per_task": 10**9}, "tiles_per_task"),
        ({**good, "overlap_px": 10**9}, "overlap_px"),
        ({**good, "overlap_px": 64}, "64-px tiles"),  # as large as the model's tiles
        ({**good, "batch_size": 10**12}, "batch_size"),
        ({**good, "worker_timeout_s": 1e300}, "worker_timeout_s"),
    ]  # fmt: skip
    # each bound RunOptions declares, just outside (derived, so a new bound is checked here too)
    cases += [({**good, field: value}, field) for field, value in outside_bounds()]
    with service.client() as c:
        for body, phrase in cases:
            _problem(c.post("/api/batches", json=body), 422, phrase)
        for field in ("fallback_mpp", "worker_timeout_s", "min_tissue_fraction"):
            for token in ("Infinity", "NaN", "-Infinity"):
                raw = json.dumps(good)[:-1] + f', "{field}": {token}}}'
                response = c.post(
                    "/api/batches", content=raw, headers={"content-type": "application/json"}
                )
                _problem(response, 422, field)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must still hold
            for _ in range(40):
                yield b" " * 65536

        _problem(c.post("/api/batches", content=chunks()), 413, "over")
        assert c.get("/api/health").status_code == 200
    assert not out.exists()


# -- generated requests --------------------------------------------------------------------

_ODD_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40
) | st.sampled_from(["\x00", "/\x00", "..", "/" + "a" * 5000, "/" + "b" * 300, "", "~", "\\"])
_NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["Infinity", "-Infinity", "NaN", "1e999"]).map(lambda t: _Raw(t)),
)
_VALUES = st.one_of(
    _NUMBERS, _ODD_TEXT, st.booleans(), st.none(), st.lists(st.integers(), max_size=3)
)
_FIELDS = st.sampled_from(
    ["fallback_mpp", "overlap_px", "min_tissue_fraction", "tissue_method", "tiles_per_task",
     "batch_size", "retries", "force", "keep_tiles", "keep_jpeg", "jpeg_decode",
     "worker_timeout_s", "qc", "unknown"]
)  # fmt: skip


class _Raw:
    """A JSON token Python's encoder would not write (Infinity, NaN, 1e999)."""

    def __init__(self, token: str) -> None:
        self.token = token


def _encode(value: Any) -> str:
    if isinstance(value, _Raw):
        return value.token
    return json.dumps(value)


def _body(fields: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {_encode(v)}" for k, v in fields.items()) + "}"


@pytest.fixture(scope="module")
def fuzz_root(service: Service) -> Path:
    return service.roots[0]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    slide=_ODD_TEXT,
    out=_ODD_TEXT,
    model_ok=st.booleans(),
    options=st.dictionaries(_FIELDS, _VALUES, max_size=4),
    route=st.sampled_from(["/api/batches", "/api/schedules"]),
)
def test_generated_requests_get_a_2xx_or_a_problem_never_a_500(
    service: Service,
    tiny_bundle: Path,
    fuzz_root: Path,
    slide: str,
    out: str,
    model_ok: bool,
    options: dict[str, Any],
    route: str,
) -> None:
    model = str(tiny_bundle) if model_ok else str(fuzz_root) + "/" + slide
    # inside the roots (odd names under them), so the checks after the roots' are reached
    fields: dict[str, Any] = {"slides": [f"{fuzz_root}/fuzz/{slide}"], "model": model}
    fields["out"] = f"{fuzz_root}/fuzz-out/{out}"
    if route == "/api/schedules":
        fields = {"name": "fuzz", "cron": "0 22 * * *", "inbox": fields["slides"][0],
                  "model": model, "out": fields["out"] + "/{date}",
                  "options": _Raw(_body(options))}  # fmt: skip
    else:
        fields.update(options)
    with service.client() as c:
        response = c.post(
            route, content=_body(fields), headers={"content-type": "application/json"}
        )
        assert response.status_code < 500, (fields, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "\n" not in response.json()["detail"]
        if route == "/api/schedules" and response.status_code == 201:
            assert c.delete("/api/schedules/fuzz").status_code == 204
        assert c.get("/api/health").status_code == 200
