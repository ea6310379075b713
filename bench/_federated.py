"""`slidemill bench-federated`: does training across hospitals whose stain and scanner differ
come close to pooling their slides, and beat each hospital alone?

Sites (`FederatedBenchSettings.sites`: names, slide counts, one with very few positives), each
a lesion family's set as its own lab stains it and its own scanner writes it (`synth --site`,
`site_shift`). Each site's slides are split once into its training slides and its held-out
ones; the held-out slides of every site together are the one common test set that every model
is scored on (slide AUROC):

- each site alone: `slidemill train` on its own training slides;
- pooled: `slidemill train` on every site's training slides at once (what the slides could
  give if they could move);
- federated: `slidemill federated serve` and one `slidemill federated join` per site, every
  Flower process real, on loopback: FedAvg, FedProx, and FedAvg with differential privacy.

The features of every slide come from one `features` batch of a weight-free encoder, so no
model learns anything before training; each slide keeps its site's shift. Every step is skipped
when its output exists, so an interrupted run goes on where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rich.console import Console

from slidemill.bench._families import in_processes
from slidemill.pipeline.synth import FAMILIES, site_shift, write_benchmark_set

_SEED_OFFSET = 5000
"""The sites' sets share no seed with the demo's, the learning study's or the families'."""


@dataclass(frozen=True, slots=True)
class BenchSite:
    """One hospital of the benchmark."""

    name: str
    """Its name: its stain and scanner (`site_shift`) and its slides' prefix."""
    negatives: int
    """Training slides without lesions."""
    positives: int
    """Training slides with lesions."""


@dataclass(frozen=True, slots=True)
class FederatedRun:
    """One federated training run of the benchmark."""

    key: str
    """Its folder under OUT/models and its row in the table."""
    strategy: str = "fedavg"
    """fedavg or fedprox."""
    dp_noise: float = 0.0
    """DP noise multiplier (0: no DP)."""


@dataclass(frozen=True, slots=True)
class FederatedBenchSettings:
    """Sizes and settings of the benchmark."""

    sites: tuple[BenchSite, ...] = (
        BenchSite("north", 12, 12),
        BenchSite("south", 8, 8),
        BenchSite("east", 10, 2),
    )
    """The hospitals: cohorts of different sizes, one with very few positives."""
    held_out: int = 16
    """Held-out slides per site (half positive), together the common test set."""
    family: str = "crowding"
    """The lesion family of every site's slides."""
    size: tuple[int, int] = (3072, 3072)
    """Level-0 size of each slide at 0.5 µm/px."""
    encoder: str = "handcrafted"
    """Weight-free encoder of the features."""
    tile_px: int = 112
    """Tile side, px."""
    tile_mpp: float = 0.5
    """Tile resolution, µm/px."""
    rounds: int = 20
    """Federated rounds (`federated serve`'s default)."""
    local_epochs: int = 2
    """Epochs each site trains per round (`serve`'s default: rounds x local epochs = `train`'s
    40 epochs)."""
    mu: float = 0.1
    """FedProx's μ."""
    dp_noise: tuple[float, ...] = (0.3, 1.0)
    """Noise multipliers of the DP runs (one run each): with a few sites, client-level DP costs
    accuracy fast, so a weak and a standard setting."""
    dp_clip: float = 0.5
    """Clipping norm of the DP run."""
    seed: int = 0
    """Seed of the sets, splits and training."""
    workers: int = 2
    """Processes that write slides."""
    federated: tuple[FederatedRun, ...] = field(default=())
    """The federated runs; empty = FedAvg, FedProx and FedAvg with each DP noise."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r}: one of {', '.join(FAMILIES)}")
        if len({s.name for s in self.sites}) != len(self.sites) or len(self.sites) < 2:
            raise ValueError("give two or more sites with different names")
        if any(min(s.negatives, s.positives) < 1 for s in self.sites):
            raise ValueError("every site needs a negative and a positive training slide")
        if any(not (z > 0 and math.isfinite(z)) for z in self.dp_noise):
            raise ValueError(f"DP noise multipliers must be positive, got {self.dp_noise}")
        if self.held_out < 2 or self.held_out % 2:
            raise ValueError("held_out must be even (half positive) and at least 2")
        if not self.federated:
            object.__setattr__(
                self,
                "federated",
                (
                    FederatedRun("fedavg"),
                    FederatedRun("fedprox", strategy="fedprox"),
                    *(FederatedRun(f"fedavg-dp{z:g}", dp_noise=z) for z in self.dp_noise),
                ),
            )


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One model's figures on the common held-out set."""

    model: str
    """'<site> alone', 'pooled', or a federated run's key."""
    trained_on: int
    """Training slides it learned from (all sites' for pooled and federated)."""
    slide_auroc: float
    """Slide AUROC on every site's held-out slides."""
    site_auroc: dict[str, float]
    """Slide AUROC on each site's held-out slides alone."""
    epsilon: float | None = None
    """ε spent (at the run's δ) under DP; None without."""
    sent_bytes_per_round: dict[str, float] = field(default_factory=dict)
    """Mean bytes each site sent per training round (its audit of what it sent)."""
    seconds: float = 0.0
    """Wall time of its training."""
    vs_pooled: tuple[float, float, float] | None = None
    """Its slide AUROC minus pooled training's, with the 95% interval of a paired bootstrap
    over the held-out slides; None for pooled itself."""


# ---------------------------------------------------------------------------------------------
# Slides, splits and features


def _site_seed(s: FederatedBenchSettings, index: int) -> int:
    return s.seed + _SEED_OFFSET + 10 * index


def _write_site(args: tuple[Path, BenchSite, int, int, int, tuple[int, int], str, str]) -> str:
    folder, site, n, n_pos, seed, size, texture, family = args
    write_benchmark_set(
        folder,
        n=n,
        positive_fraction=n_pos / n,
        seed=seed,
        size=size,
        texture=Path(texture),
        generator=family,
        site=site_shift(site.name),
    )
    return site.name


def prepare_slides(out: Path, texture: Path, s: FederatedBenchSettings, console: Console) -> None:
    """Each site's set (training and held-out slides) under `out/slides/<site>`."""
    half = s.held_out // 2
    todo = [
        (
            out / "slides" / site.name,
            site,
            site.negatives + site.positives + s.held_out,
            site.positives + half,
            _site_seed(s, i),
            s.size,
            str(texture),
            s.family,
        )
        for i, site in enumerate(s.sites)
        if not (out / "slides" / site.name / "labels.csv").is_file()
    ]
    if not todo:
        return
    for site in s.sites:
        console.print(f"site {site.name}: {site_shift(site.name).describe()}", highlight=False)
    console.print(f"[bold]synth[/bold] {len(todo)} sites ({s.family}) → {out}/slides/<site>")
    for name in in_processes(_write_site, todo, s.workers):
        console.print(f"  {name}: done", highlight=False)


@dataclass(frozen=True, slots=True)
class SiteSplit:
    """A site's slides, split into training and held-out."""

    train: dict[str, int]
    """Training slide id → label (1 = positive)."""
    held_out: dict[str, int]
    """Held-out slide id → label."""


def _check_settings(out: Path, s: FederatedBenchSettings) -> None:
    """Record the settings in a new `out`; refuse an `out` made with other ones (its slides and
    models would be reused as if they were these)."""
    path = out / "settings.json"
    mine = json.loads(json.dumps(asdict(s)))
    if path.is_file():
        theirs = json.loads(path.read_text(encoding="utf-8"))
        if theirs != mine:
            changed = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ValueError(
                f"{out} was made with other settings ({', '.join(changed)}); choose a new folder"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(mine, indent=2), encoding="utf-8")
    tmp.replace(path)


def split_site(labels: Mapping[str, int], held_out: int) -> SiteSplit:
    """The first `held_out / 2` positives and negatives by id are held out (the set's order of
    positives is already a seeded random permutation), the rest train."""
    test: dict[str, int] = {}
    for y in (0, 1):
        ids = sorted(k for k, v in labels.items() if v == y)
        if len(ids) <= held_out // 2:
            raise ValueError(f"{len(ids)} slides of class {y}: none left to train on")
        test.update((k, y) for k in ids[: held_out // 2])
    return SiteSplit({k: v for k, v in labels.items() if k not in test}, test)


def _read_labels(folder: Path) -> dict[str, int]:
    with (folder / "labels.csv").open(newline="") as f:
        return {r["slide_id"]: int(r["label"] == "positive") for r in csv.DictReader(f)}


def _write_labels(path: Path, labels: Mapping[str, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "label"])
        w.writerows((k, ("negative", "positive")[v]) for k, v in sorted(labels.items()))
    tmp.replace(path)
    return path


def prepare_features(out: Path, s: FederatedBenchSettings, console: Console) -> Path:
    """Every site's slides through one `features` batch into `out/features`."""
    from slidemill.cluster import load_cluster_config
    from slidemill.pipeline.cohort import encoder_bundle
    from slidemill.pipeline.graph import run_batch
    from slidemill.schemas import RunSpec
    from slidemill.workers.training import scan_features

    features = out / "features"
    wanted = {sid for site in s.sites for sid in _read_labels(out / "slides" / site.name)}
    if features.is_dir():
        have = scan_features(features).slides
        if all(sid in have and have[sid].reason is None for sid in wanted):
            return features
    bundle = encoder_bundle(
        features,
        encoder=s.encoder,
        encoder_weights=None,
        tile_mpp=s.tile_mpp,
        tile_px=s.tile_px,
        seed=s.seed,
    )
    console.print(
        f"[bold]features[/bold] {s.encoder} {s.tile_px} px at {s.tile_mpp:g} µm/px → {features}"
    )
    run_batch(
        RunSpec(
            slides=tuple(out / "slides" / site.name for site in s.sites),
            model=bundle,
            out=features,
            cluster=load_cluster_config(),
            stages="features",
        )
    )
    return features


# ---------------------------------------------------------------------------------------------
# Training: alone, pooled, federated


def _train(features: Path, labels: Path, folder: Path, seed: int) -> float:
    """`slidemill train` with its defaults (folds no more than the smaller class has slides)."""
    from slidemill.workers.training import TrainConfig, train_from_features

    if (folder / "training.json").is_file():
        return float(json.loads((folder / "training.json").read_text()).get("seconds", 0.0))
    with labels.open(newline="") as f:
        rows = list(csv.DictReader(f))
    smaller = min(sum(r["label"] == c for r in rows) for c in ("negative", "positive"))
    config = TrainConfig(seed=seed)
    config = replace(config, n_folds=max(2, min(config.n_folds, smaller)))
    started = time.perf_counter()
    if folder.exists():  # an interrupted run's partial folder, inside this benchmark's OUT
        shutil.rmtree(folder)
    train_from_features(labels, features, folder, config)
    return time.perf_counter() - started


def _federate(
    features: Path,
    labels: Mapping[str, Path],
    folder: Path,
    run: FederatedRun,
    s: FederatedBenchSettings,
    console: Console,
) -> float:
    """One federated run: `slidemill federated serve` here, a `join` process per site."""
    from slidemill.workers.federated import FEDERATION_JSON, FederationSettings, free_port, serve
    from slidemill.workers.training import TrainConfig

    if (folder / FEDERATION_JSON).is_file():
        return float(json.loads((folder / FEDERATION_JSON).read_text()).get("seconds", 0.0))
    settings = FederationSettings(
        rounds=s.rounds,
        min_sites=len(s.sites),
        local_epochs=s.local_epochs,
        strategy=run.strategy,  # type: ignore[arg-type]
        proximal_mu=s.mu,
        train=TrainConfig(seed=s.seed),
        dp_noise=run.dp_noise,
        dp_clip=s.dp_clip,
    )
    port = free_port()
    started = time.perf_counter()
    outcome: dict[str, object] = {}

    def aggregate() -> None:
        try:
            outcome["result"] = serve(settings, features, folder, port=port)
        except Exception as e:  # reported below, after the sites are stopped
            outcome["error"] = e

    console.print(f"[bold]federated[/bold] {run.key}: {s.rounds} rounds, {len(s.sites)} sites")
    aggregator = threading.Thread(target=aggregate, daemon=True)
    aggregator.start()
    sites = [_join(features, labels[name], port, name, folder) for name in labels]
    try:
        aggregator.join()
    finally:
        for p in sites:
            p.terminate()
        for p in sites:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    if "error" in outcome:
        raise RuntimeError(f"federated run {run.key}: {outcome['error']}")
    return time.perf_counter() - started


def _join(features: Path, labels: Path, port: int, name: str, run: Path) -> subprocess.Popen[bytes]:
    """`slidemill federated join` as a site runs it, its folder beside the run's."""
    workdir = run.parent / f"{run.name}-sites" / name
    args = ["federated", "join", "--features", str(features), "--labels", str(labels),
            "--server", f"127.0.0.1:{port}", "--name", name, "--workdir", str(workdir)]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "slidemill.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


# ---------------------------------------------------------------------------------------------
# Scores


def _scores(
    model_dir: Path, bags: Mapping[str, NDArray[np.float32]], ids: Sequence[str]
) -> NDArray[np.float64]:
    from slidemill.workers.models import load_bundle
    from slidemill.workers.training import predict_probabilities, resolve_model_dir

    model = load_bundle(resolve_model_dir(model_dir))
    positive = list(model.manifest.class_names).index("positive")
    return np.asarray(predict_probabilities(model.head, bags, ids)[:, positive], np.float64)


def _auroc(y: Sequence[int], p: NDArray[np.float64]) -> float:
    from slidemill.workers.metrics import auroc

    return float(auroc(np.asarray(y) == 1, p))


def _vs_pooled(
    y: Sequence[int], p: NDArray[np.float64], pooled: NDArray[np.float64], seed: int
) -> tuple[float, float, float]:
    """AUROC(p) − AUROC(pooled) on the same slides, and its 95% percentile interval from a
    paired bootstrap (scipy's), slides resampled with both models' scores."""
    from scipy.stats import bootstrap

    labels = np.asarray(y)

    def delta(idx: NDArray[np.int64]) -> float:
        take = labels[idx]
        if take.min() == take.max():  # a resample of one class: no AUROC
            return math.nan
        return _auroc(list(take), p[idx]) - _auroc(list(take), pooled[idx])

    ci = bootstrap(
        (np.arange(labels.size),),
        delta,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        random_state=seed,
    ).confidence_interval
    return delta(np.arange(labels.size)), float(ci.low), float(ci.high)


def _sent_per_round(sites_dir: Path) -> dict[str, float]:
    """Mean bytes per training round each site's audit says it sent."""
    from slidemill.workers.federated import AUDIT_FILE

    sent: dict[str, float] = {}
    for audit in sorted(sites_dir.glob(f"*/{AUDIT_FILE}")):
        rows = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
        train = [r["bytes"] for r in rows if r["step"] == "train" and r["error"] is None]
        if train:
            sent[audit.parent.name] = float(np.mean(train))
    return sent


def run_federated_bench(
    out: Path, texture: Path, s: FederatedBenchSettings, console: Console
) -> list[BenchRow]:
    """Every step of the benchmark (each skipped when done); writes `out/federated-bench.json`."""
    from slidemill.workers.training import FeatureBags, scan_features

    out = out.absolute()
    _check_settings(out, s)
    prepare_slides(out, texture, s, console)
    splits = {
        site.name: split_site(_read_labels(out / "slides" / site.name), s.held_out)
        for site in s.sites
    }
    features = prepare_features(out, s, console)
    labels = {
        name: _write_labels(out / "labels" / f"{name}.csv", split.train)
        for name, split in splits.items()
    }
    pooled = _write_labels(
        out / "labels" / "pooled.csv", {k: v for sp in splits.values() for k, v in sp.train.items()}
    )
    test = {k: v for sp in splits.values() for k, v in sp.held_out.items()}
    ids = sorted(test)
    folder = scan_features(features)
    bags = FeatureBags({sid: folder.slides[sid].store for sid in ids})
    models = out / "models"

    scores: dict[str, NDArray[np.float64]] = {}

    def row(model: str, where: Path, trained_on: int, seconds: float, **extra: object) -> BenchRow:
        scores[model] = _scores(where, bags, ids)
        p = dict(zip(ids, scores[model], strict=True))
        per_site = {
            name: _auroc([test[k] for k in sp.held_out], np.array([p[k] for k in sp.held_out]))
            for name, sp in splits.items()
        }
        return BenchRow(
            model, trained_on, _auroc([test[k] for k in ids], np.array([p[k] for k in ids])),
            per_site, seconds=seconds, **extra,  # type: ignore[arg-type]
        )  # fmt: skip

    rows: list[BenchRow] = []
    for name, split in splits.items():
        console.print(f"[bold]train[/bold] {name} alone ({len(split.train)} slides)")
        seconds = _train(features, labels[name], models / f"{name}-alone", s.seed)
        rows.append(row(f"{name} alone", models / f"{name}-alone", len(split.train), seconds))
    n_all = sum(len(sp.train) for sp in splits.values())
    console.print(f"[bold]train[/bold] pooled ({n_all} slides)")
    seconds = _train(features, pooled, models / "pooled", s.seed)
    rows.append(row("pooled", models / "pooled", n_all, seconds))
    for run in s.federated:
        where = models / run.key
        seconds = _federate(features, labels, where, run, s, console)
        federation = json.loads((where / "federation.json").read_text())
        privacy = federation.get("privacy") or {}
        rows.append(
            row(
                f"federated {run.key}",
                where,
                n_all,
                seconds,
                epsilon=privacy.get("epsilon"),
                sent_bytes_per_round=_sent_per_round(models / f"{run.key}-sites"),
            )
        )
    y = [test[k] for k in ids]
    rows = [
        r
        if r.model == "pooled"
        else replace(r, vs_pooled=_vs_pooled(y, scores[r.model], scores["pooled"], s.seed))
        for r in rows
    ]
    report = {
        "settings": asdict(s),
        "shifts": {site.name: asdict(site_shift(site.name)) for site in s.sites},
        "held_out": {name: len(sp.held_out) for name, sp in splits.items()},
        "rows": [asdict(r) for r in rows],
        "date": time.strftime("%Y-%m-%d"),
    }
    tmp = out / "federated-bench.json.tmp"
    tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    tmp.replace(out / "federated-bench.json")
    return rows


def federated_table(rows: Sequence[BenchRow]) -> str:
    """The benchmark's figures as a Markdown table."""
    sites = list(rows[0].site_auroc) if rows else []
    head = [
        "model",
        "training slides",
        "slide AUROC",
        "minus pooled [95% CI]",
        *(f"on {n}" for n in sites),
        "ε",
        "bytes/round/site",
        "s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sent = r.sent_bytes_per_round
        cells = [
            r.model,
            str(r.trained_on),
            f"{r.slide_auroc:.3f}",
            "–" if r.vs_pooled is None else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r.vs_pooled),
            *(f"{r.site_auroc[n]:.3f}" if not math.isnan(r.site_auroc[n]) else "–" for n in sites),
            f"{r.epsilon:.2f}" if r.epsilon is not None else "–",
            f"{np.mean(list(sent.values())):,.0f}" if sent else "–",
            f"{r.seconds:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
