"""The training features' reference (OOD score), temperature scaling, and bundle format 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slidemill.schemas import REFERENCE_FORMAT
from slidemill.schemas.layout import MANIFEST_JSON, REFERENCE_FILE
from slidemill.workers import (
    ModelBundleError,
    check_bundle,
    fit_reference,
    init_bundle,
    load_bundle,
    manifest_sha256,
    ood_score,
    read_manifest,
    save_bundle,
)
from slidemill.workers.metrics import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    slide_auroc,
)

CPU = torch.device("cpu")


def slides(rng: np.random.Generator, n: int, shift: float = 0.0) -> list[np.ndarray]:
    cov = np.diag(np.linspace(0.2, 3.0, 16))
    return [
        rng.multivariate_normal(np.full(16, shift), cov, size=int(rng.integers(50, 120)))
        for _ in range(n)
    ]


def test_ood_score_is_about_one_in_distribution_and_large_out_of_it() -> None:
    rng = np.random.default_rng(0)
    ref = fit_reference(slides(rng, 20))
    assert ref.n_slides == 20 and ref.precision.shape == (16, 16)
    inside = [ood_score(ref, s) for s in slides(rng, 10)]
    outside = [ood_score(ref, s) for s in slides(rng, 10, shift=2.0)]
    assert max(inside) < 1.2
    assert min(outside) > 1.5 * max(inside)
    # per tile, then the median: a few wild tiles do not flag a slide
    mostly_fine = np.concatenate([slides(rng, 1)[0], np.full((5, 16), 50.0)])
    assert ood_score(ref, mostly_fine) < 1.2


def test_temperature_keeps_the_ranking_and_lowers_overconfidence() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    # right 75% of the time, always 99% sure: over-confident
    right = rng.uniform(size=200) < 0.75
    p1 = np.where(right == (y == 1), 0.99, 0.01) * rng.uniform(0.97, 1.0, 200)
    probs = np.stack([1 - p1, p1], axis=1)
    fit = fit_temperature(y, probs)
    assert fit.temperature > 1.5
    assert fit.nll_after < fit.nll_before
    calibrated = apply_temperature(probs, fit.temperature)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    assert slide_auroc(y, calibrated) == pytest.approx(slide_auroc(y, probs))
    assert (calibrated.argmax(axis=1) == probs.argmax(axis=1)).all()
    ece = expected_calibration_error
    assert ece(y == 1, calibrated[:, 1]) < ece(y == 1, probs[:, 1])
    # dividing by T and by 1/T undo each other
    np.testing.assert_allclose(apply_temperature(calibrated, 1 / fit.temperature), probs, atol=1e-9)


def test_well_calibrated_predictions_keep_a_temperature_near_one() -> None:
    rng = np.random.default_rng(2)
    p1 = rng.uniform(size=2000)
    y = (rng.uniform(size=2000) < p1).astype(int)
    fit = fit_temperature(y, np.stack([1 - p1, p1], axis=1))
    assert 0.85 < fit.temperature < 1.15


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "fresh"
    init_bundle(out, encoder="tiny_cnn", tile_px=64, mpp=2.0, seed=1)
    return out


def test_a_fresh_bundle_is_format_1_without_reference_and_keeps_its_id(fresh: Path) -> None:
    manifest = read_manifest(fresh)
    assert manifest.format_version == 1
    assert manifest.reference is None and manifest.calibration is None
    assert load_bundle(fresh, CPU).reference is None
    # the id is the sha256 of the canonical manifest as it was before format 2 existed
    doc = json.loads((fresh / MANIFEST_JSON).read_text())
    doc.pop("reference", None)
    doc.pop("calibration", None)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    assert manifest_sha256(manifest) == hashlib.sha256(canonical.encode()).hexdigest()


def test_a_bundle_with_reference_and_calibration_is_format_2(fresh: Path, tmp_path: Path) -> None:
    model = load_bundle(fresh, CPU)
    ref = fit_reference(slides(np.random.default_rng(3), 5))  # 16-d
    fields = {
        **model.manifest.model_dump(exclude={"weights_sha256", "format_version"}),
        "weights_sha256": "0" * 64,
        "reference": {"format": REFERENCE_FORMAT, "shrinkage": 0.1, "threshold": 1.3,
                      "threshold_rule": "test"},
        "calibration": {"temperature": 2.0, "n_slides": 10, "nll_before": 0.5, "nll_after": 0.4},
    }  # fmt: skip
    # a reference of another width than the features is refused at load
    save_bundle(tmp_path / "b", model.encoder, model.head, fields, reference=ref)
    with pytest.raises(ModelBundleError, match="for 32-d features"):
        load_bundle(tmp_path / "b", CPU)
    ref = fit_reference([np.random.default_rng(4).normal(size=(40, model.manifest.feature_dim))])
    manifest = save_bundle(tmp_path / "c", model.encoder, model.head, fields, reference=ref)
    assert manifest.format_version == 2
    assert manifest.reference is not None and manifest.reference.n_tiles == 40
    loaded = load_bundle(tmp_path / "c", CPU)
    assert loaded.reference is not None
    np.testing.assert_array_equal(loaded.reference.mean, ref.mean)
    # a replaced reference file is refused
    (tmp_path / "c" / REFERENCE_FILE).write_bytes(b"not it")
    with pytest.raises(ModelBundleError, match="feature reference"):
        check_bundle(tmp_path / "c")
