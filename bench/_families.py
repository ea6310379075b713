"""`slidemill bench-families`: does a way of learning chosen on some kinds of lesion hold on a
kind it was never tuned on? Leave-one-family-out over the lesion families of
`slidemill.pipeline.synth.FAMILIES`.

For each family: one labelled set (`n_train + n_test` slides, half positive), split once,
stratified and seeded, into training and test slides. Features of every slide for each
encoder and tiling of the candidates (weight-free encoders only: nothing is pretrained, so no
encoder has seen a held-out family). Then for each family and candidate (encoder, tiling, head,
training strategy) and cohort size, k-fold cross-validation on the family's training cohorts:
out-of-fold slide AUROC and tile localisation AUROC, and the test slides scored by the folds'
ensemble (what `slidemill train` ships).

Leave-one-family-out: for each family F and cohort size, `choose_setting` picks the candidate
with the best mean cross-validation score over the *other* families only; F's figures are
those of that candidate trained on F's training cohorts and scored on F's test slides. The
test slides take part in no choice. Every step is skipped when its output exists.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from rich.console import Console

from slidemill.bench._learning import STRATEGIES, _config, _tile_lesion, cohorts, features_folder
from slidemill.pipeline.synth import FAMILIES, write_benchmark_set

if TYPE_CHECKING:
    from slidemill.workers.training import CrossValidation

_Job = TypeVar("_Job")
_Done = TypeVar("_Done")

_SEED_OFFSET = 3000
"""The families' sets share no seed with the demo's or the learning study's sets."""

FAMILY_STRATEGIES = (
    "fixed 40 epochs + weight averaging",
    "early-stop (lr 5e-4, wd 1e-2, patience 15)",
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One setting the protocol may choose."""

    encoder: str
    """Weight-free encoder of the features."""
    tile_px: int
    """Tile side, px."""
    tile_mpp: float
    """Tile resolution, µm/px."""
    head: str
    """MIL head."""
    strategy: str
    """Key of `STRATEGIES`."""

    @property
    def name(self) -> str:
        return f"{self.encoder} {self.tile_px}px@{self.tile_mpp:g} {self.head}, {self.strategy}"


@dataclass(frozen=True, slots=True)
class FamilySettings:
    """Sizes and candidates of the study."""

    families: tuple[str, ...] = FAMILIES
    """Lesion families, each held out in turn."""
    n_train: int = 32
    """Training slides per family (half positive); cohorts are drawn from them."""
    n_test: int = 16
    """Test slides per family (half positive): scored, never chosen on."""
    cohorts: tuple[int, ...] = (16, 32)
    """Training cohort sizes."""
    size: tuple[int, int] = (4096, 4096)
    """Level-0 size of each slide at 0.5 µm/px."""
    folds: int = 4
    """Cross-validation folds, also the members of each final ensemble."""
    seed: int = 0
    """Seed of the sets, splits, cohorts and training."""
    encoders: tuple[str, ...] = ("handcrafted",)
    """Weight-free encoders."""
    tilings: tuple[tuple[int, float], ...] = ((112, 0.5), (112, 1.0))
    """(tile px, µm/px) pairs."""
    heads: tuple[str, ...] = ("topk_linear", "abmil_gated", "mean_pool")
    """MIL heads."""
    strategies: tuple[str, ...] = FAMILY_STRATEGIES
    """Training schedules, keys of `STRATEGIES`."""
    workers: int = 2
    """Processes for the slides and the cross-validation."""

    def candidates(self) -> tuple[Candidate, ...]:
        """Every combination, in a fixed order (ties go to the earlier)."""
        return tuple(
            Candidate(e, px, mpp, h, s)
            for e in self.encoders
            for px, mpp in self.tilings
            for h in self.heads
            for s in self.strategies
        )


@dataclass(frozen=True, slots=True)
class Score:
    """One family x candidate x cohort size: means over the family's training cohorts."""

    family: str
    candidate: str
    """`Candidate.name`."""
    cohort: int
    n_cohorts: int
    cv_auroc: float
    """Pooled out-of-fold slide AUROC."""
    cv_loc: float
    """Out-of-fold tile localisation AUROC (tile scores against the truth, lesion = ≥ 50% of the
    tile, pooled over the held-out positive slides' tiles); nan without lesion tiles."""
    test_auroc: float
    """Slide AUROC of the folds' ensemble on the family's test slides."""
    test_loc: float
    """Its tile localisation AUROC on the test slides."""
    seconds: float
    """Training time, all cohorts."""

    @property
    def cv_score(self) -> float:
        """What the protocol ranks candidates by: the mean of slide and localisation AUROC
        (slide AUROC alone where localisation is undefined)."""
        if math.isnan(self.cv_loc):
            return self.cv_auroc
        return (self.cv_auroc + self.cv_loc) / 2


@dataclass(frozen=True, slots=True)
class Choice:
    """What the protocol chose for one held-out family and cohort size."""

    held_out: str
    cohort: int
    others: tuple[str, ...]
    """The families the choice saw."""
    candidate: str
    """The chosen `Candidate.name`."""
    score: float
    """Its mean cross-validation score over `others`."""
    runner_up: str
    runner_up_score: float


def choose_setting(
    held_out: str,
    families: Sequence[str],
    candidates: Sequence[Candidate],
    score: Callable[[str, Candidate], float],
    cohort: int = 0,
) -> Choice:
    """The candidate with the best mean `score(family, candidate)` over every family but
    `held_out` (the earlier on a tie); `score` is never asked about `held_out`."""
    from slidemill.schemas.errors import InvalidInputError

    others = tuple(f for f in families if f != held_out)
    if not others:
        raise InvalidInputError(f"holding out {held_out!r} leaves no family to choose on")
    if not candidates:
        raise InvalidInputError("no candidate settings to choose from")
    means = [float(np.mean([score(f, c) for f in others])) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-means[i], i))
    best, second = order[0], order[1] if len(order) > 1 else order[0]
    return Choice(
        held_out,
        cohort,
        others,
        candidates[best].name,
        means[best],
        candidates[second].name,
        means[second],
    )


def split_train_test(
    labels: Mapping[str, int], n_test: int, seed: int
) -> tuple[list[str], list[str]]:
    """Training and test slide ids: `n_test` test slides, half (rounded down) of class 1,
    drawn at random (seeded); the rest train."""
    from slidemill.schemas.errors import InvalidInputError

    rng = np.random.default_rng([seed, 0x7E57])
    pos = [str(i) for i in rng.permutation(sorted(i for i, y in labels.items() if y == 1))]
    neg = [str(i) for i in rng.permutation(sorted(i for i, y in labels.items() if y == 0))]
    n_pos = n_test // 2
    if len(pos) <= n_pos or len(neg) <= n_test - n_pos:
        raise InvalidInputError(f"{len(labels)} slides are too few for {n_test} test slides")
    test = sorted([*pos[:n_pos], *neg[: n_test - n_pos]])
    return sorted(set(labels) - set(test)), test


@dataclass(frozen=True, slots=True)
class HeldOutRow:
    """A held-out family's figures with the setting chosen without it."""

    family: str
    cohort: int
    candidate: str
    cv_score_others: float
    """The chosen candidate's mean cross-validation score on the other families."""
    test_auroc: float
    test_loc: float
    best_test_auroc: float
    """The best test slide AUROC of any candidate on this family: for reading the figures
    only (chosen on the test slides, so not a result)."""


# ---------------------------------------------------------------------------------------------
# Data


def _family_seed(s: FamilySettings, family: str) -> int:
    return s.seed + _SEED_OFFSET + 10 * FAMILIES.index(family)


def _write_family(args: tuple[Path, str, int, int, tuple[int, int], str]) -> str:
    folder, family, n, seed, size, texture = args
    write_benchmark_set(folder, n=n, seed=seed, size=size, texture=Path(texture), generator=family)
    return family


def prepare_slides(out: Path, texture: Path, s: FamilySettings, console: Console) -> None:
    """Each family's set under `out/<family>/slides`, written in `s.workers` processes."""
    todo = [
        (out / f / "slides", f, s.n_train + s.n_test, _family_seed(s, f), s.size, str(texture))
        for f in s.families
        if not (out / f / "slides" / "labels.csv").is_file()
    ]
    if not todo:
        return
    console.print(
        f"[bold]synth[/bold] {len(todo)} families x {s.n_train + s.n_test} slides "
        f"({s.size[0]}x{s.size[1]}) → {out}/<family>/slides"
    )
    for family in in_processes(_write_family, todo, s.workers):
        console.print(f"  {family}: done", highlight=False)


def in_processes(
    fn: Callable[[_Job], _Done], jobs: Sequence[_Job], workers: int
) -> Iterator[_Done]:
    """`fn` over `jobs`, in `workers` spawned processes (here when one would do), results in
    the jobs' order as they finish."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(fn, jobs)


def prepare_features(
    out: Path, s: FamilySettings, encoder: str, tile_px: int, tile_mpp: float, console: Console
) -> Path:
    """The features of every family's slides for one encoder and tiling, in one batch (the
    slide ids, `<family>-NNN`, are unique across families)."""
    from slidemill.cluster import load_cluster_config
    from slidemill.pipeline.cohort import encoder_bundle
    from slidemill.pipeline.graph import run_batch
    from slidemill.schemas import RunSpec

    features = features_folder(out, encoder, tile_px, tile_mpp)
    bundle = encoder_bundle(
        features,
        encoder=encoder,
        encoder_weights=None,
        tile_mpp=tile_mpp,
        tile_px=tile_px,
        seed=s.seed,
    )
    console.print(
        f"[bold]features[/bold] {encoder} {tile_px} px at {tile_mpp:g} µm/px → {features}"
    )
    run_batch(
        RunSpec(
            slides=tuple(out / f / "slides" for f in s.families),
            model=bundle,
            out=features,
            cluster=load_cluster_config(),
            stages="features",
        )
    )
    return features


def _labels(out: Path, family: str) -> tuple[dict[str, int], dict[str, Path]]:
    slides = out / family / "slides"
    with (slides / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    labels = {r["slide_id"]: int(r["label"] == "positive") for r in rows}
    return labels, {r["slide_id"]: slides / r["path"] for r in rows}


def _bags(
    out: Path, labels: Mapping[str, int], encoder: str, tile_px: int, tile_mpp: float
) -> tuple[Mapping[str, NDArray[np.float32]], set[str]]:
    """The labelled slides' feature bags of `encoder` at one tiling, and the ids with usable
    features. A join "A+B" concatenates its parts' bags tile by tile: the parts share the
    tiling, so the same tiles in the same order, which their coordinates must confirm."""
    from slidemill.pipeline.graph import read_all
    from slidemill.schemas.layout import StoreArray
    from slidemill.workers.training import FeatureBags, scan_features

    folders = [
        scan_features(features_folder(out, p, tile_px, tile_mpp)) for p in encoder.split("+")
    ]
    ok = {
        sid
        for sid in labels
        if all(sid in f.slides and f.slides[sid].reason is None for f in folders)
    }
    parts = [FeatureBags({sid: f.slides[sid].store for sid in ok}) for f in folders]
    if len(parts) == 1:
        return parts[0], ok
    joined: dict[str, NDArray[np.float32]] = {}
    for sid in sorted(ok):
        coords = [np.asarray(read_all(f.slides[sid].store, StoreArray.COORDS)) for f in folders]
        if any(not np.array_equal(coords[0], c) for c in coords[1:]):
            raise ValueError(f"{encoder}: the parts' tiles of {sid} differ")
        joined[sid] = np.concatenate([bags[sid] for bags in parts], axis=1)
    return joined, ok


# ---------------------------------------------------------------------------------------------
# Cross-validation and test scores of one family


def _ensemble_scores(
    cv: CrossValidation,
    candidate: Candidate,
    bags: Mapping[str, NDArray[np.float32]],
    ids: Sequence[str],
) -> tuple[NDArray[np.float64], list[NDArray[np.float64]]]:
    """P(positive) of each slide of `ids` and its tiles', from the folds' ensemble."""
    import torch

    from slidemill.workers.models import ensemble_of

    in_dim = int(np.asarray(bags[ids[0]]).shape[1])
    config = _config(candidate.head, candidate.strategy, 2, 0)
    ensemble = ensemble_of(
        [f.training.head for f in cv.folds],
        in_dim=in_dim,
        n_classes=2,
        member=candidate.head,
        member_kwargs=config.head_kwargs,
    )
    slide, tiles = [], []
    with torch.inference_mode():
        for sid in ids:
            out = ensemble(torch.from_numpy(np.asarray(bags[sid])))
            slide.append(float(torch.softmax(out.logits.double(), -1)[1]))
            tiles.append(torch.softmax(out.tile_logits.double(), -1)[:, 1].numpy())
    return np.array(slide), tiles


def _loc(flags: list[NDArray[np.bool_]], scores: list[NDArray[np.float64]]) -> float:
    from slidemill.workers.metrics import auroc

    if not flags:
        return math.nan
    where = np.concatenate(flags)
    if where.all() or not where.any():
        return math.nan
    return float(auroc(where, np.concatenate(scores)))


def _slide_auroc(y: Sequence[int], p: NDArray[np.float64]) -> float:
    from slidemill.workers.metrics import auroc

    return float(auroc(np.asarray(y) == 1, p))


@dataclass(frozen=True, slots=True)
class _FamilyJob:
    out: Path
    family: str
    settings: FamilySettings
    candidates: tuple[Candidate, ...]
    done: frozenset[tuple[str, int]]
    """(candidate, cohort) pairs already scored."""


def _score_family(job: _FamilyJob) -> list[Score]:
    """Every candidate and cohort size of one family (in a worker process)."""
    import torch

    from slidemill.workers import cross_validate

    torch.set_num_threads(1)
    s, family = job.settings, job.family
    labels, paths = _labels(job.out, family)
    train, test = split_train_test(labels, s.n_test, s.seed)
    rows: list[Score] = []
    folders: dict[tuple[str, int, float], tuple[Any, Any, Any]] = {}
    for cand in job.candidates:
        key = (cand.encoder, cand.tile_px, cand.tile_mpp)
        if key not in folders:
            features = features_folder(job.out, cand.encoder.split("+")[0], *key[1:])
            bags, ok = _bags(job.out, labels, *key)
            lesion = {
                sid: m
                for sid in ok
                if labels[sid] == 1
                and (m := _tile_lesion(features, sid, paths[sid])) is not None
                and m.any()
            }
            folders[key] = (bags, lesion, ok)
        bags, lesion, ok = folders[key]
        train_ok = {sid: labels[sid] for sid in train if sid in ok}
        test_ids = [sid for sid in test if sid in ok]
        for size in s.cohorts:
            if (cand.name, size) in job.done:
                continue
            started = time.perf_counter()
            aurocs, cv_flags, cv_tiles, t_aurocs, t_flags, t_tiles = [], [], [], [], [], []
            groups = cohorts(train_ok, size, s.seed)
            for k, ids in enumerate(groups):
                config = _config(cand.head, cand.strategy, s.folds, s.seed + k)
                cv = cross_validate(bags, {i: labels[i] for i in ids}, ("n", "p"), config)
                aurocs.append(cv.oof_auroc if cv.oof_auroc is not None else math.nan)
                for fold in cv.folds:
                    for sid in fold.test_ids:
                        if sid in lesion:
                            with torch.inference_mode():
                                o = fold.training.head(torch.from_numpy(np.asarray(bags[sid])))
                            cv_flags.append(lesion[sid])
                            cv_tiles.append(torch.softmax(o.tile_logits.double(), -1)[:, 1].numpy())
                p, tiles = _ensemble_scores(cv, cand, bags, test_ids)
                t_aurocs.append(_slide_auroc([labels[i] for i in test_ids], p))
                for sid, t in zip(test_ids, tiles, strict=True):
                    if sid in lesion:
                        t_flags.append(lesion[sid])
                        t_tiles.append(t)
            rows.append(
                Score(
                    family,
                    cand.name,
                    size,
                    len(groups),
                    float(np.mean(aurocs)),
                    _loc(cv_flags, cv_tiles),
                    float(np.mean(t_aurocs)),
                    _loc(t_flags, t_tiles),
                    time.perf_counter() - started,
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------
# The study


SCORES_JSON = "family-scores.json"
STUDY_JSON = "family-study.json"


def _read_scores(path: Path) -> list[Score]:
    if not path.is_file():
        return []
    return [Score(**r) for r in json.loads(path.read_text())["rows"]]


def leave_one_family_out(
    scores: Sequence[Score], s: FamilySettings
) -> tuple[list[Choice], list[HeldOutRow]]:
    """The choices without each family, and that family's test figures with its choice."""
    cands = s.candidates()
    by = {(r.family, r.candidate, r.cohort): r for r in scores}
    choices, rows = [], []
    for size in s.cohorts:
        for family in s.families:

            def cv(f: str, c: Candidate, size: int = size) -> float:
                return by[(f, c.name, size)].cv_score

            choice = choose_setting(family, s.families, cands, cv, size)
            mine = by[(family, choice.candidate, size)]
            best = max(by[(family, c.name, size)].test_auroc for c in cands)
            choices.append(choice)
            rows.append(
                HeldOutRow(
                    family,
                    size,
                    choice.candidate,
                    choice.score,
                    mine.test_auroc,
                    mine.test_loc,
                    best,
                )
            )
    return choices, rows


def run_family_study(
    out: Path, texture: Path, s: FamilySettings, console: Console
) -> list[HeldOutRow]:
    """Every family's slides and features, the scores, the leave-one-family-out choices;
    writes `out/family-scores.json` (as it goes) and `out/family-study.json`."""
    from slidemill.schemas.errors import InvalidInputError

    unknown = [f for f in s.families if f not in FAMILIES]
    if unknown:
        raise InvalidInputError(f"family {unknown[0]!r}: one of {', '.join(FAMILIES)}")
    if len(s.families) < 2:
        raise InvalidInputError("leaving one family out needs at least two families")
    for name in s.strategies:
        if name not in STRATEGIES:
            raise InvalidInputError(f"strategy {name!r}: one of {', '.join(STRATEGIES)}")
    for size in s.cohorts:
        if size > s.n_train or size < 2 * s.folds:
            raise InvalidInputError(f"cohort size {size}: must lie in [{2 * s.folds}, {s.n_train}]")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # training runs torch on a fixed 2 intra-op threads (`workers.training`); on a shared
    # machine OpenMP's spinning threads then wait for a core at every small op, which made
    # each step ten times slower here. Passive waiting leaves the arithmetic as it is.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    prepare_slides(out, texture, s, console)
    console.print(f"  slides ready, {time.perf_counter() - started:.0f} s", highlight=False)
    # a join ("handcrafted+texture") is read from its parts' folders (`_bags`), not encoded again
    parts = dict.fromkeys(p for encoder in s.encoders for p in encoder.split("+"))
    for encoder in parts:
        for px, mpp in s.tilings:
            prepare_features(out, s, encoder, px, mpp, console)
    console.print(f"  features ready, {time.perf_counter() - started:.0f} s", highlight=False)
    cands = s.candidates()
    scores = _read_scores(out / SCORES_JSON)
    done = {(r.family, r.candidate, r.cohort) for r in scores}
    jobs = [
        _FamilyJob(out, f, s, cands, frozenset((c, n) for g, c, n in done if g == f))
        for f in s.families
    ]
    console.print(
        f"[bold]cross-validation[/bold] {len(cands)} candidates x {len(s.families)} families "
        f"x cohorts {', '.join(map(str, s.cohorts))}"
    )

    def keep(rows: list[Score]) -> None:
        scores.extend(rows)
        (out / SCORES_JSON).write_text(
            json.dumps({"rows": [asdict(r) for r in scores]}, indent=1) + "\n"
        )
        for r in rows:
            console.print(
                f"  {r.family:12s} n={r.cohort:2d} {r.candidate:70s} CV {r.cv_auroc:.3f} / "
                f"{r.cv_loc:.3f}  ({r.seconds:.0f} s)",
                highlight=False,
                soft_wrap=True,
            )

    for rows in in_processes(_score_family, jobs, s.workers):
        keep(rows)
    console.print(f"  scores ready, {time.perf_counter() - started:.0f} s", highlight=False)
    choices, held = leave_one_family_out(scores, s)
    doc = {
        "settings": {**asdict(s), "candidates": [c.name for c in cands]},
        "choices": [asdict(c) for c in choices],
        "held_out": [asdict(r) for r in held],
        "seconds": time.perf_counter() - started,
    }
    (out / STUDY_JSON).write_text(json.dumps(doc, indent=1) + "\n")
    return held


def family_table(rows: Sequence[HeldOutRow]) -> str:
    """The held-out figures as a markdown table: a line per family, slide AUROC / localisation
    AUROC and the chosen setting per cohort size, then the worst family."""
    sizes = sorted({r.cohort for r in rows})
    families = list(dict.fromkeys(r.family for r in rows))
    by = {(r.family, r.cohort): r for r in rows}
    head = "| held-out family | " + " | ".join(
        f"n={n}: slide / localisation AUROC | n={n}: chosen without it" for n in sizes
    )
    lines = [head + " |", "|---|" + "---|---|" * len(sizes)]

    def cell(v: float) -> str:
        return "—" if math.isnan(v) else f"{v:.3f}"

    for f in families:
        parts = []
        for n in sizes:
            r = by.get((f, n))
            parts += (
                ["—", "—"]
                if r is None
                else [f"{cell(r.test_auroc)} / {cell(r.test_loc)}", r.candidate]
            )
        lines.append(f"| {f} | " + " | ".join(parts) + " |")
    worst = []
    for n in sizes:
        at = [by[(f, n)] for f in families if (f, n) in by]
        a = min(at, key=lambda r: r.test_auroc)
        loc = min(at, key=lambda r: r.test_loc if not math.isnan(r.test_loc) else math.inf)
        worst += [f"{cell(a.test_auroc)} ({a.family}) / {cell(loc.test_loc)} ({loc.family})", ""]
    lines.append("| **worst family** | " + " | ".join(worst) + " |")
    return "\n".join(lines)
