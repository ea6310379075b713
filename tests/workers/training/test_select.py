"""`train --select auto`: the selection rule and the nested splits on fake fits (no training),
then the command end to end on two tiny features folders, one whose features carry the label
and one of noise, and a slide missing from one folder.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from slidemill.cli import app
from slidemill.workers import (
    SelectionConfig,
    TrainConfig,
    TrainingError,
    load_bundle,
    nested_select,
    predict_slide,
    select_and_train,
    stratified_folds,
)
from slidemill.workers.training import (
    DEFAULT_HEADS,
    Candidate,
    Fit,
    Scores,
    choose,
    fold_seed,
    n_fits,
    score,
)
from tests.workers.training.test_train import NAMES, cohort, write_csv, write_features

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """As in test_train: tiny bags gain nothing from a second thread on two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# the rule


def cand(name: str, n_parameters: int = 10) -> Candidate:
    return Candidate(encoder=name, head="topk_linear", n_parameters=n_parameters)


def test_the_rule_ranks_auroc_then_log_loss_then_brier_then_size_then_order() -> None:
    a, b, c = cand("a", 50), cand("b", 10), cand("c", 10)
    figures = {
        "auroc": (Scores(0.9, 0.9, 0.3, 20), Scores(0.8, 0.1, 0.1, 20), None, "a"),
        "log_loss": (Scores(0.9, 0.5, 0.3, 20), Scores(0.9, 0.4, 0.4, 20), None, "b"),
        "brier": (Scores(0.9, 0.4, 0.2, 20), Scores(0.9, 0.4, 0.3, 20), None, "a"),
        "simpler": (Scores(0.9, 0.4, 0.2, 20), Scores(0.9, 0.4, 0.2, 20), None, "b"),
        "order": (None, Scores(0.9, 0.4, 0.2, 20), Scores(0.9, 0.4, 0.2, 20), "b"),
    }
    for rule, (sa, sb, sc, winner) in figures.items():
        cands = [x for x, s in ((a, sa), (b, sb), (c, sc)) if s is not None]
        scores = [s for s in (sa, sb, sc) if s is not None]
        choice = choose(cands, scores, "inner-CV")
        assert (cands[choice.index].encoder, choice.decided_by) == (winner, rule), choice
        assert choice.reason.startswith(f"{winner} + topk_linear ") and choice.reason.endswith(".")
    # an undefined AUROC ranks below any defined one, whatever its log-loss
    choice = choose([a, b], [Scores(None, 0.01, 0.01, 20), Scores(0.5, 2.0, 0.9, 20)], "CV")
    assert choice.index == 1 and choice.decided_by == "auroc" and "undefined" in choice.reason
    # figures equal to 9 decimals tie (sums of the same ranking in another order)
    near = choose([a, b], [Scores(0.75, 0.5, 0.2, 20), Scores(0.75 + 1e-13, 0.4, 0.2, 20)], "CV")
    assert near.index == 1 and near.decided_by == "log_loss"
    only = choose([a], [Scores(0.5, 0.7, 0.25, 20)], "CV")
    assert (only.index, only.decided_by) == (0, "only")


def test_score_is_scikit_learns() -> None:
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.2, 0.6, 0.55, 0.9, 0.7])
    s = score(y, np.stack([1 - p1, p1], axis=1))
    assert s.auroc == pytest.approx(roc_auc_score(y, p1))
    assert s.log_loss == pytest.approx(log_loss(y, p1))
    assert s.brier == pytest.approx(brier_score_loss(y, p1))
    assert score(np.array([1, 1]), np.array([[0.4, 0.6], [0.3, 0.7]])).auroc is None


def test_selection_settings_are_checked() -> None:
    assert SelectionConfig().heads == DEFAULT_HEADS and SelectionConfig().inner_folds == 3
    assert n_fits(6, 5, 3) == 120
    with pytest.raises(TrainingError, match="at least 2 inner folds"):
        SelectionConfig(inner_folds=1)
    with pytest.raises(TrainingError, match="mean_pool given twice"):
        SelectionConfig(heads=("mean_pool", "topk_linear", "mean_pool"))


# --------------------------------------------------------------------------------------------
# nested selection on fake fits


def _noise(name: str, sid: str) -> float:
    return (zlib.crc32(f"{name}/{sid}".encode()) % 1000) / 1000.0


LABELS = {f"s{i:02d}": int(i % 3 == 0) for i in range(30)}  # 10 positive, 20 negative


def fake_predict(fits: list[Fit]) -> Callable[[Fit], np.ndarray]:
    """'good' ranks every slide right, 'noise' guesses; 'cheat' is perfect in the outer (plain
    CV) fits only and guesses in the inner ones; 'good-copy' is 'good' under another name."""

    def predict(fit: Fit) -> np.ndarray:
        fits.append(fit)
        name = fit.candidate.encoder
        p1 = []
        for sid in fit.test_ids:
            truth = 0.7 if LABELS[sid] else 0.3
            perfect = name.startswith("good") or (name == "cheat" and fit.inner_fold is None)
            p1.append(truth if perfect else _noise(name, sid))
        p = np.array(p1)
        return np.stack([1 - p, p], axis=1)

    return predict


def test_nested_selection_picks_the_informative_candidate_from_inner_folds_only() -> None:
    fits: list[Fit] = []
    candidates = [cand("noise", 1), cand("good", 100), cand("cheat", 1)]
    predict = fake_predict(fits)
    result = nested_select(LABELS, 2, candidates, predict, outer_folds=5, inner_folds=3, seed=4)
    ids = sorted(LABELS)
    y = np.array([LABELS[i] for i in ids])
    # the outer folds are `train`'s
    np.testing.assert_array_equal(result.fold_of, stratified_folds(y, 5, 4))
    assert len(fits) == n_fits(3, 5, 3) and [f.index for f in fits] == list(range(len(fits)))
    assert {f.total for f in fits} == {len(fits)}
    for k, fold in enumerate(result.outer):
        held_out = {ids[i] for i in np.flatnonzero(result.fold_of == k)}
        assert set(fold.test_ids) == held_out
        assert set(fold.train_ids) == set(ids) - held_out
        for c in candidates:
            mine = [f for f in fits if f.outer_fold == k and f.candidate == c]
            inner = [f for f in mine if f.inner_fold is not None]
            assert len(inner) == 3
            for f in inner:  # the outer test fold is never given to the inner CV
                assert not held_out & (set(f.train_ids) | set(f.test_ids))
                assert not set(f.train_ids) & set(f.test_ids)
                assert list(f.train_ids) == sorted(f.train_ids)
                assert f.seed not in {fold_seed(4, j) for j in range(5)}
            # the inner test folds partition the outer training part
            tested = [sid for f in inner for sid in f.test_ids]
            assert sorted(tested) == sorted(fold.train_ids)
            (plain,) = [f for f in mine if f.inner_fold is None]
            assert plain.train_ids == fold.train_ids and plain.test_ids == fold.test_ids
            assert plain.seed == fold_seed(4, k)  # as `train` seeds its fold k
        # the inner CV, which never sees the cheat's outer-fit skill, picks 'good'
        assert candidates[fold.choice.index].encoder == "good", fold.choice
    assert result.picks() == (0, 5, 0)
    # the nested estimate is the inner picks' outer predictions: 'good' everywhere
    assert result.nested.auroc == pytest.approx(1.0)
    # the plain CV over all slides sees the cheat as perfect too: a tie with 'good' on every
    # figure, broken by size; the candidate trained is the cheat, the estimate stays honest
    assert result.plain[1] == result.plain[2] and result.plain[2].auroc == pytest.approx(1.0)
    assert result.chosen.encoder == "cheat" and result.choice.decided_by == "simpler"
    assert result.plain[0].auroc is not None and result.plain[0].auroc < 0.9
    record = result.to_json()
    assert record["chosen"]["name"] == "cheat + topk_linear"
    assert [c["picked_in_outer_folds"] for c in record["candidates"]] == [0, 5, 0]
    assert record["n_fits"] == len(fits)
    assert "Nested estimate of the procedure: AUROC 1.000" in result.summary()


def test_equal_candidates_go_to_the_simpler_then_to_the_first_given() -> None:
    fits: list[Fit] = []
    twins = [cand("good", 100), cand("good-copy", 100), cand("good-small", 5)]
    result = nested_select(LABELS, 2, twins, fake_predict(fits), outer_folds=3, inner_folds=2)
    assert result.chosen.encoder == "good-small" and result.choice.decided_by == "simpler"
    assert "5 vs 100 head parameters" in result.choice.reason
    result = nested_select(LABELS, 2, twins[:2], fake_predict(fits), outer_folds=3, inner_folds=2)
    assert result.chosen.encoder == "good" and result.choice.decided_by == "order"
    assert result.picks() == (3, 0)


def test_an_inner_cv_too_small_for_its_folds_says_so() -> None:
    few = {f"s{i}": int(i < 3) for i in range(10)}  # 3 positives: 2 per outer training part
    with pytest.raises(TrainingError, match=r"inner CV of outer fold 1 of 3.*--inner-folds"):
        nested_select(few, 2, [cand("good")], fake_predict([]), outer_folds=3, inner_folds=3)


# --------------------------------------------------------------------------------------------
# the command end to end

SMALL = ["--folds", "3", "--inner-folds", "2", "--epochs", "8", "--lr", "2e-3"]


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 slides (9/9); `signal`'s positive bags carry shifted tiles, `noise` holds standard
    normal bags of the same sizes for the same slides."""
    root = tmp_path_factory.mktemp("select")
    data = cohort(9, 9, seed=2, shift=4.0)
    write_features(root / "signal", data.bags)
    rng = np.random.default_rng(11)
    noise = {s: rng.standard_normal(x.shape).astype(np.float32) for s, x in data.bags.items()}
    write_features(root / "noise", noise)
    rows = [[sid, NAMES[y]] for sid, y in data.labels.items()]
    write_csv(root / "labels.csv", ["slide_id", "label"], rows)
    return root


def test_train_select_auto_chooses_the_informative_encoder(two_folders: Path) -> None:
    root = two_folders
    out = root / "model"
    args = ["train", "--labels", str(root / "labels.csv"), "--out", str(out)]
    folders = ["--features", str(root / "noise"), "--features", str(root / "signal")]
    heads = ["--heads", "topk_linear,mean_pool"]
    res = CliRunner().invoke(app, [*args, *folders, "--select", "auto", *heads, *SMALL])
    assert res.exit_code == 0, res.output
    assert "candidates: inner CV" in res.output and "nested estimate" in res.output
    assert "chose signal + " in res.output and "held-out folds" in res.output

    info = json.loads((out / "training.json").read_text())
    sel = info["selection"]
    assert sel["chosen"]["encoder"] == "signal" and info["head"] == sel["chosen"]["head"]
    assert info["features_dir"] == str((root / "signal").resolve())
    assert [c["name"] for c in sel["candidates"]] == [
        "noise + topk_linear", "noise + mean_pool", "signal + topk_linear", "signal + mean_pool",
    ]  # fmt: skip
    assert (sel["outer_folds"], sel["inner_folds"], sel["n_fits"]) == (3, 2, 4 * 3 * 3)
    assert sum(c["picked_in_outer_folds"] for c in sel["candidates"]) == 3
    by_name = {c["name"]: c for c in sel["candidates"]}
    chosen = by_name[sel["chosen"]["name"]]
    for noise in ("noise + topk_linear", "noise + mean_pool"):
        assert chosen["cross_validation"]["auroc"] > by_name[noise]["cross_validation"]["auroc"]
        assert len(by_name[noise]["inner"]) == 3
    assert sel["nested"]["auroc"] is not None and len(sel["nested"]["outer_folds"]) == 3
    assert [e["name"] for e in sel["encoders"]] == ["noise", "signal"]
    # the chosen candidate's CV in the selection is the training `train` then runs
    assert info["oof_auroc"] == pytest.approx(chosen["cross_validation"]["auroc"])
    oof = np.loadtxt(out / "oof_predictions.csv", delimiter=",", skiprows=1, usecols=(3, 4))
    labels = np.genfromtxt(out / "oof_predictions.csv", delimiter=",", skip_header=1, dtype=str)
    y = (labels[:, 2] == "positive").astype(int)
    assert score(y, oof).log_loss == pytest.approx(chosen["cross_validation"]["log_loss"])

    ensemble = load_bundle(out / "ensemble", CPU)
    assert ensemble.manifest.head == "ensemble"
    for bundle in (out / "ensemble", out / "fold-0"):
        description = load_bundle(bundle, CPU).manifest.description
        assert "Chosen by nested cross-validation (3 outer, 2 inner folds)" in description
        assert "noise + mean_pool (inner-CV AUROC" in description
        assert "Nested estimate of the procedure: AUROC" in description
    bag = np.asarray(zarr.open_group(str(root / "signal" / "s000" / "slide.zarr"))["features"])
    pred = predict_slide(ensemble, bag)
    assert pred.probabilities.sum() == pytest.approx(1.0)


def test_a_slide_missing_from_one_folder_fails_in_one_line(
    two_folders: Path, tmp_path: Path
) -> None:
    root = two_folders
    data = cohort(9, 9, seed=2, shift=4.0)
    partial = {s: x for s, x in data.bags.items() if s != "s004"}
    write_features(tmp_path / "short", partial, failed=("s004",))
    config = TrainConfig(n_folds=3, max_epochs=1, device="cpu")
    dirs = [root / "signal", tmp_path / "short"]
    with pytest.raises(TrainingError) as err:
        select_and_train(root / "labels.csv", dirs, tmp_path / "m", config)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'short'}: labelled slide s004")
    assert "status failed" in message and str(root / "signal") in message
    assert not (tmp_path / "m").exists()
    # through the command: one line, the usage exit status, nothing written
    gone = {s: x for s, x in data.bags.items() if s != "s007"}
    write_features(tmp_path / "gone", gone)
    args = ["train", "--labels", str(root / "labels.csv"), "--out", str(tmp_path / "m2")]
    folders = ["--features", str(tmp_path / "gone"), "--features", str(root / "signal")]
    res = CliRunner().invoke(app, [*args, *folders, "--select", "auto", *SMALL])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if "error:" in line]
    assert len(lines) == 1 and "labelled slide s007 has no slide folder here" in lines[0]
    assert str(tmp_path / "gone") in res.output.replace("\n", "")
    assert not (tmp_path / "m2").exists()


def test_select_flags_are_checked_before_training(two_folders: Path, tmp_path: Path) -> None:
    root = two_folders
    args = ["train", "--labels", str(root / "labels.csv"), "--out", str(tmp_path / "m")]
    one = ["--features", str(root / "signal")]
    two = [*one, "--features", str(root / "noise")]
    cases = {
        "two folders": ([*two], "2 --features folders: give one, or add --select auto"),
        "heads": ([*one, "--heads", "mean_pool"], "--heads is for --select auto"),
        "inner": ([*one, "--inner-folds", "2"], "--inner-folds is for --select auto"),
        "head": ([*two, "--select", "auto", "--head", "mean_pool"], "--head trains one head"),
        "kwargs": ([*two, "--select", "auto", "--head-kwargs", "{}"], "drop --head-kwargs"),
        "unknown": ([*two, "--select", "auto", "--heads", "nope"], "unknown MIL head 'nope'"),
        "same": ([*one, *one, "--select", "auto"], "features folder given twice"),
    }
    for name, (extra, message) in cases.items():
        res = CliRunner().invoke(app, [*args, *extra])
        assert res.exit_code == 2, (name, res.output)
        assert message in res.output, (name, res.output)
        assert not (tmp_path / "m").exists(), name


def test_the_select_options_defaults_are_selection_configs() -> None:
    import typer.main

    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    params = {p.name: p for p in train.params}
    assert params["inner_folds"].default == SelectionConfig().inner_folds
    assert ",".join(DEFAULT_HEADS) in (params["heads"].help or "")
    assert params["select"].default is None
