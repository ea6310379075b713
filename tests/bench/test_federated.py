"""`slidemill bench-federated`'s pure parts: the split of each site's slides, and that it
trains with the product's defaults (the run itself is `make bench-federated`)."""

from __future__ import annotations

import pytest

from slidemill.bench import BenchSite, FederatedBenchSettings, split_site


def test_the_benchmark_holds_out_the_same_slides_of_each_class() -> None:
    labels = {f"s-{i:03d}": int(i % 3 == 0) for i in range(20)}
    split = split_site(labels, 4)
    assert split == split_site(dict(reversed(labels.items())), 4)
    assert sorted(split.held_out.values()) == [0, 0, 1, 1]
    assert set(split.train) | set(split.held_out) == set(labels)
    assert not set(split.train) & set(split.held_out)
    with pytest.raises(ValueError, match="none left"):
        split_site({"a": 0, "b": 1, "c": 0}, 2)


def test_the_benchmark_trains_with_serve_s_and_train_s_defaults() -> None:
    """bench-federated measures what a lab gets: `federated serve`'s rounds and local epochs,
    whose product is `train`'s epochs."""
    from slidemill.workers.federated import FederationSettings
    from slidemill.workers.training import TrainConfig

    bench, serve = FederatedBenchSettings(), FederationSettings()
    assert (bench.rounds, bench.local_epochs) == (serve.rounds, serve.local_epochs)
    assert bench.rounds * bench.local_epochs == TrainConfig().max_epochs


def test_bad_benchmark_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="two or more sites"):
        FederatedBenchSettings(sites=(BenchSite("a", 2, 2), BenchSite("a", 2, 2)))
    with pytest.raises(ValueError, match="negative and a positive"):
        FederatedBenchSettings(sites=(BenchSite("a", 2, 0), BenchSite("b", 2, 2)))
    with pytest.raises(ValueError, match="even"):
        FederatedBenchSettings(held_out=3)
    with pytest.raises(ValueError, match="DP noise"):
        FederatedBenchSettings(dp_noise=(0.0,))
    runs = FederatedBenchSettings(dp_noise=(0.5,)).federated
    assert [(r.strategy, r.dp_noise) for r in runs] == [
        ("fedavg", 0.0),
        ("fedprox", 0.0),
        ("fedavg", 0.5),
    ]
