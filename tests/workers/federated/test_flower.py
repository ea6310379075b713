"""Federated training with Flower's own processes on loopback: a SuperLink started by `slidemill
federated serve`, one SuperNode per site started by `slidemill federated join`. Three sites
train together; a fourth, whose features come from another encoder, is refused with one line.
Then: what each site actually sent (its audit of every reply, and the SuperLink's own state
database) holds only parameters and moment sums, and the federated bundle runs through
`slidemill run` as any bundle does."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from slidemill.workers.federated import AUDIT_FILE, FEDERATION_JSON, SITE_SENDS
from slidemill.workers.metrics import auroc
from slidemill.workers.models import load_bundle
from slidemill.workers.training import predict_probabilities, resolve_model_dir
from tests.helpers import free_port
from tests.workers.training.test_train import cohort, write_features

# the module's federation (Flower's processes, 2 rounds, each message a fresh ClientApp
# process) is set up inside its first test's time limit
pytestmark = [pytest.mark.timeout(DEADLINE_S := 900), pytest.mark.slow]

SITES = {"north": (8, 6, 10), "south": (6, 4, 11), "east": (5, 3, 12)}
"""Site → (negative slides, positive slides, seed): sizes differ, east has few positives."""
SLIDEMILL = [sys.executable, "-m", "slidemill.cli"]
DEADLINE = float(DEADLINE_S)


@dataclass(frozen=True)
class Federation:
    root: Path
    out: Path
    serve: subprocess.CompletedProcess[str]
    joins: dict[str, tuple[int | None, str]]
    slide_ids: tuple[str, ...]


def _site(root: Path, name: str, n_neg: int, n_pos: int, seed: int, width: int = 16) -> Path:
    c = cohort(n_neg, n_pos, seed=seed)
    bags = {f"{name}-{k}": v for k, v in c.bags.items()}
    if width != 16:
        bags = {k: np.ascontiguousarray(v[:, :width]) for k, v in bags.items()}
    folder = root / name
    folder.mkdir()
    write_features(folder / "features", bags)
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "label"])
        w.writerows([f"{name}-{k}", ("negative", "positive")[y]] for k, y in c.labels.items())
    return folder


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("federation")
    folders = {n: _site(root, n, *spec) for n, spec in SITES.items()}
    # features of another width: from another encoder, as far as the model can tell
    odd = root / "odd"
    odd.mkdir()
    c = cohort(4, 4, seed=13)
    from slidemill.workers import init_bundle

    init_bundle(
        odd / "features" / "encoder-bundle",
        encoder="tiny_cnn",
        encoder_kwargs={"width": 8},
        head="mean_pool",
        class_names=("placeholder-a", "placeholder-b"),
        mpp=2.0,
        tile_px=32,
        seed=0,
    )
    write_features_only(odd / "features", {f"odd-{k}": v[:, :8] for k, v in c.bags.items()})
    with (odd / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "label"])
        w.writerows([f"odd-{k}", ("negative", "positive")[y]] for k, y in c.labels.items())
    folders["odd"] = odd

    port = free_port()
    out = root / "model"
    serve = subprocess.Popen(
        [*SLIDEMILL, "federated", "serve", "--encoder", str(folders["north"] / "features"),
         "--out", str(out), "--rounds", "2", "--local-epochs", "3", "--min-sites", "3",
         "--port", str(port), "--round-timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    joins = {name: _join(folder, name, port) for name, folder in folders.items()}
    try:
        output, _ = serve.communicate(timeout=DEADLINE)
        done = subprocess.CompletedProcess(serve.args, serve.returncode, output, "")
        results: dict[str, tuple[int | None, str]] = {}
        for name, p in joins.items():
            if name == "odd":  # refused: it stops by itself
                text, _ = p.communicate(timeout=120)
                results[name] = (p.returncode, text)
            else:
                results[name] = (p.poll(), "")
        ids = tuple(
            row["slide_id"]
            for folder in folders.values()
            for row in csv.DictReader((folder / "labels.csv").open())
        )
        yield Federation(root, out, done, results, ids)
    finally:
        for p in [serve, *joins.values()]:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def _join(folder: Path, name: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SLIDEMILL, "federated", "join", "--features", str(folder / "features"),
         "--labels", str(folder / "labels.csv"), "--server", f"127.0.0.1:{port}",
         "--name", name, "--workdir", str(folder / "site")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def write_features_only(root: Path, bags: dict[str, np.ndarray]) -> None:
    """`write_features` without its encoder bundle (the caller made one of another width)."""
    import zarr

    from slidemill.schemas import Provenance, SlideResult

    for sid, x in bags.items():
        folder = root / sid
        folder.mkdir(parents=True)
        result = SlideResult(
            slide_id=sid, path=str(root / f"{sid}.svs"), status="done",
            class_names=("placeholder-a", "placeholder-b"), probabilities=(0.5, 0.5),
            label="placeholder-a", n_tiles=x.shape[0], provenance=Provenance(slidemill_version="t"),
        )  # fmt: skip
        (folder / "result.json").write_text(result.model_dump_json())
        group = zarr.open_group(store=str(folder / "slide.zarr"), mode="w", zarr_format=3)
        x = np.ascontiguousarray(x, dtype=np.float32)
        group.create_array("features", shape=x.shape, dtype="float32", chunks=x.shape)[...] = x


def test_three_sites_train_one_bundle_with_their_provenance(federation: Federation) -> None:
    assert federation.serve.returncode == 0, federation.serve.stdout[-4000:]
    provenance = json.loads((federation.out / FEDERATION_JSON).read_text())
    sites = {s["name"]: s for s in provenance["sites"]}
    assert sorted(sites) == sorted(SITES)
    for name, (n_neg, n_pos, _) in SITES.items():
        assert sites[name]["n_slides"] == n_neg + n_pos
        assert sites[name]["class_counts"] == {"negative": n_neg, "positive": n_pos}
    # the aggregator records the refusal when the refused site is still connected as it reads
    # the reply (the site stays a few seconds); the site's own line is checked below
    assert set(provenance["refused"]) <= {"odd"}
    assert [r["round"] for r in provenance["rounds"]] == [1, 2]
    assert all(r["sites"] == 3 for r in provenance["rounds"])
    model = load_bundle(resolve_model_dir(federation.out))
    sites_text = "sites east (8 slides), north (14 slides), south (10 slides)"
    assert sites_text in model.manifest.description
    assert model.reference is not None and model.manifest.reference is not None
    assert model.manifest.reference.n_slides == 32
    # it learned: unseen slides of the same kind are ranked
    c = cohort(15, 15, seed=99)
    ids = sorted(c.bags)
    p = predict_probabilities(model.head, c.bags, ids)
    assert auroc(np.array([c.labels[i] for i in ids]), p[:, 1]) > 0.9


def test_a_site_of_another_encoder_is_refused_in_one_line(federation: Federation) -> None:
    code, text = federation.joins["odd"]
    assert code not in (0, None)
    lines = [line for line in text.splitlines() if "refused" in line]
    assert len(lines) == 1, text
    assert "'odd'" in lines[0] and "8-d" in lines[0] and "16-d" in lines[0]


def test_what_crossed_is_parameters_and_moment_sums_only(federation: Federation) -> None:
    head_keys = set(load_bundle(resolve_model_dir(federation.out)).head.state_dict())
    # what is each site's own: its slide ids and its folders (the aggregator's own logs, kept
    # in the SuperLink's database, may name the aggregator's folders)
    private = [*federation.slide_ids, *(str(federation.root / n) for n in [*SITES, "odd"])]
    for name in SITES:
        entries = [
            json.loads(line)
            for line in (federation.root / name / "site" / AUDIT_FILE).read_text().splitlines()
        ]
        steps = [e["step"] for e in entries]
        assert steps == ["describe", "train", "train", "ood"], steps
        for e in entries:
            allowed = SITE_SENDS[e["step"]]
            for record, content in e["records"].items():
                if e["step"] == "train" and record == "arrays":
                    assert set(content["entries"]) == head_keys
                else:
                    assert set(content["entries"]) <= allowed[record], (record, content)
            text = json.dumps(e)
            assert not [p for p in private if p in text], e
        train = [e for e in entries if e["step"] == "train"]
        assert all(0 < e["bytes"] < 4096 for e in train)  # a 16-d topk_linear head
    # the SuperLink's own state: every message that crossed went through it
    database = (federation.out / "flower" / "superlink.db").read_bytes()
    assert not [p for p in private if p.encode() in database]


def test_the_federated_bundle_runs_like_any_other(
    federation: Federation, slides_dir: Path, tmp_path: Path
) -> None:
    ran = subprocess.run(
        [*SLIDEMILL, "run", str(slides_dir / "synth-svs.svs"), "--model", str(federation.out),
         "--out", str(tmp_path / "run"), "--workers", "1", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "run").glob("*/result.json")]
    assert result["status"] == "done" and result["n_tiles"] > 0
    assert result["class_names"] == ["negative", "positive"]
