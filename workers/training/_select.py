"""Choosing an encoder/head pair by nested cross-validation on the cohort's own slides; no
training and no I/O here: every fit is asked of a `predict` callable, so the splits and the rule
are tested without a model.

- Outer folds: `stratified_folds` over every labelled slide, with `train`'s seed, so outer fold k
  holds out the slides `train` holds out in its fold k.
- Inside each outer training part an inner stratified CV scores every candidate: its inner
  out-of-fold predictions are pooled and scored (`score`); `choose` picks one by `RULE`. The outer
  test fold is then predicted by the candidate picked there, trained on the whole outer training
  part. The outer test folds' predictions, pooled, estimate the whole select-then-train
  procedure: no slide's prediction came from a choice that saw it.
- A plain CV on all slides (the outer folds themselves) scores every candidate once more;
  `choose` on those figures picks the candidate that is trained. The outer test folds need no
  fits of their own: a candidate trained on outer training part k and asked for outer fold k is
  that plain CV's fold k.

A run makes candidates × outer folds × (inner folds + 1) fits (`n_fits`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn import metrics

from slidemill.workers.errors import TrainingError
from slidemill.workers.metrics import UndefinedMetricError, brier_score, slide_auroc
from slidemill.workers.training._config import FloatArray, IntArray
from slidemill.workers.training._splits import fold_seed, stratified_folds

DEFAULT_HEADS = ("topk_linear", "abmil_gated", "mean_pool")
"""The heads `train --select auto` tries on each features folder unless given others."""

RULE = (
    "the highest pooled out-of-fold slide AUROC; on a tie the lower log-loss, then the lower "
    "Brier score, then the simpler candidate (fewer trainable head parameters at its features' "
    "width), then the first in the order given"
)
"""How `choose` ranks candidates (said in `training.json` and the docs)."""

_TAG = 0x5E1EC7
"""Mixed into the inner CV's seeds so that none equals a `fold_seed` of the outer folds."""
_DIGITS = 9
"""Figures equal to this many decimals tie (AUROCs of the same ranking are equal, their
floating-point sums need not be to the last bit)."""

Decider = Literal["only", "auroc", "log_loss", "brier", "simpler", "order"]


@dataclass(frozen=True, slots=True)
class SelectionConfig:
    """What `train --select auto` chooses among, and its inner cross-validation; the outer
    folds are `TrainConfig.n_folds`."""

    heads: tuple[str, ...] = DEFAULT_HEADS
    """Registered MIL heads tried on every features folder, each with its default settings."""
    inner_folds: int = 3
    """Folds of the inner CV run inside every outer training part."""

    def __post_init__(self) -> None:
        if self.inner_folds < 2:
            raise TrainingError(f"need at least 2 inner folds, got {self.inner_folds}")
        if not self.heads:
            raise TrainingError("no heads to choose among")
        twice = sorted({h for h in self.heads if self.heads.count(h) > 1})
        if twice:
            raise TrainingError(f"head(s) {', '.join(twice)} given twice")


def n_fits(n_candidates: int, outer_folds: int, inner_folds: int) -> int:
    """Heads a selection trains: candidates × outer folds × (inner folds + 1)."""
    return n_candidates * outer_folds * (inner_folds + 1)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An encoder/head pair."""

    encoder: str
    """Name of the features folder it reads (one encoder's features)."""
    head: str
    """Registered MIL head."""
    n_parameters: int
    """Trainable parameters of the head at the features' width: the simpler has fewer."""

    @property
    def name(self) -> str:
        """'encoder + head'."""
        return f"{self.encoder} + {self.head}"


@dataclass(frozen=True, slots=True)
class Scores:
    """Figures of pooled out-of-fold slide predictions."""

    auroc: float | None
    """Slide AUROC (`slide_auroc`); None when undefined."""
    log_loss: float
    """Mean cross-entropy of the true class (scikit-learn's `log_loss`)."""
    brier: float
    """Brier score (`brier_score`)."""
    n_slides: int
    """Slides scored."""

    def to_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        return {
            "auroc": self.auroc,
            "log_loss": self.log_loss,
            "brier": self.brier,
            "n_slides": self.n_slides,
        }


def score(y: Sequence[int] | IntArray, probabilities: FloatArray) -> Scores:
    """AUROC, log-loss and Brier score of probabilities (n, C) against class indices y (n,)."""
    labels = np.asarray(y, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    try:
        auc: float | None = slide_auroc(labels, p)
    except UndefinedMetricError:
        auc = None
    with warnings.catch_warnings():  # float32-trained softmax rows may miss 1 by an ulp or two
        warnings.filterwarnings("ignore", "The y_pred values do not sum to one")
        loss = float(metrics.log_loss(labels, p, labels=np.arange(p.shape[1])))
    return Scores(auc, loss, brier_score(labels, p), int(labels.shape[0]))


def mean_scores(scores: Sequence[Scores]) -> Scores:
    """The mean of each figure over `scores` (AUROC over those where it is defined; None when it
    is nowhere), and the mean number of slides rounded."""
    aucs = [s.auroc for s in scores if s.auroc is not None]
    return Scores(
        auroc=float(np.mean(aucs)) if aucs else None,
        log_loss=float(np.mean([s.log_loss for s in scores])),
        brier=float(np.mean([s.brier for s in scores])),
        n_slides=round(float(np.mean([s.n_slides for s in scores]))),
    )


@dataclass(frozen=True, slots=True)
class Choice:
    """The candidate a set of figures picks, and why."""

    index: int
    """Index of the chosen candidate."""
    decided_by: Decider
    """The first part of `RULE` that set it apart from the runner-up ('only': no other)."""
    reason: str
    """One sentence."""


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def _key(candidate: Candidate, s: Scores, order: int) -> tuple[float, float, float, int, int]:
    auc = -round(s.auroc, _DIGITS) if s.auroc is not None else math.inf
    return (auc, round(s.log_loss, _DIGITS), round(s.brier, _DIGITS), candidate.n_parameters, order)


def choose(candidates: Sequence[Candidate], scores: Sequence[Scores], what: str) -> Choice:
    """The candidate `RULE` ranks first among `scores` (one per candidate, in order); `what`
    names the figures in the reason ('inner-CV', 'cross-validation')."""
    if not candidates or len(candidates) != len(scores):
        raise TrainingError(f"{len(candidates)} candidates for {len(scores)} sets of figures")
    keys = [_key(c, s, i) for i, (c, s) in enumerate(zip(candidates, scores, strict=True))]
    ranked = sorted(range(len(keys)), key=keys.__getitem__)
    w = ranked[0]
    win, ws = candidates[w], scores[w]
    if len(ranked) == 1:
        return Choice(w, "only", f"{win.name} is the only candidate.")
    r = ranked[1]
    run, rs = candidates[r], scores[r]
    part = next(i for i in range(5) if keys[w][i] != keys[r][i])
    if part == 0:
        return Choice(
            w,
            "auroc",
            f"{win.name} has the highest {what} AUROC ({_fmt(ws.auroc)}; next "
            f"{run.name}, {_fmt(rs.auroc)}).",
        )
    tie = f"{win.name} ties {run.name} on {what} AUROC ({_fmt(ws.auroc)})"
    if part == 1:
        return Choice(
            w,
            "log_loss",
            f"{tie} and has the lower log-loss ({ws.log_loss:.3f} vs {rs.log_loss:.3f}).",
        )
    if part == 2:
        return Choice(
            w,
            "brier",
            f"{tie} and log-loss ({ws.log_loss:.3f}) and has the lower Brier score "
            f"({ws.brier:.3f} vs {rs.brier:.3f}).",
        )
    if part == 3:
        return Choice(
            w,
            "simpler",
            f"{tie}, log-loss and Brier score, and is the simpler ({win.n_parameters} vs "
            f"{run.n_parameters} head parameters).",
        )
    return Choice(
        w, "order", f"{tie}, every other figure and size, and comes first in the order given."
    )


@dataclass(frozen=True, slots=True)
class Fit:
    """One fit a selection asks for: train `candidate` on `train_ids`, predict `test_ids`."""

    candidate: Candidate
    """What to train."""
    train_ids: tuple[str, ...]
    """Slides to train on (sorted); the fit holds its own validation share back from them."""
    test_ids: tuple[str, ...]
    """Slides to predict (sorted)."""
    outer_fold: int
    """The outer fold whose training part this is, from 0."""
    inner_fold: int | None
    """The inner fold held out, from 0; None: the outer fold itself (the plain CV's fold)."""
    seed: int
    """Seed of the fit: `fold_seed(seed, outer_fold)` for an outer fold, as `train` uses."""
    index: int
    """This fit's place in the run, from 0."""
    total: int
    """Fits in the run (`n_fits`)."""


Predict = Callable[[Fit], FloatArray]
"""Trains `fit.candidate` on `fit.train_ids` → class probabilities of `fit.test_ids`.
Shape: len(test_ids) x C."""


@dataclass(frozen=True, slots=True, eq=False)
class OuterFold:
    """One outer fold: the inner CV's figures on its training part, the choice they made, and
    the held-out predictions of the chosen candidate (`eq=False`: an array)."""

    fold: int
    """Outer fold index, from 0."""
    train_ids: tuple[str, ...]
    """The outer training part (sorted): every fit of the inner CV draws only from it."""
    test_ids: tuple[str, ...]
    """The outer test fold (sorted)."""
    inner: tuple[Scores, ...]
    """Each candidate's pooled inner out-of-fold figures on `train_ids`, in candidate order."""
    choice: Choice
    """The candidate `inner` picks."""
    test_probabilities: FloatArray
    """The chosen candidate's predictions of `test_ids`. Shape: n_test x C."""


@dataclass(frozen=True, slots=True, eq=False)
class NestedSelection:
    """What `nested_select` returns (`eq=False`: arrays)."""

    candidates: tuple[Candidate, ...]
    """What was chosen among, in the order given."""
    slide_ids: tuple[str, ...]
    """Every labelled slide, sorted."""
    y: IntArray
    """Class index per slide. Shape: n_slides."""
    fold_of: IntArray
    """Outer fold of each slide (`stratified_folds`, as `train`'s folds). Shape: n_slides."""
    inner_folds: int
    """Folds of each inner CV."""
    seed: int
    """The run's seed."""
    outer: tuple[OuterFold, ...]
    """One per outer fold."""
    plain: tuple[Scores, ...]
    """Each candidate's figures from a plain CV on all slides over the outer folds."""
    choice: Choice
    """The candidate `plain` picks: the one trained."""
    nested: Scores
    """Figures of the outer test folds' predictions, each fold's by the candidate its inner CV
    picked: the estimate of the whole select-then-train procedure."""
    seconds: tuple[float, ...]
    """Wall time of each candidate's fits, in candidate order."""

    @property
    def chosen(self) -> Candidate:
        """The candidate trained."""
        return self.candidates[self.choice.index]

    @property
    def outer_folds(self) -> int:
        """Number of outer folds."""
        return len(self.outer)

    def inner_mean(self, index: int) -> Scores:
        """Candidate `index`'s inner-CV figures, averaged over the outer folds."""
        return mean_scores([f.inner[index] for f in self.outer])

    def picks(self) -> tuple[int, ...]:
        """How many outer folds' inner CV picked each candidate."""
        return tuple(
            sum(f.choice.index == i for f in self.outer) for i in range(len(self.candidates))
        )

    def summary(self) -> str:
        """The candidates, their figures, the choice and the nested estimate, in a sentence or
        three (a bundle's description)."""
        figures = "; ".join(
            f"{c.name} (inner-CV AUROC {_fmt(self.inner_mean(i).auroc)}, CV AUROC "
            f"{_fmt(self.plain[i].auroc)}, picked in {n} of {self.outer_folds} outer folds)"
            for i, (c, n) in enumerate(zip(self.candidates, self.picks(), strict=True))
        )
        return (
            f"Chosen by nested cross-validation ({self.outer_folds} outer, {self.inner_folds} "
            f"inner folds) among: {figures}. {self.choice.reason} Nested estimate of the "
            f"procedure: AUROC {_fmt(self.nested.auroc)}, log-loss {self.nested.log_loss:.3f} "
            f"over {self.nested.n_slides} slides."
        )

    def to_json(self) -> dict[str, Any]:
        """training.json's `selection`, less what only the run knows (its folders)."""
        picks = self.picks()
        return {
            "rule": RULE,
            "outer_folds": self.outer_folds,
            "inner_folds": self.inner_folds,
            "seed": self.seed,
            "n_fits": n_fits(len(self.candidates), self.outer_folds, self.inner_folds),
            "candidates": [
                {
                    "name": c.name,
                    "encoder": c.encoder,
                    "head": c.head,
                    "n_parameters": c.n_parameters,
                    "inner_mean": self.inner_mean(i).to_json(),
                    "inner": [f.inner[i].to_json() for f in self.outer],
                    "cross_validation": self.plain[i].to_json(),
                    "picked_in_outer_folds": picks[i],
                    "seconds": round(self.seconds[i], 3),
                }
                for i, c in enumerate(self.candidates)
            ],
            "chosen": {
                "name": self.chosen.name,
                "encoder": self.chosen.encoder,
                "head": self.chosen.head,
                "decided_by": self.choice.decided_by,
                "reason": self.choice.reason,
            },
            "nested": {
                **self.nested.to_json(),
                "outer_folds": [
                    {
                        "fold": f.fold,
                        "n_train": len(f.train_ids),
                        "n_test": len(f.test_ids),
                        "chosen": self.candidates[f.choice.index].name,
                        "decided_by": f.choice.decided_by,
                        "reason": f.choice.reason,
                    }
                    for f in self.outer
                ],
            },
        }


@dataclass(frozen=True, slots=True, eq=False)
class SelectionRecord:
    """What a selection adds to the training folder of the candidate it chose (`eq=False`: a
    mapping)."""

    summary: str
    """The candidates, figures, choice and nested estimate in a few sentences: appended to the
    description of every bundle written."""
    record: Mapping[str, Any]
    """`training.json`'s `selection` object."""


def _seed(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


def _probabilities(fit: Fit, p: FloatArray, n_classes: int) -> FloatArray:
    out = np.asarray(p, dtype=np.float64)
    if out.shape != (len(fit.test_ids), n_classes) or not np.all(np.isfinite(out)):
        raise TrainingError(
            f"{fit.candidate.name}: expected finite probabilities of shape "
            f"({len(fit.test_ids)}, {n_classes}), got {out.shape}"
        )
    return out


def nested_select(
    labels: Mapping[str, int],
    n_classes: int,
    candidates: Sequence[Candidate],
    predict: Predict,
    *,
    outer_folds: int = 5,
    inner_folds: int = 3,
    seed: int = 0,
    on_fit: Callable[[Fit], None] | None = None,
) -> NestedSelection:
    """Nested cross-validation of `candidates` on `labels` (slide id → class index), every fit
    asked of `predict`; `on_fit` sees each fit before it is made. See the module's docstring."""
    cands = tuple(candidates)
    if not cands:
        raise TrainingError("no candidates to choose among")
    names = [c.name for c in cands]
    if len(set(names)) != len(names):
        raise TrainingError(f"candidates given twice among {names}")
    ids = sorted(labels)
    y = np.array([labels[i] for i in ids], dtype=np.int64)
    fold_of = stratified_folds(y, outer_folds, seed)
    total = n_fits(len(cands), outer_folds, inner_folds)
    count = 0
    seconds = [0.0] * len(cands)

    def run(c: Candidate, train: IntArray, test: IntArray, k: int, j: int | None) -> FloatArray:
        nonlocal count
        fit = Fit(
            candidate=c,
            train_ids=tuple(ids[i] for i in train),
            test_ids=tuple(ids[i] for i in test),
            outer_fold=k,
            inner_fold=j,
            seed=fold_seed(seed, k) if j is None else _seed(seed, k, _TAG, j + 1),
            index=count,
            total=total,
        )
        if on_fit is not None:
            on_fit(fit)
        count += 1
        started = time.perf_counter()
        p = _probabilities(fit, predict(fit), n_classes)
        seconds[cands.index(c)] += time.perf_counter() - started
        return p

    plain = [np.zeros((len(ids), n_classes), dtype=np.float64) for _ in cands]
    outer: list[OuterFold] = []
    for k in range(outer_folds):
        rest = np.flatnonzero(fold_of != k)
        test = np.flatnonzero(fold_of == k)
        try:
            inner_of = stratified_folds(y[rest], inner_folds, _seed(seed, k, _TAG))
        except TrainingError as err:
            raise TrainingError(
                f"the inner CV of outer fold {k + 1} of {outer_folds}: {err}; or fewer "
                "--inner-folds"
            ) from err
        inner: list[Scores] = []
        for c in cands:
            oof = np.zeros((rest.shape[0], n_classes), dtype=np.float64)
            for j in range(inner_folds):
                oof[inner_of == j] = run(c, rest[inner_of != j], rest[inner_of == j], k, j)
            inner.append(score(y[rest], oof))
        picked = choose(cands, inner, "inner-CV")
        for i, c in enumerate(cands):
            plain[i][test] = run(c, rest, test, k, None)
        outer.append(
            OuterFold(
                fold=k,
                train_ids=tuple(ids[i] for i in rest),
                test_ids=tuple(ids[i] for i in test),
                inner=tuple(inner),
                choice=picked,
                test_probabilities=plain[picked.index][test].copy(),
            )
        )
    nested = np.zeros((len(ids), n_classes), dtype=np.float64)
    for f in outer:
        nested[fold_of == f.fold] = f.test_probabilities
    plain_scores = tuple(score(y, p) for p in plain)
    return NestedSelection(
        candidates=cands,
        slide_ids=tuple(ids),
        y=y,
        fold_of=fold_of,
        inner_folds=inner_folds,
        seed=seed,
        outer=tuple(outer),
        plain=plain_scores,
        choice=choose(cands, plain_scores, "cross-validation"),
        nested=score(y, nested),
        seconds=tuple(seconds),
    )
