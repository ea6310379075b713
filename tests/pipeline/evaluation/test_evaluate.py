"""Evaluation: the report over test folds, its contract and its rendering, and `slidemill
evaluate` on held-out run outputs with a labels CSV."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from slidemill.pipeline.evaluation import (
    REPORT_FILES,
    EvaluationError,
    FoldPredictions,
    UndefinedMetricError,
    auroc,
    evaluate,
    localisation_auroc,
    one_vs_rest_auroc,
    render_report,
)
from slidemill.schemas import SCHEMA_MODELS, EvaluationReport, write_json_schemas

SHA = "ab" * 32


# ------------------------------------------------------------------------ report, rendering


def two_folds(class_names: tuple[str, ...] = ("benign", "tumour")) -> list[FoldPredictions]:
    rng = np.random.default_rng(0)
    folds = []
    for k in range(2):
        y = np.repeat([0, 1], 12)
        p1 = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.18, y.size), 0, 1)
        folds.append(
            FoldPredictions(
                name=f"fold-{k}",
                slide_ids=tuple(f"s{k}-{i}" for i in range(y.size)),
                y_true=y,
                probabilities=np.stack([1 - p1, p1], axis=1),
                threshold=0.5 if k == 0 else 0.45,
            )
        )
    return folds


def test_evaluate_builds_a_consistent_report() -> None:
    folds = two_folds()
    ev = evaluate(folds, ("benign", "tumour"), SHA, bootstrap_resamples=200)
    r = ev.report
    assert [f.fold for f in r.folds] == ["fold-0", "fold-1"]
    assert r.pooled.n_slides == 48 and r.pooled.n_slides_per_class == (24, 24)
    assert r.positive_class == "tumour"
    assert r.pooled.threshold is None  # the folds' thresholds differ
    assert r.folds[1].threshold == 0.45
    y = np.concatenate([f.y_true for f in folds])
    p = np.concatenate([f.probabilities for f in folds])
    assert r.pooled.auroc == pytest.approx(auroc(y, p[:, 1]))
    assert r.folds[0].auroc == pytest.approx(auroc(folds[0].y_true, folds[0].probabilities[:, 1]))
    # Pooled predictions use each fold's own threshold: the confusion matrices add up.
    summed = np.add(r.folds[0].confusion_matrix, r.folds[1].confusion_matrix)
    np.testing.assert_array_equal(r.pooled.confusion_matrix, summed)
    assert r.pooled.auroc_ci is not None
    assert r.pooled.auroc_ci.low <= r.pooled.auroc <= r.pooled.auroc_ci.high
    assert set(ev.roc_curves) == {"fold-0", "fold-1", "pooled"}
    assert int(ev.calibration.counts.sum()) == 48
    assert EvaluationReport.model_validate_json(r.model_dump_json()) == r

    leaked = FoldPredictions("fold-9", ("s0-3",), np.array([1]), np.array([[0.2, 0.8]]))
    with pytest.raises(EvaluationError, match="s0-3 is in fold fold-0 and fold fold-9"):
        evaluate([*folds, leaked], ("benign", "tumour"), SHA)
    one_class = FoldPredictions(
        "fold-x", ("a", "b"), np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]])
    )
    with pytest.raises(UndefinedMetricError, match="fold fold-x"):
        evaluate([one_class], ("benign", "tumour"), SHA)
    with pytest.raises(EvaluationError, match="slide ids"):
        FoldPredictions("f", ("a",), np.array([0, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]))


def test_evaluate_multiclass() -> None:
    y = np.array([0, 1, 2, 2, 0, 1])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.2, 0.6, 0.2],
            [0.3, 0.3, 0.4],
            [0.35, 0.5, 0.15],
            [0.5, 0.25, 0.25],
            [0.1, 0.8, 0.1],
        ]
    )
    fold = FoldPredictions("test", tuple("abcdef"), y, probs)
    ev = evaluate([fold], ("a", "b", "c"), SHA, bootstrap_resamples=0)
    r = ev.report
    assert r.positive_class is None and r.pooled.f1 is None
    assert r.pooled.calibration_target == "top_label"
    assert r.pooled.auroc == pytest.approx(one_vs_rest_auroc(y, probs).macro)
    assert r.pooled.confusion_matrix == ((2, 0, 0), (0, 2, 0), (0, 1, 1))
    assert set(ev.roc_curves) == {"pooled: a", "pooled: b", "pooled: c"}
    with pytest.raises(EvaluationError, match="threshold needs two classes"):
        evaluate([FoldPredictions("t", tuple("abcdef"), y, probs, 0.5)], ("a", "b", "c"), SHA)


def test_report_contract_is_exported_and_refuses_bad_figures(tmp_path: Path) -> None:
    assert SCHEMA_MODELS["evaluation_report"] is EvaluationReport
    write_json_schemas(tmp_path)
    schema = json.loads((tmp_path / "evaluation_report.schema.json").read_text())
    assert {"model_sha256", "slidemill_version", "class_names", "folds", "pooled"} <= set(
        schema["required"]
    )
    good = evaluate(two_folds(), ("benign", "tumour"), SHA, bootstrap_resamples=0).report
    data = good.model_dump()
    bad_nan = json.loads(good.model_dump_json())
    bad_nan["pooled"]["auroc"] = math.nan
    with pytest.raises(ValidationError):
        EvaluationReport.model_validate(bad_nan)
    with pytest.raises(ValidationError, match="model_sha256"):
        EvaluationReport.model_validate({**data, "model_sha256": "not-a-sha"})
    with pytest.raises(ValidationError, match="one entry per class"):
        EvaluationReport.model_validate(
            {**data, "class_names": ("a", "b", "c"), "positive_class": None}
        )
    with pytest.raises(ValidationError, match="sum over folds"):
        EvaluationReport.model_validate({**data, "folds": data["folds"][:1]})
    with pytest.raises(ValidationError, match="frozen"):
        good.model_sha256 = "cd" * 32


class _Page(HTMLParser):
    """Checks that tags nest and close, and collects text, images, links and scripts."""

    VOID = frozenset({"meta", "img", "br", "link", "hr", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs += attrs
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_render_report_writes_the_four_files(tmp_path: Path) -> None:
    names = ("<em>benign</em>", "tumour & co")
    folds = two_folds(names)
    loc = localisation_auroc(
        {
            "slide<1>": ([0.9, 0.1, 0.2], [0.7, 0.0, 0.1]),
            "slide-2": ([0.4, 0.3], [0.0, 0.0]),
        }
    )
    ev = evaluate(folds, names, SHA, localisation=loc, bootstrap_resamples=100)
    out = tmp_path / "eval"
    paths = render_report(ev.report, ev.roc_curves, ev.calibration, out)

    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # no temporaries left
    assert set(paths) == set(REPORT_FILES)
    saved = EvaluationReport.model_validate_json((out / "evaluation.json").read_text())
    assert saved == ev.report
    for name in ("roc.png", "calibration.png"):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            assert im.width >= 400 and im.height >= 400
            assert np.asarray(im.convert("L")).std() > 5  # something was drawn

    page_text = (out / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(page_text)
    page.close()
    assert page.stack == []
    text = "".join(page.text)
    r = ev.report
    for value in (r.pooled.auroc, r.folds[0].auroc, r.folds[1].auroc, loc.pooled_auroc):
        assert f"{value:.3f}" in text
    assert "<em>benign</em>" in text and "tumour & co" in text  # shown as text...
    assert "<em>benign</em>" not in page_text and "&lt;em&gt;benign" in page_text  # ...escaped
    assert "em" not in page.tags and "script" not in page.tags and "link" not in page.tags
    assert "slide<1>" in text and "no lesion tile" in text
    assert sorted(page.images) == ["calibration.png", "roc.png"]
    assert not any("http" in (v or "") or "//" in (v or "") for _, v in page.attrs)

    # Rendering again replaces the files in place.
    render_report(ev.report, ev.roc_curves, ev.calibration, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
