"""Federated training's pure parts: moment sums that add up to what pooled training fits, the
settings that cross to the sites, refusals, and the local update with FedProx's proximal term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidemill.workers.errors import TrainingError
from slidemill.workers.federated import FederationSettings, SiteInfo, refusal
from slidemill.workers.models import (
    TopKMIL,
    fit_reference,
    reference_from_moments,
    reference_moments,
)
from slidemill.workers.training import TrainConfig, build_head, train_epochs


def _bags(seed: int, n: int, d: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(5, 40)), d)).astype(np.float32) for _ in range(n)]


def test_input_moments_of_sites_add_up_to_the_pooled_standardisation() -> None:
    a, b = _bags(0, 4), _bags(1, 3)
    pooled = TopKMIL(6, 2)
    pooled.fit_input(torch.from_numpy(x) for x in a + b)
    federated = TopKMIL(6, 2)
    sums = federated.input_moments(torch.from_numpy(x) for x in a) + federated.input_moments(
        torch.from_numpy(x) for x in b
    )
    federated.set_input(sums)
    assert torch.allclose(pooled.input_mean, federated.input_mean, atol=1e-6)
    assert torch.allclose(pooled.input_std, federated.input_std, atol=1e-6)
    assert not torch.allclose(pooled.input_std, torch.ones(6))  # something was fitted


def test_reference_from_site_moments_is_the_pooled_reference() -> None:
    a, b = _bags(2, 3), _bags(3, 5)
    pooled = fit_reference(a + b)
    federated = reference_from_moments(reference_moments(a) + reference_moments(b))
    assert federated.n_slides == pooled.n_slides == 8
    assert federated.n_tiles == pooled.n_tiles
    np.testing.assert_allclose(federated.mean, pooled.mean, atol=1e-9)
    np.testing.assert_allclose(federated.precision, pooled.precision, rtol=1e-7, atol=1e-9)
    # subtracting a part gives the reference of the rest
    rest = reference_from_moments(reference_moments(a + b) - reference_moments(b))
    np.testing.assert_allclose(rest.precision, fit_reference(a).precision, rtol=1e-6, atol=1e-9)


def test_settings_cross_as_json_and_identify_the_run() -> None:
    s = FederationSettings(
        rounds=3, strategy="fedprox", train=TrainConfig(head="abmil", head_kwargs={"hidden_dim": 8})
    )
    back = FederationSettings.from_json(s.to_json())
    assert back == s
    assert back.sha256() == s.sha256() != FederationSettings(rounds=4).sha256()
    assert FederationSettings(rounds=20, local_epochs=2).averaged_rounds == 10
    assert FederationSettings(rounds=3, local_epochs=2).averaged_rounds == 3
    assert FederationSettings(train=TrainConfig(weight_averaging=0)).averaged_rounds == 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"rounds": 0}, "rounds"),
        ({"strategy": "fedsgd"}, "strategy"),
        ({"dp_noise": -1.0}, "dp_noise"),
        ({"dp_delta": 1.0}, "dp_delta"),
        ({"ood_percentile": 10.0}, "ood_percentile"),
        ({"min_sites": 3, "wait_sites": 2}, "wait_sites"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(TrainingError, match=words):
        FederationSettings(**kwargs)  # type: ignore[arg-type]


def test_unreadable_settings_are_a_training_error() -> None:
    with pytest.raises(TrainingError, match="unreadable federation settings"):
        FederationSettings.from_json('{"train": 3}')


def test_a_site_of_another_width_or_encoder_is_refused_with_the_reason() -> None:
    ok = SiteInfo("north", 12, (8, 4), 16, "e" * 64)
    assert refusal(16, "e" * 64, ok) is None
    wide = refusal(16, "e" * 64, SiteInfo("south", 12, (8, 4), 768, "e" * 64))
    assert wide is not None and "'south'" in wide and "768-d" in wide and "16-d" in wide
    other = refusal(16, "e" * 64, SiteInfo("west", 12, (8, 4), 16, "f" * 64))
    assert other is not None and "another encoder" in other and "\n" not in other
    empty = refusal(16, "e" * 64, SiteInfo("east", 0, (0, 0), 16, "e" * 64))
    assert empty is not None and "no labelled slide" in empty


def test_the_proximal_term_keeps_a_site_near_the_global_head() -> None:
    rng = np.random.default_rng(4)
    bags = {f"s{i}": rng.normal(size=(20, 6)).astype(np.float32) for i in range(8)}
    for i in range(4):
        bags[f"s{i}"][:3, :2] += 3.0
    labels = {f"s{i}": int(i < 4) for i in range(8)}
    ids = sorted(bags)
    config = TrainConfig(head="topk_linear", lr=5e-3)

    def drift(mu: float) -> float:
        torch.manual_seed(0)
        head = build_head("topk_linear", {}, 6, 2)
        start = [p.detach().clone() for p in head.parameters()]
        loss = train_epochs(
            head, bags, labels, ids, [1.0, 1.0], config, epochs=5, seed=1, anchor_mu=mu
        )
        assert np.isfinite(loss)
        pairs = zip(head.parameters(), start, strict=True)
        return sum(float((p.detach() - q).square().sum()) for p, q in pairs)

    free, anchored = drift(0.0), drift(50.0)
    assert 0 < anchored < free


def test_local_training_refuses_an_empty_site() -> None:
    head = build_head("topk_linear", {}, 6, 2)
    with pytest.raises(TrainingError, match="no slides"):
        train_epochs(head, {}, {}, [], [1.0, 1.0], TrainConfig(), epochs=1, seed=0)
