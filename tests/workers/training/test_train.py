"""Training MIL heads on stored features: splits, class weights, early stopping, reproducibility,
label matching, the fold and ensemble bundles, and the `train` command.

The features folders are faked as `slidemill features` writes them (an encoder bundle, and per
slide a `result.json` and a Zarr group with `features` (N, D)): negative bags are standard normal
tiles; positive bags have a few tiles shifted along four feature dimensions, so a head that
learns must put its attention there.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from numpy.typing import NDArray
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.schemas import Provenance, SlideResult
from slidemill.workers import (
    EnsembleMIL,
    EpochReport,
    LabelError,
    TopKMIL,
    TrainConfig,
    TrainingError,
    TrainingReport,
    class_weights,
    cross_validate,
    init_bundle,
    load_bundle,
    match_labels,
    ood_score,
    predict_slide,
    read_label_csv,
    resolve_model_dir,
    scan_features,
    stratified_folds,
    stratified_split,
    train_fold,
    train_from_features,
)
from slidemill.workers.metrics import auroc
from slidemill.workers.training import bag_loss, predict_probabilities

D = 16  # tiny_cnn of width 16: the encoder bundle's feature_dim
SMALL = {"hidden_dim": 32, "attention_dim": 16}
PLACEHOLDER = ("placeholder-a", "placeholder-b")
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny bags gain nothing from intra-op threads, and on two shared cores a second thread
    waiting at every op's barrier for a busy core made these tests 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# fake cohorts and features folders


@dataclass(frozen=True, slots=True)
class Cohort:
    """Synthetic bags with known planted tiles."""

    bags: dict[str, NDArray[np.float32]]
    """Slide id → features (N, D)."""
    labels: dict[str, int]
    """Slide id → 0 (negative) or 1 (positive)."""
    planted: dict[str, NDArray[np.int64]]
    """Positive slide id → indices of its shifted tiles."""


def cohort(n_neg: int, n_pos: int, seed: int = 0, shift: float = 2.5) -> Cohort:
    rng = np.random.default_rng(seed)
    bags, labels, planted = {}, {}, {}
    for i in range(n_neg + n_pos):
        sid = f"s{i:03d}"
        n = int(rng.integers(24, 49))
        x = rng.standard_normal((n, D)).astype(np.float32)
        positive = i >= n_neg
        if positive:
            idx = np.sort(rng.choice(n, int(rng.integers(2, 5)), replace=False))
            x[idx, :4] += shift
            planted[sid] = idx
        bags[sid], labels[sid] = x, int(positive)
    return Cohort(bags, labels, planted)


def slide_path(root: Path, sid: str) -> str:
    return str(root / "slides" / f"{sid}.svs")


def write_features(
    root: Path,
    bags: Mapping[str, NDArray[np.float32]],
    *,
    failed: tuple[str, ...] = (),
    paths: Mapping[str, str] | None = None,
) -> Path:
    """A features folder as `slidemill features` writes it."""
    init_bundle(
        root / "encoder-bundle",
        encoder="tiny_cnn",
        encoder_kwargs={"width": D},
        head="mean_pool",
        class_names=PLACEHOLDER,
        mpp=2.0,
        tile_px=32,
        seed=0,
    )
    for sid, x in bags.items():
        folder = root / sid
        folder.mkdir()
        result = SlideResult(
            slide_id=sid,
            path=(paths or {}).get(sid, slide_path(root, sid)),
            status="done",
            class_names=PLACEHOLDER,
            probabilities=(0.5, 0.5),
            label=PLACEHOLDER[0],
            n_tiles=x.shape[0],
            provenance=Provenance(slidemill_version="test"),
        )
        (folder / "result.json").write_text(result.model_dump_json())
        group = zarr.open_group(store=str(folder / "slide.zarr"), mode="w", zarr_format=3)
        group.create_array("features", shape=x.shape, dtype="float32", chunks=x.shape)[...] = x
    for sid in failed:
        folder = root / sid
        folder.mkdir()
        result = SlideResult(
            slide_id=sid,
            path=slide_path(root, sid),
            status="failed",
            error=f"{sid}.svs: not a slide",
            provenance=Provenance(slidemill_version="test"),
        )
        (folder / "result.json").write_text(result.model_dump_json())
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def weights_sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / "weights.safetensors").read_bytes()).hexdigest()


NAMES = ("negative", "positive")
CONFIG = TrainConfig(
    head="abmil_gated",
    head_kwargs=SMALL,
    n_folds=4,
    max_epochs=25,
    patience=6,
    lr=1e-3,
    seed=0,
    device="cpu",
)


@dataclass(frozen=True, slots=True)
class Trained:
    root: Path
    cohort: Cohort
    report: TrainingReport


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """40 labelled slides (20/20) trained in 4 folds, plus: a labelled slide that failed, a
    labelled slide that does not exist, and a slide with features but no label."""
    root = tmp_path_factory.mktemp("train")
    data = cohort(20, 20, seed=1)
    bags = dict(data.bags)
    bags["unlabelled"] = cohort(1, 0, seed=9).bags["s000"]
    features = write_features(root / "features", bags, failed=("broken",))
    rows = [[sid, NAMES[y]] for sid, y in data.labels.items()]
    rows += [["broken", "positive"], ["ghost", "negative"]]
    labels = write_csv(root / "labels.csv", ["slide_id", "label"], rows)
    report = train_from_features(labels, features, root / "model", CONFIG)
    return Trained(root, data, report)


# --------------------------------------------------------------------------------------------
# splits and weights


def test_stratified_folds_spread_every_class_and_balance_fold_sizes() -> None:
    y = np.array([0] * 29 + [1] * 13 + [2] * 6)
    folds = stratified_folds(y, 5, seed=3)
    assert folds.shape == y.shape and set(folds.tolist()) == set(range(5))
    for c in range(3):
        per_fold = np.bincount(folds[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(folds, stratified_folds(y, 5, seed=3))
    assert not np.array_equal(folds, stratified_folds(y, 5, seed=4))


def test_a_class_smaller_than_the_folds_is_an_error() -> None:
    with pytest.raises(TrainingError, match="class 1 has 3"):
        stratified_folds(np.array([0] * 10 + [1] * 3), 5, seed=0)


def test_validation_split_takes_its_share_of_each_class() -> None:
    y = np.array([0] * 20 + [1] * 5 + [2] * 2 + [3])
    train, val = stratified_split(y, 0.2, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert np.union1d(train, val).tolist() == list(range(y.shape[0]))
    assert np.bincount(y[val], minlength=4).tolist() == [4, 1, 1, 0]  # a lone slide trains


def test_class_weights_balance_an_imbalanced_set() -> None:
    y = np.array([0] * 9 + [1] * 3)
    w = class_weights(y, 2)
    np.testing.assert_allclose(w, [12 / 18, 12 / 6])
    assert float(w[y].sum()) == pytest.approx(12.0)  # the weighted mean keeps the scale
    logits = torch.tensor([0.3, -0.2])
    plain = bag_loss(logits, 1, torch.ones(2))
    weighted = bag_loss(logits, 1, torch.tensor(w, dtype=torch.float32))
    assert float(weighted) == pytest.approx(2.0 * float(plain))


def _fold_ids(data: Cohort, every: int = 5) -> tuple[list[str], list[str]]:
    ids = sorted(data.labels)
    val = ids[::every]
    return [i for i in ids if i not in val], val


def test_class_weighting_changes_the_loss_of_an_imbalanced_set_only() -> None:
    cfg = TrainConfig(
        head="abmil_gated", head_kwargs=SMALL, max_epochs=2, patience=5, lr=1e-3, device="cpu"
    )
    unweighted = TrainConfig(
        head="abmil_gated",
        head_kwargs=SMALL,
        max_epochs=2,
        patience=5,
        lr=1e-3,
        class_weighting=False,
        device="cpu",
    )
    imbalanced = cohort(18, 6, seed=2)
    train, val = _fold_ids(imbalanced, every=4)
    a = train_fold(imbalanced.bags, imbalanced.labels, train, val, 2, cfg)
    b = train_fold(imbalanced.bags, imbalanced.labels, train, val, 2, unweighted)
    assert a.class_weights[1] > 1.0 > a.class_weights[0] and b.class_weights == (1.0, 1.0)
    assert a.history[0].train_loss != b.history[0].train_loss
    balanced = cohort(10, 10, seed=2)
    ids = sorted(balanced.labels)
    val_b = [*ids[:3], *ids[-3:]]  # 3 of each class: the training slides stay 7/7
    train_b = [i for i in ids if i not in val_b]
    c = train_fold(balanced.bags, balanced.labels, train_b, val_b, 2, cfg)
    d = train_fold(balanced.bags, balanced.labels, train_b, val_b, 2, unweighted)
    assert c.class_weights == (1.0, 1.0)
    assert [h.train_loss for h in c.history] == [h.train_loss for h in d.history]


# --------------------------------------------------------------------------------------------
# training


def test_early_stopping_stops_and_keeps_the_best_epoch() -> None:
    noise = cohort(12, 12, seed=5, shift=0.0)  # nothing to learn: validation loss soon rises
    train, val = _fold_ids(noise, every=3)
    cfg = TrainConfig(
        head="abmil_gated",
        head_kwargs=SMALL, max_epochs=80, patience=3, lr=5e-3, device="cpu", min_epochs=1,
        weight_averaging=0,
    )  # fmt: skip
    seen: list[EpochReport] = []
    result = train_fold(noise.bags, noise.labels, train, val, 2, cfg, on_epoch=seen.append)
    assert result.epochs_run < 80
    assert result.epochs_run == result.best_epoch + 3
    assert [r.epoch for r in seen] == list(range(1, result.epochs_run + 1))
    assert [r.last for r in seen] == [False] * (result.epochs_run - 1) + [True]
    best = seen[result.best_epoch - 1]
    assert best.val_loss == min(r.val_loss for r in seen) == result.best_val_loss
    # the head returned carries the best epoch's weights: its validation loss is that epoch's
    probs = predict_probabilities(result.head, noise.bags, val)
    w = np.array(result.class_weights)
    y = np.array([noise.labels[i] for i in val])
    ce = -np.log(probs[np.arange(len(val)), y])
    assert float((w[y] * ce).sum() / w[y].sum()) == pytest.approx(best.val_loss, rel=1e-5)
    assert seen[-1].val_loss > best.val_loss


def test_min_epochs_and_smoothing_keep_early_epochs_from_deciding() -> None:
    """No fold stops or picks its weights before `min_epochs`; the best epoch is that of the
    lowest mean of the last `smoothing` validation losses."""
    noise = cohort(12, 12, seed=5, shift=0.0)  # nothing to learn: validation loss soon rises
    train, val = _fold_ids(noise, every=3)
    plain = TrainConfig(
        head="abmil_gated",
        head_kwargs=SMALL, max_epochs=80, patience=3, lr=5e-3, device="cpu", min_epochs=1,
        weight_averaging=0,
    )  # fmt: skip
    early = train_fold(noise.bags, noise.labels, train, val, 2, plain)
    m = early.best_epoch + 5
    cfg = TrainConfig(
        head="abmil_gated",
        head_kwargs=SMALL, max_epochs=80, patience=3, lr=5e-3, device="cpu", min_epochs=m,
        smoothing=4, weight_averaging=0,
    )  # fmt: skip
    seen: list[EpochReport] = []
    result = train_fold(noise.bags, noise.labels, train, val, 2, cfg, on_epoch=seen.append)
    assert result.best_epoch >= m and result.epochs_run >= m + 3
    assert all(r.best_epoch == 0 for r in seen[: m - 1])
    losses = [r.val_loss for r in seen]
    smoothed = [np.mean(losses[max(0, e - 4) : e]) for e in range(1, len(losses) + 1)]
    assert result.best_val_loss == pytest.approx(smoothed[result.best_epoch - 1], rel=1e-9)
    assert result.best_val_loss == pytest.approx(min(smoothed[m - 1 :]), rel=1e-9)
    with pytest.raises(TrainingError, match="min_epochs"):
        TrainConfig(max_epochs=5, min_epochs=6)
    with pytest.raises(TrainingError, match="smoothing"):
        TrainConfig(smoothing=0)


def test_weight_averaging_keeps_the_mean_of_the_last_epochs_weights() -> None:
    data = cohort(6, 6, seed=3)
    train, val = _fold_ids(data, every=3)

    def last_weights(epochs: int) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(
            head="abmil_gated",
            head_kwargs=SMALL,
            max_epochs=epochs,
            lr=1e-3,
            device="cpu",
            weight_averaging=0,
        )
        return train_fold(data.bags, data.labels, train, val, 2, cfg).head.state_dict()

    cfg = TrainConfig(
        head="abmil_gated",
        head_kwargs=SMALL,
        max_epochs=6,
        weight_averaging=3,
        lr=1e-3,
        device="cpu",
    )  # the default schedule is fixed: every epoch runs
    result = train_fold(data.bags, data.labels, train, val, 2, cfg)
    assert result.epochs_run == 6 and result.best_epoch == 6
    ends = [last_weights(e) for e in (4, 5, 6)]
    for key, value in result.head.state_dict().items():
        mean = (ends[0][key] + ends[1][key] + ends[2][key]) / 3
        assert torch.allclose(value, mean, atol=1e-6), key
    assert not torch.allclose(result.head.state_dict()[key], ends[-1][key])
    probs = predict_probabilities(result.head, data.bags, val)
    y = np.array([data.labels[i] for i in val])
    w = np.array(result.class_weights)
    ce = -np.log(probs[np.arange(len(val)), y])
    assert float((w[y] * ce).sum() / w[y].sum()) == pytest.approx(result.best_val_loss, rel=1e-5)


def test_training_restores_global_random_state_and_flags() -> None:
    data = cohort(6, 6, seed=3)
    train, val = _fold_ids(data, every=3)
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    train_fold(data.bags, data.labels, train, val, 2, TrainConfig(max_epochs=1, device="cpu"))
    assert torch.equal(torch.get_rng_state(), torch_state)
    drawn = np.random.random()
    np.random.set_state(np_state)
    assert np.random.random() == drawn  # numpy's generator continues where it was
    assert random.getstate() == py_state
    assert not torch.are_deterministic_algorithms_enabled()


def test_clam_trains_with_its_instance_loss() -> None:
    data = cohort(5, 5, seed=4)
    train, val = _fold_ids(data, every=3)
    kwargs: dict[str, int | float | str | bool] = {"size": "small", "k_sample": 2}
    with_loss = TrainConfig(head="clam_sb", head_kwargs=kwargs, max_epochs=2, device="cpu")
    without = TrainConfig(
        head="clam_sb", head_kwargs=kwargs, max_epochs=2, instance_loss_weight=0.0, device="cpu"
    )
    a = train_fold(data.bags, data.labels, train, val, 2, with_loss)
    b = train_fold(data.bags, data.labels, train, val, 2, without)
    assert all(math.isfinite(h.train_loss) for h in a.history)
    assert a.history[0].train_loss != b.history[0].train_loss


def test_abmil_instance_supervision_lowers_the_tile_scores_of_negative_slides() -> None:
    """`instance_k` gives ABMIL CLAM's pseudo-label loss on its own tile classifier: trained the
    same way, the tiles of negative slides score far lower (no tile of a negative slide is
    lesion), while the planted tiles still rank above the rest."""
    data = cohort(12, 12, seed=1, shift=1.5)
    train, val = _fold_ids(data, every=3)
    negatives, ranks = [], []
    for kwargs in (SMALL, {**SMALL, "instance_k": 2}):
        cfg = TrainConfig(
            head="abmil_gated",
            head_kwargs=kwargs, max_epochs=30, lr=1e-3, device="cpu", weight_averaging=0,
            instance_loss_weight=0.5,
        )  # fmt: skip
        result = train_fold(data.bags, data.labels, train, val, 2, cfg)
        planted, scores, negative = [], [], []
        for sid, bag in data.bags.items():
            with torch.inference_mode():
                p = torch.softmax(result.head(torch.from_numpy(bag)).tile_logits, -1)[:, 1]
            mask = np.zeros(bag.shape[0], dtype=bool)
            mask[data.planted.get(sid, [])] = True
            planted.append(mask)
            scores.append(p.numpy())
            if data.labels[sid] == 0:
                negative.append(p.numpy())
        negatives.append(float(np.concatenate(negative).mean()))
        ranks.append(auroc(np.concatenate(planted), np.concatenate(scores)))
    assert type(result.head).__name__ == "InstanceABMIL"
    assert negatives[1] < 0.6 * negatives[0], negatives
    assert ranks[1] > 0.85, ranks
    with pytest.raises(TrainingError, match="instance_k"):
        train_fold(
            data.bags,
            data.labels,
            train,
            val,
            2,
            TrainConfig(head="abmil_gated", head_kwargs={"instance_k": -1}),
        )


def test_topk_linear_with_the_defaults_finds_rare_tiles_among_features_of_any_scale() -> None:
    """The small-cohort head under `train`'s default schedule: 16 slides of 300 tiles, 3 of a
    positive slide's tiles shifted, every slide's tiles shifted alike by as much again (its
    stain), the columns on natural scales from 1e-3 to 1e2 (as `handcrafted`'s are). Each fold
    standardises with its own training tiles, and the slides and the planted tiles are found."""
    rng = np.random.default_rng(3)
    scales = np.geomspace(1e-3, 1e2, D).astype(np.float32)
    bags, labels, planted = {}, {}, {}
    for i in range(16):
        sid = f"r{i:02d}"
        x = rng.standard_normal((300, D)).astype(np.float32)
        if i % 2:
            idx = rng.choice(300, 3, replace=False)
            x[idx, ::4] += 3.0
            planted[sid] = idx
        x += rng.standard_normal(D).astype(np.float32)  # the slide's stain: all its tiles alike
        bags[sid], labels[sid] = x * scales + 5.0 * scales, i % 2
    config = TrainConfig(head="topk_linear", n_folds=4, seed=0, device="cpu")
    cv = cross_validate(bags, labels, NAMES, config)
    assert cv.oof_auroc is not None and cv.oof_auroc >= 0.9, cv.oof_auroc
    flags, scores = [], []
    for f in cv.folds:
        head = f.training.head
        assert isinstance(head, TopKMIL)
        # its own training slides, each against its median tile (torch's: the lower middle)
        medians = {sid: torch.from_numpy(bags[sid]).median(dim=0).values.numpy() for sid in bags}
        seen = np.concatenate([bags[sid] - medians[sid] for sid in f.train_ids])
        np.testing.assert_allclose(head.input_mean.numpy(), seen.mean(0), rtol=1e-4, atol=1e-5)
        for sid in f.test_ids:
            if sid in planted:
                with torch.inference_mode():
                    scores.append(head(torch.from_numpy(bags[sid])).tile_logits[:, 1].numpy())
                flags.append(np.isin(np.arange(300), planted[sid]))
    assert auroc(np.concatenate(flags), np.concatenate(scores)) >= 0.9


def test_a_bad_head_setting_fails_before_training() -> None:
    data = cohort(4, 4)
    cfg = TrainConfig(head_kwargs={"no_such_setting": 1}, n_folds=2, device="cpu")
    seen: list[object] = []
    with pytest.raises(TrainingError, match="no_such_setting"):
        cross_validate(data.bags, data.labels, NAMES, cfg, on_epoch=seen.append)
    assert seen == []


def test_three_classes_cross_validate_without_a_threshold() -> None:
    rng = np.random.default_rng(0)
    bags = {f"t{i:02d}": rng.standard_normal((10, D)).astype(np.float32) for i in range(12)}
    labels = {sid: i % 3 for i, sid in enumerate(sorted(bags))}
    cfg = TrainConfig(head="abmil_gated", head_kwargs=SMALL, n_folds=2, max_epochs=2, device="cpu")
    cv = cross_validate(bags, labels, ("a", "b", "c"), cfg)
    assert cv.oof_probabilities.shape == (12, 3)
    np.testing.assert_allclose(cv.oof_probabilities.sum(axis=1), 1.0)
    assert [f.training.threshold for f in cv.folds] == [None, None]
    for f in cv.folds:  # every class in every held-out fold
        assert sorted({labels[s] for s in f.test_ids}) == [0, 1, 2]


def test_cross_validation_learns_and_attention_finds_the_planted_tiles(trained: Trained) -> None:
    cv = trained.report.cv
    assert cv.oof_auroc is not None and cv.oof_auroc >= 0.95
    assert all(f.test_auroc is not None and f.test_auroc >= 0.95 for f in cv.folds)
    # attention, from the bundle of the fold that held the slide out
    mass, top_hits = [], 0
    for f in cv.folds:
        model = load_bundle(trained.report.fold_dirs[f.fold], CPU)
        for sid in f.test_ids:
            if sid not in trained.cohort.planted:
                continue
            pred = predict_slide(model, trained.cohort.bags[sid])
            planted = trained.cohort.planted[sid]
            mass.append(float(pred.attention[planted].sum()))
            top_hits += int(int(np.argmax(pred.attention)) in planted)
    assert len(mass) == 20
    uniform = np.mean(
        [len(p) / len(trained.cohort.bags[s]) for s, p in trained.cohort.planted.items()]
    )
    assert float(np.mean(mass)) >= 0.75 > 5 * uniform
    assert top_hits >= 18


def test_training_writes_bundles_training_json_and_oof_predictions(trained: Trained) -> None:
    report = trained.report
    out = report.out
    cv = report.cv
    info = json.loads((out / "training.json").read_text())
    assert info["seed"] == 0 and info["hyperparameters"]["patience"] == 6
    assert info["class_names"] == list(NAMES)
    slides = {s["slide_id"]: s for s in info["slides"]}
    assert set(slides) == set(trained.cohort.labels)  # not the unlabelled, failed, ghost slides
    assert slides["s000"]["path"].endswith("s000.svs")
    assert info["labels"]["unlabelled"] == ["unlabelled"]
    reasons = {u["key"]: u["reason"] for u in info["labels"]["unmatched"]}
    assert set(reasons) == {"broken", "ghost"} and "status failed" in reasons["broken"]
    with (out / "oof_predictions.csv").open() as fh:
        oof = list(csv.DictReader(fh))
    assert list(oof[0]) == ["slide_id", "fold", "label", "prob_negative", "prob_positive"]
    assert sorted(r["slide_id"] for r in oof) == sorted(trained.cohort.labels)
    y = [int(r["label"] == "positive") for r in oof]
    assert auroc(y, [float(r["prob_positive"]) for r in oof]) == pytest.approx(cv.oof_auroc)
    for fold, entry in zip(cv.folds, info["folds"], strict=True):
        assert {r["slide_id"] for r in oof if int(r["fold"]) == fold.fold} == set(fold.test_ids)
        assert {s for s, v in slides.items() if v["fold"] == fold.fold} == set(fold.test_ids)
        assert not set(entry["validation"]) & set(fold.test_ids)
        assert 1 <= entry["best_epoch"] <= entry["epochs_run"] <= 25
        manifest = load_bundle(out / entry["bundle"], CPU).manifest
        assert manifest.threshold is not None and manifest.threshold == entry["threshold"]
        assert 0.0 < manifest.threshold < 1.0
        assert manifest.class_names == NAMES and manifest.feature_dim == D
        assert manifest.encoder == "tiny_cnn" and manifest.head == "abmil_gated"
    folds = [set(f.test_ids) for f in cv.folds]
    assert sum(len(f) for f in folds) == len(set().union(*folds)) == 40


def test_the_ensemble_bundle_averages_the_fold_probabilities(trained: Trained) -> None:
    report = trained.report
    ensemble = load_bundle(resolve_model_dir(report.out), CPU)
    assert isinstance(ensemble.head, EnsembleMIL)
    kwargs = ensemble.manifest.head_kwargs
    assert ensemble.manifest.head == "ensemble"
    assert kwargs["member"] == "abmil_gated" and kwargs["n_members"] == 4
    assert json.loads(str(kwargs["member_kwargs"])) == SMALL
    thresholds = [load_bundle(d, CPU).manifest.threshold for d in report.fold_dirs]
    assert all(t is not None for t in thresholds)
    assert ensemble.manifest.threshold == pytest.approx(
        float(np.mean([t or 0.0 for t in thresholds]))
    )
    folds = [load_bundle(d, CPU) for d in report.fold_dirs]
    for sid in ("s000", "s025", "s039"):
        x = trained.cohort.bags[sid]
        preds = [predict_slide(m, x) for m in folds]
        got = predict_slide(ensemble, x)
        np.testing.assert_allclose(
            got.probabilities, np.mean([p.probabilities for p in preds], axis=0), atol=1e-6
        )
        np.testing.assert_allclose(
            got.attention, np.mean([p.attention for p in preds], axis=0), atol=1e-7
        )
        np.testing.assert_allclose(
            got.tile_scores, np.mean([p.tile_scores for p in preds], axis=0), atol=1e-6
        )


def test_the_same_run_twice_gives_identical_weights(trained: Trained, tmp_path: Path) -> None:
    root = trained.root
    again = train_from_features(root / "labels.csv", root / "features", tmp_path / "m", CONFIG)
    first = trained.report
    for a, b in zip(first.fold_dirs, again.fold_dirs, strict=True):
        assert weights_sha(a) == weights_sha(b)
    assert first.fold_sha256 == again.fold_sha256
    assert first.ensemble_sha256 == again.ensemble_sha256
    assert (first.out / "oof_predictions.csv").read_bytes() == (
        tmp_path / "m" / "oof_predictions.csv"
    ).read_bytes()
    # and the seed matters: another seed gives other weights
    other = dataclasses.replace(CONFIG, max_epochs=2, seed=1)
    seeded = train_from_features(root / "labels.csv", root / "features", tmp_path / "o", other)
    assert weights_sha(seeded.fold_dirs[0]) != weights_sha(first.fold_dirs[0])


def test_resolve_model_dir(trained: Trained, tmp_path: Path) -> None:
    out = trained.report.out
    assert resolve_model_dir(out) == out / "ensemble"
    assert resolve_model_dir(out / "fold-0") == out / "fold-0"
    assert resolve_model_dir(tmp_path) == tmp_path
    (tmp_path / "training.json").write_text("{}")  # no ensemble: not a finished training folder
    assert resolve_model_dir(tmp_path) == tmp_path


def test_training_refuses_a_used_output_folder(trained: Trained) -> None:
    root = trained.root
    with pytest.raises(TrainingError, match="not empty"):
        train_from_features(root / "labels.csv", root / "features", trained.report.out, CONFIG)


# --------------------------------------------------------------------------------------------
# labels


@pytest.fixture(scope="module")
def small_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labels")
    data = cohort(4, 4, seed=7)
    bags = dict(data.bags)
    bags["x"], bags["x-2"] = data.bags["s000"], data.bags["s001"]  # two files named x.svs
    paths = {"x": str(root / "a" / "x.svs"), "x-2": str(root / "b" / "x.svs")}
    features = write_features(root / "features", bags, failed=("broken",), paths=paths)
    (features / "nofeat").mkdir()  # done, but its store never got written
    (features / "nofeat" / "result.json").write_text(
        (features / "s000" / "result.json").read_text().replace("s000", "nofeat")
    )
    return features


def test_labels_match_by_slide_id_then_path_then_stem(small_features: Path) -> None:
    root = small_features.parent
    slides = scan_features(small_features).slides
    assert slides["broken"].reason is not None and slides["s000"].reason is None
    assert "no features array" in str(slides["nofeat"].reason)
    assert slides["s000"].n_tiles == cohort(4, 4, seed=7).bags["s000"].shape[0]
    csv_path = write_csv(
        root / "labels.csv",
        ["slide_id", "path", "label"],
        [
            ["s000", "", "neg"],  # slide_id
            ["", slide_path(small_features, "s001"), "neg"],  # absolute path
            ["", "features/slides/s002.svs", "neg"],  # relative to the CSV's folder
            ["", "/elsewhere/s003.svs", "neg"],  # stem
            ["s004.svs", "", "pos"],  # stem of a file-name-like slide_id
            ["s005", "", "pos"],
            ["s005", "", "pos"],  # a duplicate, same label
            ["s006", "", "pos"],
            ["ghost", "", "pos"],  # no such slide
            ["broken", "", "pos"],  # failed slide
            ["", "/other/x.svs", "pos"],  # x and x-2: ambiguous stem
            ["s007", "", ""],  # empty label
            ["nofeat", "", "pos"],  # done, without features
        ],
    )
    match = match_labels(read_label_csv(csv_path), slides, base=root)
    assert dict(match.labels) == {
        "s000": "neg",
        "s001": "neg",
        "s002": "neg",
        "s003": "neg",
        "s004": "pos",
        "s005": "pos",
        "s006": "pos",
    }
    assert match.matched_by == {"slide_id": 4, "path": 2, "stem": 2}
    assert match.class_names == ("neg", "pos") and dict(match.class_counts) == {"neg": 4, "pos": 3}
    reasons = {u.key: u.reason for u in match.unmatched}
    assert set(reasons) == {"ghost", "broken", "/other/x.svs", "s007", "nofeat"}
    assert "no slide folder" in reasons["ghost"] and "status failed" in reasons["broken"]
    assert "several slides (x, x-2)" in reasons["/other/x.svs"]
    assert reasons["s007"] == "empty label"
    assert set(match.unlabelled) == {"s007", "x", "x-2"}
    assert len(match.duplicates) == 1
    text = "\n".join(match.warnings())
    assert "ghost" in text and "x-2" in text and "5 row(s) of the labels CSV" in text


def test_features_of_another_width_are_refused(tmp_path: Path) -> None:
    wide = {"w": np.zeros((3, D + 1), np.float32)}
    with pytest.raises(TrainingError, match=f"{D + 1}-d features.*{D}-d"):
        scan_features(write_features(tmp_path / "features", wide))
    with pytest.raises(TrainingError, match="not a features folder"):
        scan_features(tmp_path)


def test_label_errors_name_the_problem(small_features: Path, tmp_path: Path) -> None:
    slides = scan_features(small_features).slides
    two = write_csv(tmp_path / "a.csv", ["slide_id", "label"], [["s000", "neg"], ["s004", "pos"]])
    match = match_labels(read_label_csv(two), slides, classes=("pos", "neg"))
    assert match.class_names == ("pos", "neg")  # --classes gives the order
    with pytest.raises(
        LabelError, match=re.escape("line 2 (s000): label 'neg' is not one of the classes a, b")
    ):
        match_labels(read_label_csv(two), slides, classes=("a", "b"))
    one = write_csv(tmp_path / "b.csv", ["slide_id", "label"], [["s000", "neg"], ["s1", "neg"]])
    with pytest.raises(LabelError, match=r"at least 2 classes.*only 'neg'"):
        match_labels(read_label_csv(one), slides)
    clash = write_csv(tmp_path / "c.csv", ["slide_id", "label"], [["s000", "a"], ["s000", "b"]])
    with pytest.raises(LabelError, match="s000 is labelled 'a' on line 2 and 'b' on line 3"):
        match_labels(read_label_csv(clash), slides)
    no_key = write_csv(tmp_path / "d.csv", ["name", "label"], [["s000", "a"]])
    with pytest.raises(LabelError, match="'slide_id' or a 'path' column"):
        read_label_csv(no_key)
    with pytest.raises(LabelError, match="no such labels file"):
        read_label_csv(tmp_path / "missing.csv")


# --------------------------------------------------------------------------------------------
# the command


def test_train_command(small_features: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    rows = [[f"s{i:03d}", "pos" if i >= 4 else "neg"] for i in range(8)] + [["ghost", "neg"]]
    labels = write_csv(tmp_path / "labels.csv", ["slide_id", "label"], rows)
    args = ["train", "--labels", str(labels), "--features", str(small_features)]
    small = ["--folds", "2", "--epochs", "3", "--patience", "2", "--lr", "1e-3"]
    # the default head, through the folds' and the ensemble's bundles
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "m"), *small])
    assert res.exit_code == 0, res.output
    assert "held-out folds" in res.output and "out-of-fold AUROC" in res.output
    assert "ghost" in res.output and "no label" in res.output  # both kinds reported
    assert resolve_model_dir(tmp_path / "m") == tmp_path / "m" / "ensemble"
    ensemble = load_bundle(tmp_path / "m" / "ensemble", CPU)
    assert ensemble.manifest.head == "ensemble"
    bag = np.asarray(zarr.open_group(str(small_features / "s000" / "slide.zarr"))["features"])
    pred = predict_slide(ensemble, bag)
    assert pred.probabilities.sum() == pytest.approx(1.0) and pred.tile_scores.shape[0] == len(bag)
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    assert [f["epochs_run"] <= 3 for f in info["folds"]] == [True, True]

    bad = {
        "--classes": (["--classes", "a,b"], "'neg' is not one of the classes a, b"),
        "json": (["--head-kwargs", "{hidden"], "--head-kwargs is not JSON"),
        "head": (["--head", "nope"], "unknown MIL head 'nope'"),
        "folds": (["--folds", "5"], "at least 5 slides for 5 folds"),
    }
    for name, (extra, message) in bad.items():
        out = tmp_path / f"bad-{name}"
        res = runner.invoke(app, [*args, "--out", str(out), "--epochs", "1", *extra])
        assert res.exit_code == 2, (name, res.output)
        assert message in res.output, (name, res.output)
        assert not (out / "training.json").exists()


def test_bundles_carry_the_training_reference_and_calibration(trained: Trained) -> None:
    report = trained.report
    n_slides = len(report.cv.slide_ids)
    # every slide is held out once: its score comes from a reference that never saw it
    assert len(report.heldout_ood_scores) == n_slides
    assert report.ood_threshold == pytest.approx(np.percentile(report.heldout_ood_scores, 99))
    assert report.temperature is not None
    assert report.temperature.nll_after <= report.temperature.nll_before
    for bundle in (*report.fold_dirs, report.ensemble_dir):
        manifest = load_bundle(bundle, CPU).manifest
        assert manifest.format_version == 2
        assert manifest.reference is not None and manifest.calibration is not None
        assert manifest.reference.threshold == pytest.approx(report.ood_threshold)
        assert manifest.calibration.temperature == pytest.approx(report.temperature.temperature)
    ensemble = load_bundle(report.ensemble_dir, CPU)
    assert ensemble.reference is not None
    assert ensemble.manifest.reference is not None
    assert ensemble.manifest.reference.n_slides == n_slides
    # the training slides themselves lie inside the reference
    scores = [ood_score(ensemble.reference, trained.cohort.bags[s]) for s in report.cv.slide_ids]
    assert np.median(scores) < ensemble.manifest.reference.threshold


def test_the_train_command_s_defaults_are_train_config_s() -> None:
    """The thin CLI repeats the library's defaults as its options' (the help shows them): a
    default changed on one side only would make `slidemill train` and `train_from_features`
    train differently."""
    import typer.main

    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    cli = {p.name: p.default for p in train.params}
    fields = {
        "head": "head", "folds": "n_folds", "epochs": "max_epochs", "patience": "patience",
        "min_epochs": "min_epochs", "smoothing": "smoothing",
        "weight_averaging": "weight_averaging", "lr": "lr", "weight_decay": "weight_decay",
        "seed": "seed",
    }  # fmt: skip
    defaults = TrainConfig()
    assert {o: cli[o] for o in fields} == {o: getattr(defaults, f) for o, f in fields.items()}
