"""The explain task Dask runs on a worker that holds the model: one published slide's bag, its
regions' Shapley values and the faithfulness of each explanation, written beside its store as
`explain.zarr`; then its export files again, with the explanation as a layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidemill.pipeline.export import export_slide, write_explanation
from slidemill.pipeline.graph import read_all, read_attrs
from slidemill.pipeline.tissue import usable_tiles
from slidemill.schemas.layout import SLIDE_STORE, StoreArray
from slidemill.workers import get_model
from slidemill.workers.explain import (
    EXPLANATIONS,
    ExplainSettings,
    explain_bag,
    feature_groups,
)


@dataclass(frozen=True, slots=True)
class ExplainJob:
    """What a worker needs to explain one slide: paths, ids and small values only."""

    slide_id: str
    """The slide's folder name in the run."""
    folder: str
    """The published slide folder (holding slide.zarr)."""
    model_bundle: str
    """The bundle the run used (a folder every worker can read)."""
    model_sha256: str
    """Its id, as `get_model` and the run's provenance know it."""
    target: int
    """The class explained."""
    target_name: str
    """Its name."""
    settings: ExplainSettings
    """Budget, seed, regions."""
    qc_exclude: bool = False
    """Whether the run left QC-failing tiles out of the bag (--qc exclude): they are left out
    here too, as the head never saw them."""
    threshold: float | None = None
    """The model's trained threshold, for the lesion regions of the export files."""


@dataclass(frozen=True, slots=True)
class ExplainedSlide:
    """What the explain task did for one slide (small: it travels back to the client)."""

    slide_id: str
    """The slide."""
    n_tiles: int
    """Tiles in the bag."""
    n_players: int
    """Regions they were grouped into."""
    cell: int
    """Block edge of the regions, in tiles."""
    exact: bool
    """Whether the values are exact (every order of the regions)."""
    permutations: int
    """Orders averaged."""
    full_log_odds: float
    """The slide's log-odds of the class explained."""
    empty_log_odds: float
    """The empty bag's."""
    shapley_sum: float
    """The regions' values added up (efficiency: `full_log_odds − empty_log_odds`)."""
    seconds: float
    """Time spent explaining (the reads and writes not counted)."""
    faithfulness: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Deletion and insertion AUC of each explanation."""


def explain_slide(job: ExplainJob) -> ExplainedSlide:
    """Explain one published slide and write `explain.zarr` and the export files."""
    folder = Path(job.folder)
    store = folder / SLIDE_STORE
    model = get_model(job.model_bundle, job.model_sha256)  # the plugin loaded it already
    attrs = read_attrs(store)
    features = read_all(store, StoreArray.FEATURES).astype(np.float32, copy=False)
    grid_index = read_all(store, StoreArray.GRID_INDEX).astype(np.int64)
    attention = read_all(store, StoreArray.ATTENTION).astype(np.float32, copy=False)
    scores = read_all(store, StoreArray.SCORES).astype(np.float32, copy=False)
    keep = None
    if job.qc_exclude:  # the bag the MIL task ran on (`mil_slide`)
        usable = usable_tiles(
            read_all(store, StoreArray.QC_BLUR).astype(np.float32, copy=False),
            read_all(store, StoreArray.QC_PEN).astype(np.float32, copy=False),
        )
        keep = usable if usable.any() else None
    explanation = explain_bag(
        model.head,
        features,
        grid_index,
        attention,
        scores,
        job.target,
        job.settings,
        keep=keep,
        groups=feature_groups(model.encoder, model.manifest.encoder),
        device=model.device,
    )
    players = explanation.players
    faithfulness = {
        name: (
            explanation.faithfulness[name].deletion.auc,
            explanation.faithfulness[name].insertion.auc,
        )
        for name in EXPLANATIONS
    }
    info = {
        "target": job.target_name,
        "target_index": job.target,
        "budget": job.settings.budget,
        "seed": job.settings.seed,
        "max_players": job.settings.max_players,
        "n_players": players.n_players,
        "cell": players.cell,
        "connected": players.connected,
        "exact": explanation.exact,
        "permutations": explanation.permutations,
        "evaluations": explanation.evaluations,
        "full_log_odds": explanation.full_log_odds,
        "empty_log_odds": explanation.empty_log_odds,
        "seconds": explanation.seconds,
        "faithfulness": {
            name: {"deletion_auc": d, "insertion_auc": i} for name, (d, i) in faithfulness.items()
        },
        "reason_names": list(explanation.reason_names),
        "model_sha256": job.model_sha256,
    }
    write_explanation(
        folder,
        grid_index=grid_index,
        grid_shape=attrs.grid_shape,
        attention=attention,
        tile_score=scores[:, job.target],
        shapley=explanation.shapley,
        region=players.of_tile,
        region_shapley=explanation.region_values,
        reason_tiles=explanation.reason_tiles,
        reasons=explanation.reasons,
        info=info,
    )
    export_slide(folder, threshold=job.threshold)
    return ExplainedSlide(
        slide_id=job.slide_id,
        n_tiles=int(players.in_bag.sum()),
        n_players=players.n_players,
        cell=players.cell,
        exact=explanation.exact,
        permutations=explanation.permutations,
        full_log_odds=explanation.full_log_odds,
        empty_log_odds=explanation.empty_log_odds,
        shapley_sum=float(explanation.region_values.sum()),
        seconds=explanation.seconds,
        faithfulness=faithfulness,
    )
