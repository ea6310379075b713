"""`slidemill bench-learning`: which training settings hold on small cohorts, measured by
cross-validation on two generators (the drawn benchmark and the textured one), never on the
demo's held-out slides.

For each generator of `LearningSettings.generators`: a set of `n_slides` slides (its own seed),
an encoder pretrained on them (self-supervised, no labels), their features; one features folder
per encoder of `LearningSettings.encoders` (`histo_cnn`, `handcrafted`, `histo_cnn+handcrafted`,
...) and tiling (`tile_px`, `tile_mpp`). Then
for each cohort size, disjoint stratified cohorts of the set (one when the size is the whole
set), and for each strategy of `STRATEGIES` k-fold cross-validation on every cohort: the pooled
out-of-fold AUROC and log loss, and the epochs the folds ran. Every step is a library
function, skipped when its output exists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from rich.console import Console

from slidemill.pipeline.synth import write_benchmark_set

if TYPE_CHECKING:
    from slidemill.workers import TrainConfig

GENERATORS = ("drawn", "textured")
"""The drawn benchmark (`synth`) and the textured one (`synth --texture`)."""

DEFAULT_TILING = (112, 1.0)
"""Tile edge in pixels and µm/px of the study unless set otherwise."""

STRATEGIES: Mapping[str, Mapping[str, float | int | str]] = {
    # the `train` defaults before the study
    "early-stop (lr 2e-4, patience 8)": dict(
        lr=2e-4, weight_decay=1e-4, max_epochs=50, patience=8, min_epochs=1, smoothing=1,
        weight_averaging=0,
    ),
    # what the demo passes
    "early-stop (lr 5e-4, wd 1e-2, patience 15)": dict(
        lr=5e-4, weight_decay=1e-2, max_epochs=60, patience=15, min_epochs=1, smoothing=1,
        weight_averaging=0,
    ),
    "min 20 epochs + smoothed val. loss": dict(
        lr=5e-4, weight_decay=1e-2, max_epochs=60, patience=15, min_epochs=20, smoothing=5,
        weight_averaging=0,
    ),
    "fixed 40 epochs + weight averaging": dict(
        lr=5e-4, weight_decay=1e-2, max_epochs=40, patience=40, min_epochs=40, smoothing=1,
        weight_averaging=20,
    ),
    "fixed 40 epochs + weight averaging + instance loss (k 8)": dict(
        lr=5e-4, weight_decay=1e-2, max_epochs=40, patience=40, min_epochs=40, smoothing=1,
        weight_averaging=20, instance_k=8,
    ),
}  # fmt: skip
"""Strategy name → `TrainConfig` settings it differs in."""


@dataclass(frozen=True, slots=True)
class LearningSettings:
    """Sizes of the study."""

    n_slides: int = 32
    """Slides per generator (half positive)."""
    cohorts: tuple[int, ...] = (16, 32)
    """Cohort sizes; each at most `n_slides`."""
    size: tuple[int, int] = (4000, 3000)
    """Level-0 size of each slide at 0.5 µm/px."""
    pretrain_steps: int = 80
    """Self-supervised steps of each generator's encoder."""
    folds: int = 4
    """Cross-validation folds."""
    heads: tuple[str, ...] = ("abmil_gated", "mean_pool", "topk_linear")
    """MIL heads to train: every strategy on the first, `baseline_strategies` on the others."""
    seed: int = 0
    """Seed of the slides (offset from the demo's), encoders, cohorts and training."""
    strategies: tuple[str, ...] = field(default_factory=lambda: tuple(STRATEGIES))
    """Names from `STRATEGIES` to compare on the first head."""
    baseline_strategies: tuple[str, ...] = (
        "early-stop (lr 5e-4, wd 1e-2, patience 15)",
        "fixed 40 epochs + weight averaging",
    )
    """The strategies the other heads (the baselines) are trained with."""
    encoders: tuple[str, ...] = ("histo_cnn",)
    """Encoders whose features are studied; a `histo_cnn` part is the generator's pretrained one,
    the `handcrafted` part needs no training."""
    tile_px: int = DEFAULT_TILING[0]
    """Tile side in pixels, of the features and of the `histo_cnn` pretraining."""
    tile_mpp: float = DEFAULT_TILING[1]
    """Resolution of the tiles in µm/px (the slides are at 0.5 µm/px)."""
    generators: tuple[str, ...] = GENERATORS
    """Names from `GENERATORS` to study."""


@dataclass(frozen=True, slots=True)
class StudyRow:
    """One generator x cohort size x head x strategy: means over its cohorts."""

    generator: str
    """drawn or textured."""
    cohort: int
    """Slides per cohort."""
    head: str
    """MIL head."""
    strategy: str
    """Key of `STRATEGIES`."""
    n_cohorts: int
    """Disjoint cohorts averaged."""
    oof_auroc: float
    """Mean pooled out-of-fold AUROC."""
    oof_log_loss: float
    """Mean out-of-fold cross-entropy."""
    epochs: float
    """Mean epochs run per fold."""
    loc_attention: float
    """Lesion-localisation AUROC of attention, pooled over the held-out positive slides' tiles
    (a tile is lesion when ≥ 50% of it is)."""
    loc_tiles: float
    """The same for the tile scores (P(positive) of each tile)."""
    top_k: float
    """Mean over those slides of the share of the k most attended tiles that are lesion, k the
    slide's lesion tiles."""
    encoder: str = "histo_cnn"
    """The encoder the features came from."""


_SEED_OFFSET = 1000
"""The study's slides never coincide with the demo's (seeds 0 and 1)."""


def _tiling_suffix(tile_px: int, tile_mpp: float) -> str:
    """'' at the default tiling, else `-<px>px-<mpp>mpp`."""
    if (tile_px, tile_mpp) == DEFAULT_TILING:
        return ""
    return f"-{tile_px}px-{tile_mpp:g}mpp"


def features_folder(
    root: Path,
    encoder: str,
    tile_px: int = DEFAULT_TILING[0],
    tile_mpp: float = DEFAULT_TILING[1],
) -> Path:
    """A generator's features folder for `encoder`: `features` for `histo_cnn` (as before
    encoders were a setting), else `features-<encoder>` with ':' and '+' spelt '-' and '_';
    away from `DEFAULT_TILING`, `-<px>px-<mpp>mpp` follows."""
    name = (
        "features"
        if encoder == "histo_cnn"
        else "features-" + encoder.replace(":", "-").replace("+", "_")
    )
    return root / (name + _tiling_suffix(tile_px, tile_mpp))


def encoder_folder(
    root: Path, tile_px: int = DEFAULT_TILING[0], tile_mpp: float = DEFAULT_TILING[1]
) -> Path:
    """A generator's pretrained `histo_cnn`: `encoder`, with the tiling suffix of
    `features_folder` away from `DEFAULT_TILING`."""
    return root / ("encoder" + _tiling_suffix(tile_px, tile_mpp))


def prepare_generator(
    out: Path,
    generator: str,
    texture: Path | None,
    s: LearningSettings,
    console: Console,
    encoder: str = "histo_cnn",
) -> Path:
    """Slides, encoder and features of one generator under `out/generator`; returns the
    features folder (labels in `out/generator/slides/labels.csv`). The `histo_cnn` is
    pretrained only when `encoder` has it as a part."""
    from slidemill.cluster import load_cluster_config
    from slidemill.pipeline.cohort import WEIGHTS_FILE, encoder_bundle, pretrain
    from slidemill.pipeline.graph import run_batch
    from slidemill.schemas import RunSpec
    from slidemill.workers import ENCODERS, PretrainConfig

    root = out / generator
    slides = root / "slides"
    if not (slides / "labels.csv").is_file():
        console.print(f"[bold]synth[/bold] {s.n_slides} {generator} slides → {slides}")
        write_benchmark_set(
            slides,
            n=s.n_slides,
            seed=s.seed + _SEED_OFFSET + GENERATORS.index(generator),
            size=s.size,
            texture=texture if generator == "textured" else None,
        )
    learned = "histo_cnn" in ENCODERS.split(encoder)
    encoder_dir = encoder_folder(root, s.tile_px, s.tile_mpp)
    if learned and not (encoder_dir / WEIGHTS_FILE).is_file():
        console.print(f"[bold]pretrain[/bold] histo_cnn on {generator} tiles → {encoder_dir}")
        pretrain(
            (slides,),
            encoder_dir,
            encoder="histo_cnn",
            tile_mpp=s.tile_mpp,
            tile_px=s.tile_px,
            config=PretrainConfig(steps=s.pretrain_steps, seed=s.seed),
        )
    features = features_folder(root, encoder, s.tile_px, s.tile_mpp)
    bundle = encoder_bundle(
        features,
        encoder=encoder,
        encoder_weights=encoder_dir / WEIGHTS_FILE if learned else None,
        tile_mpp=s.tile_mpp,
        tile_px=s.tile_px,
        seed=s.seed,
    )
    console.print(f"[bold]features[/bold] {encoder} on {generator} → {features}")
    run_batch(
        RunSpec(
            slides=(slides,),
            model=bundle,
            out=features,
            cluster=load_cluster_config(),
            stages="features",
        )
    )
    return features


def cohorts(labels: Mapping[str, int], size: int, seed: int) -> list[list[str]]:
    """Disjoint cohorts of `size` slides, half of them (rounded down) of class 1; as many as
    the set holds (one when `size` is the whole set)."""
    rng = np.random.default_rng([seed, size])
    pos = [str(i) for i in rng.permutation(sorted(i for i, y in labels.items() if y == 1))]
    neg = [str(i) for i in rng.permutation(sorted(i for i, y in labels.items() if y == 0))]
    n_pos = size // 2
    out: list[list[str]] = []
    while len(pos) >= n_pos and len(neg) >= size - n_pos:
        out.append(sorted([*pos[:n_pos], *neg[: size - n_pos]]))
        pos, neg = pos[n_pos:], neg[size - n_pos :]
    return out


def _tile_lesion(features: Path, slide_id: str, slide_path: Path) -> NDArray[np.bool_] | None:
    """Whether each tile of a slide's features is lesion (≥ 50% of it), from the truth beside
    the slide; None without truth."""
    from slidemill.pipeline.graph import read_all, read_attrs
    from slidemill.pipeline.synth import truth_beside
    from slidemill.schemas.layout import SLIDE_STORE, StoreArray

    truth = truth_beside(slide_path)
    if truth is None:
        return None
    store = features / slide_id / SLIDE_STORE
    coords = np.asarray(read_all(store, StoreArray.COORDS))
    size = read_attrs(store).tile_size_level0
    frac = np.array([truth.lesion_fraction(float(x), float(y), size, size) for x, y in coords])
    out: NDArray[np.bool_] = frac >= 0.5
    return out


def _config(head: str, strategy: str, folds: int, seed: int) -> TrainConfig:
    from slidemill.workers import TrainConfig

    settings = dict(STRATEGIES[strategy])
    k = int(settings.pop("instance_k", 0))
    kwargs: dict[str, int | float | str | bool] = {"instance_k": k} if k and "abmil" in head else {}
    return TrainConfig(head=head, head_kwargs=kwargs, n_folds=folds, seed=seed, **settings)  # type: ignore[arg-type]


def study_features(
    features: Path,
    labels_csv: Path,
    generator: str,
    s: LearningSettings,
    console: Console,
    encoder: str = "histo_cnn",
) -> list[StudyRow]:
    """Cross-validate every head and strategy on every cohort of one generator's features; the
    folds' heads also score their held-out positive slides' tiles against the truth."""
    import csv

    import torch

    from slidemill.workers.training import FeatureBags, scan_features

    folder = scan_features(features)
    with labels_csv.open(newline="") as f:
        rows_csv = list(csv.DictReader(f))
    labels = {
        r["slide_id"]: int(r["label"] == "positive")
        for r in rows_csv
        if r["slide_id"] in folder.slides and folder.slides[r["slide_id"]].reason is None
    }
    paths = {r["slide_id"]: labels_csv.parent / r["path"] for r in rows_csv}
    lesion = {
        sid: m
        for sid, y in labels.items()
        if y == 1 and (m := _tile_lesion(features, sid, paths[sid])) is not None and m.any()
    }
    bags = FeatureBags({sid: folder.slides[sid].store for sid in labels})
    threads = torch.get_num_threads()
    # bags of a few hundred tiles gain nothing from intra-op threads; on a busy machine a
    # second thread waiting at every op for a core makes training many times slower
    torch.set_num_threads(1)
    try:
        return _study(bags, labels, lesion, generator, s, console, encoder)
    finally:
        torch.set_num_threads(threads)


def _study(
    bags: Mapping[str, NDArray[np.float32]],
    labels: Mapping[str, int],
    lesion: Mapping[str, NDArray[np.bool_]],
    generator: str,
    s: LearningSettings,
    console: Console,
    encoder: str,
) -> list[StudyRow]:
    import torch

    from slidemill.workers import cross_validate
    from slidemill.workers.metrics import auroc, top_k_lesion_share

    rows = []
    for size in s.cohorts:
        groups = cohorts(labels, size, s.seed)
        for head in s.heads:
            for name in s.strategies if head == s.heads[0] else s.baseline_strategies:
                aurocs, losses, epochs = [], [], []
                flags, att, tile, top = [], [], [], []
                for k, ids in enumerate(groups):
                    config = _config(head, name, s.folds, s.seed + k)
                    cv = cross_validate(bags, {i: labels[i] for i in ids}, ("n", "p"), config)
                    y = cv.y
                    p = np.clip(cv.oof_probabilities[np.arange(y.shape[0]), y], 1e-12, 1.0)
                    aurocs.append(cv.oof_auroc if cv.oof_auroc is not None else math.nan)
                    losses.append(float(-np.log(p).mean()))
                    epochs.append(float(np.mean([f.training.epochs_run for f in cv.folds])))
                    for fold in cv.folds:
                        for sid in fold.test_ids:
                            if sid not in lesion:
                                continue
                            with torch.inference_mode():
                                out = fold.training.head(torch.from_numpy(np.asarray(bags[sid])))
                            a = out.attention.double().numpy()
                            t = torch.softmax(out.tile_logits.double(), -1)[:, 1].numpy()
                            flags.append(lesion[sid])
                            att.append(a)
                            tile.append(t)
                            top.append(top_k_lesion_share(a, lesion[sid]))
                where = np.concatenate(flags) if flags else np.zeros(0, bool)
                row = StudyRow(
                    generator, size, head, name, len(groups),
                    float(np.mean(aurocs)), float(np.mean(losses)), float(np.mean(epochs)),
                    auroc(where, np.concatenate(att)) if flags else math.nan,
                    auroc(where, np.concatenate(tile)) if flags else math.nan,
                    float(np.mean(top)) if top else math.nan,
                    encoder,
                )  # fmt: skip
                console.print(
                    f"{generator:9s} {encoder} n={size:3d} {head:12s} {name:48s} "
                    f"AUROC {row.oof_auroc:.3f}  log loss {row.oof_log_loss:.3f}  "
                    f"epochs {row.epochs:5.1f}  localisation attention {row.loc_attention:.3f} "
                    f"tiles {row.loc_tiles:.3f} top-k {row.top_k:.3f}",
                    highlight=False,
                    soft_wrap=True,
                )
                rows.append(row)
    return rows


def run_learning_study(
    out: Path, texture: Path, settings: LearningSettings, console: Console
) -> list[StudyRow]:
    """Every generator's data, then the study; writes `out/learning-study.json`."""
    for size in settings.cohorts:
        if size > settings.n_slides or size < 2 * settings.folds:
            from slidemill.schemas.errors import InvalidInputError

            raise InvalidInputError(
                f"cohort size {size}: must lie in [{2 * settings.folds}, {settings.n_slides}]"
            )
    unknown = [g for g in settings.generators if g not in GENERATORS]
    if unknown:
        from slidemill.schemas.errors import InvalidInputError

        raise InvalidInputError(f"generator {unknown[0]!r}: one of {', '.join(GENERATORS)}")
    rows: list[StudyRow] = []
    for generator in settings.generators:
        for encoder in settings.encoders:
            features = prepare_generator(out, generator, texture, settings, console, encoder)
            labels = out / generator / "slides" / "labels.csv"
            rows += study_features(features, labels, generator, settings, console, encoder)
    doc = {
        "settings": {
            **asdict(settings),
            "strategies": {k: dict(STRATEGIES[k]) for k in settings.strategies},
        },
        "rows": [asdict(r) for r in rows],
    }
    (out / "learning-study.json").write_text(json.dumps(doc, indent=1) + "\n")
    return rows


def study_table(rows: Sequence[StudyRow]) -> str:
    """The rows as a markdown table: one line per strategy, head and encoder, a column per
    generator and cohort size (mean out-of-fold AUROC / log loss); an encoder column when the
    rows are not all `histo_cnn`'s."""
    keys = sorted(
        {(r.generator, r.cohort) for r in rows}, key=lambda k: (GENERATORS.index(k[0]), k[1])
    )
    named = any(r.encoder != "histo_cnn" for r in rows)
    first = "| strategy | head | encoder | " if named else "| strategy | head | "
    head = first + " | ".join(f"{g} n={n}" for g, n in keys) + " |"
    lines = [head, "|" + "---|" * (2 + named + len(keys))]
    seen: dict[tuple[str, str, str], dict[tuple[str, int], StudyRow]] = {}
    for r in rows:
        seen.setdefault((r.strategy, r.head, r.encoder), {})[(r.generator, r.cohort)] = r
    for (strategy, h, enc), cells in seen.items():
        vals = [
            f"{cells[k].oof_auroc:.3f} / {cells[k].oof_log_loss:.3f}" if k in cells else "—"
            for k in keys
        ]
        lead = f"| {strategy} | {h} | {enc} | " if named else f"| {strategy} | {h} | "
        lines.append(lead + " | ".join(vals) + " |")
    return "\n".join(lines)
