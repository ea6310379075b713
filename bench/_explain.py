"""`slidemill bench-explain`: how faithful each explanation of the demo's models is, and what
explaining costs.

On a finished demo's outputs (`run-<head>/`, `model-<head>/`, the held-out slides with their
truth in `test-set/`), for each head: every held-out slide explained as `slidemill explain` does
(`explain_bag`, in this process on one thread: what one worker thread does, without the
cluster); on the positive slides, deletion and insertion AUC of attention, tile scores and
Shapley values, with a random order of the regions and the truth's order (lesion share per
tile) as references; on the slides with lesion tiles, the localisation AUROC of each
explanation's per-tile values against the truth (a tile is lesion when ≥ 50% of it is, as
`bench-learning` and the evaluation count). The cost: seconds per slide at the settings given,
and on bags made k × k times larger (the slide's grid repeated side by side: the cost depends on
the tiles and regions, not on their pixels). Optionally `slidemill explain` itself, end to end
on a copy of each run, for the wall time through a LocalCluster.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

DEMO_FOLDERS = (Path("demo-out"), Path("/tmp/demo9"))
"""Where a finished demo is looked for (`make demo` writes demo-out/)."""
HEADS = ("abmil_gated", "mean_pool")
"""The demo's heads."""
RANDOM_ORDERS = 5
"""Random orders of the regions averaged for the reference curves."""
REFERENCES = ("random", "truth")
"""The orders every explanation is set against."""


@dataclass(frozen=True, slots=True)
class HeadFaithfulness:
    """One head's explanations on the held-out slides (means over slides)."""

    head: str
    """The MIL head."""
    slides: int
    """Held-out slides explained (the timing's)."""
    positive: int
    """Positive slides (the curves')."""
    localised: int
    """Slides with lesion and other tiles (the localisation's)."""
    deletion: dict[str, float]
    """Deletion AUC by explanation and reference (lower: more faithful)."""
    insertion: dict[str, float]
    """Insertion AUC by explanation and reference (higher: more faithful)."""
    localisation: dict[str, float]
    """Lesion localisation AUROC by explanation."""
    seconds_per_slide: float
    """Mean seconds to explain a held-out slide."""
    tiles: float
    """Mean tiles per slide."""
    players: float
    """Mean regions per slide."""


@dataclass(frozen=True, slots=True)
class ScalingPoint:
    """The cost of one bag size."""

    head: str
    """The MIL head."""
    repeat: int
    """The slide's grid repeated repeat × repeat times."""
    tiles: int
    """Tiles in the bag."""
    players: int
    """Regions."""
    cell: int
    """Block edge of the regions, in tiles."""
    seconds: float
    """Seconds to explain it."""


@dataclass(frozen=True, slots=True)
class ExplainBench:
    """Everything `bench-explain` measured."""

    demo: str
    """The demo folder."""
    budget: int
    """Orders of the regions per slide."""
    max_players: int
    """Regions per slide at most."""
    seed: int
    """Seed of the orders."""
    heads: list[HeadFaithfulness] = field(default_factory=list)
    scaling: list[ScalingPoint] = field(default_factory=list)
    end_to_end: dict[str, float] = field(default_factory=dict)
    """Per head: wall seconds per slide of `slidemill explain` on a copy of the run (cluster
    start included), when measured."""


def find_demo(candidates: Sequence[Path] = DEMO_FOLDERS) -> Path | None:
    """The first folder holding a finished demo's runs and models, or None."""
    for folder in candidates:
        if all((folder / f"run-{h}").is_dir() and (folder / f"model-{h}").is_dir() for h in HEADS):
            return folder
    return None


def _tile_lesion(store: Path, slide_path: Path) -> NDArray[np.float64] | None:
    """Each tile's lesion share from the truth beside the slide; None without truth."""
    from slidemill.pipeline.graph import read_all, read_attrs
    from slidemill.pipeline.synth import truth_beside
    from slidemill.schemas.layout import StoreArray

    truth = truth_beside(slide_path)
    if truth is None:
        return None
    coords = np.asarray(read_all(store, StoreArray.COORDS))
    size = read_attrs(store).tile_size_level0
    return np.array([truth.lesion_fraction(float(x), float(y), size, size) for x, y in coords])


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def head_faithfulness(
    demo: Path, head: str, budget: int, max_players: int, seed: int
) -> tuple[HeadFaithfulness, list[ScalingPoint]]:
    """Explain every held-out slide of `demo`'s run of `head`; its faithfulness, localisation
    and cost."""
    import torch

    from slidemill.pipeline.graph import read_all
    from slidemill.schemas import SlideResult
    from slidemill.schemas.layout import RESULT_JSON, SLIDE_STORE, StoreArray
    from slidemill.workers import load_bundle, resolve_model_dir
    from slidemill.workers.explain import (
        EXPLANATIONS,
        ExplainSettings,
        MaskedBag,
        deletion_curve,
        explain_bag,
        feature_groups,
        insertion_curve,
        region_order,
    )
    from slidemill.workers.metrics import auroc

    model = load_bundle(resolve_model_dir(demo / f"model-{head}"), torch.device("cpu"))
    groups = feature_groups(model.encoder, model.manifest.encoder)
    settings = ExplainSettings(budget=budget, seed=seed, max_players=max_players)
    deletion: dict[str, list[float]] = {k: [] for k in (*EXPLANATIONS, *REFERENCES)}
    insertion: dict[str, list[float]] = {k: [] for k in (*EXPLANATIONS, *REFERENCES)}
    localisation: dict[str, list[float]] = {k: [] for k in EXPLANATIONS}
    seconds: list[float] = []
    tiles: list[int] = []
    players: list[int] = []
    first_positive = None
    for result_file in sorted((demo / f"run-{head}").glob(f"*/{RESULT_JSON}")):
        result = SlideResult.model_validate_json(result_file.read_bytes())
        store = result_file.parent / SLIDE_STORE
        if result.status != "done" or not result.class_names or not store.is_dir():
            continue
        lesion = _tile_lesion(store, Path(result.path))
        if lesion is None:  # not a generated slide (the real sample): no truth
            continue
        features = read_all(store, StoreArray.FEATURES).astype(np.float32)
        grid_index = read_all(store, StoreArray.GRID_INDEX).astype(np.int64)
        attention = read_all(store, StoreArray.ATTENTION).astype(np.float32)
        scores = read_all(store, StoreArray.SCORES).astype(np.float32)
        target = 1
        e = explain_bag(
            model.head, features, grid_index, attention, scores, target, settings, groups=groups
        )
        seconds.append(e.seconds)
        tiles.append(int(features.shape[0]))
        players.append(e.players.n_players)
        values = {"attention": attention, "tile_score": scores[:, target], "shapley": e.shapley}
        is_lesion = lesion >= 0.5
        if is_lesion.any() and not is_lesion.all():
            for name in EXPLANATIONS:
                localisation[name].append(auroc(is_lesion, np.nan_to_num(values[name])))
        if (lesion > 0).any():  # a positive slide: its lesion is what should be found
            first_positive = first_positive or (features, grid_index, attention, scores)
            for name in EXPLANATIONS:
                deletion[name].append(e.faithfulness[name].deletion.auc)
                insertion[name].append(e.faithfulness[name].insertion.auc)
            bag = MaskedBag(model.head, torch.from_numpy(features), target, len(result.class_names))

            def prob(mask: NDArray[np.bool_], bag: MaskedBag = bag) -> NDArray[np.float64]:
                return np.asarray(1 / (1 + np.exp(-bag(torch.from_numpy(mask)).numpy())))

            truth_order = region_order(e.players, lesion)
            deletion["truth"].append(deletion_curve(prob, e.players, truth_order).auc)
            insertion["truth"].append(insertion_curve(prob, e.players, truth_order).auc)
            rng = np.random.default_rng(seed)
            orders = [region_order(e.players, lesion, rng) for _ in range(RANDOM_ORDERS)]
            deletion["random"].append(
                _mean([deletion_curve(prob, e.players, o).auc for o in orders])
            )
            insertion["random"].append(
                _mean([insertion_curve(prob, e.players, o).auc for o in orders])
            )
    row = HeadFaithfulness(
        head=head,
        slides=len(seconds),
        positive=len(deletion["shapley"]),
        localised=len(localisation["shapley"]),
        deletion={k: _mean(v) for k, v in deletion.items()},
        insertion={k: _mean(v) for k, v in insertion.items()},
        localisation={k: _mean(v) for k, v in localisation.items()},
        seconds_per_slide=_mean(seconds),
        tiles=_mean([float(t) for t in tiles]),
        players=_mean([float(p) for p in players]),
    )
    scaling = []
    if first_positive is not None:
        for k in (1, 2, 4, 8):
            bag_k = _repeated(*first_positive, k)
            e = explain_bag(model.head, *bag_k, 1, settings, groups=groups)
            n = bag_k[0].shape[0]
            scaling.append(ScalingPoint(head, k, n, e.players.n_players, e.players.cell, e.seconds))
    return row, scaling


def _repeated(
    features: NDArray[np.float32],
    grid_index: NDArray[np.int64],
    attention: NDArray[np.float32],
    scores: NDArray[np.float32],
    k: int,
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32], NDArray[np.float32]]:
    """A bag k² times the slide's: its grid repeated k × k times side by side."""
    rows, cols = (int(grid_index[:, i].max()) + 2 for i in (0, 1))
    offsets = [(i * rows, j * cols) for i in range(k) for j in range(k)]
    gi = np.concatenate([grid_index + np.array(o) for o in offsets]).astype(np.int64)
    att = (np.tile(attention, k * k) / (k * k)).astype(np.float32)
    return np.tile(features, (k * k, 1)), gi, att, np.tile(scores, (k * k, 1))


def end_to_end(demo: Path, head: str, budget: int, max_players: int, seed: int) -> float:
    """Wall seconds per slide of `explain_run` (LocalCluster, its start included) on a copy of
    the demo's run of `head`."""
    from slidemill.pipeline.explain import explain_run
    from slidemill.workers.explain import ExplainSettings

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        run = Path(tmp) / f"run-{head}"
        shutil.copytree(demo / f"run-{head}", run)
        t0 = time.perf_counter()
        report = explain_run(
            run,
            demo / f"model-{head}",
            settings=ExplainSettings(budget=budget, seed=seed, max_players=max_players),
        )
        wall = time.perf_counter() - t0
    return wall / max(len(report.explained), 1)


def run_bench_explain(
    demo: Path,
    console: Console,
    *,
    budget: int,
    max_players: int,
    seed: int = 0,
    out: Path | None = None,
    whole_command: bool = True,
    heads: Sequence[str] = HEADS,
) -> ExplainBench:
    """Measure each of `heads` in `demo` (its `run-<head>/` and `model-<head>/`); print the
    tables, and write them as JSON to `out` when given."""
    import torch

    bench = ExplainBench(str(demo), budget, max_players, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker thread's share of a core
    try:
        for head in heads:
            row, scaling = head_faithfulness(demo, head, budget, max_players, seed)
            bench.heads.append(row)
            bench.scaling.extend(scaling)
    finally:
        torch.set_num_threads(threads)
    if whole_command:
        for head in heads:
            bench.end_to_end[head] = end_to_end(demo, head, budget, max_players, seed)
    for table in explain_tables(bench):
        console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(asdict(bench), indent=1) + "\n")
    return bench


def explain_tables(bench: ExplainBench) -> list[Table]:
    """The faithfulness table and the cost table."""
    names = {"attention": "attention", "tile_score": "tile score", "shapley": "Shapley"}
    faith = Table(
        "head",
        *(f"deletion AUC {n}" for n in names.values()),
        "deletion random / truth",
        *(f"insertion AUC {n}" for n in names.values()),
        "insertion random / truth",
        *(f"localisation {n}" for n in names.values()),
        title=f"explanations, budget {bench.budget}, ≤ {bench.max_players} regions",
    )
    for h in bench.heads:
        faith.add_row(
            f"{h.head} ({h.positive} pos. / {h.localised} loc.)",
            *(f"{h.deletion[k]:.3f}" for k in names),
            f"{h.deletion['random']:.3f} / {h.deletion['truth']:.3f}",
            *(f"{h.insertion[k]:.3f}" for k in names),
            f"{h.insertion['random']:.3f} / {h.insertion['truth']:.3f}",
            *(f"{h.localisation[k]:.3f}" for k in names),
        )
    cost = Table("head", "repeat", "tiles", "regions (block)", "s per slide", title="cost")
    for h in bench.heads:
        e2e = bench.end_to_end.get(h.head)
        cost.add_row(
            h.head,
            "held-out",
            f"{h.tiles:.0f}",
            f"{h.players:.0f}",
            f"{h.seconds_per_slide:.3f}" + (f" ({e2e:.2f} end to end)" if e2e else ""),
        )
    for p in bench.scaling:
        cost.add_row(
            p.head,
            f"{p.repeat}×{p.repeat}",
            str(p.tiles),
            f"{p.players} ({p.cell})",
            f"{p.seconds:.3f}",
        )
    return [faith, cost]
