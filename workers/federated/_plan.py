"""What an aggregator and its sites agree on: the run's settings, the encoder's identity, and
what each site says of itself. Pure: no Flower, no files."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn

from slidemill.schemas import ModelManifest
from slidemill.workers.errors import TrainingError
from slidemill.workers.training import TrainConfig

Strategy = Literal["fedavg", "fedprox"]


@dataclass(frozen=True, slots=True)
class FederationSettings:
    """One federated training run, as `slidemill federated serve` sets it; the ServerApp and
    every site read it (it crosses to the sites in each round's configuration)."""

    rounds: int = 20
    """Aggregation rounds."""
    min_sites: int = 2
    """Sites that must answer for a round to count; training waits for this many to join."""
    wait_sites: int = 0
    """Sites training waits for before its first round, when more than `min_sites` (0: as many
    as `min_sites`): the sites expected, so that a round may still count without one of them
    (Flower's min_available_nodes beside its min_train_nodes)."""
    local_epochs: int = 2
    """Epochs each site trains its copy of the global head per round (every bag once each)."""
    strategy: Strategy = "fedavg"
    """FedAvg (McMahan et al. 2017), the sites' heads averaged weighted by slide count, or
    FedProx (Li et al. 2020), FedAvg with a proximal term that keeps each site's head near the
    global one when sites differ."""
    proximal_mu: float = 0.1
    """FedProx's μ: loss + μ/2 ‖w − w_global‖²."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The head and the optimiser settings `train` uses (its folds and validation split do not
    apply: the global head is trained on every site's slides for a fixed number of rounds)."""
    dp_noise: float = 0.0
    """Above 0: differential privacy on the head's updates (Flower's client-side fixed
    clipping: each site clips its update to `dp_clip`, the aggregator adds Gaussian noise of
    σ = dp_noise · dp_clip / sites); the sites are then weighted equally."""
    dp_clip: float = 1.0
    """L2 norm each site's update is clipped to under DP."""
    dp_delta: float = 1e-5
    """δ at which the bundle reports the ε spent."""
    round_timeout: float = 600.0
    """Seconds a round waits for the sites' replies; a site that has left is dropped from the
    round when Flower sees it gone (its heartbeat stops) or at this timeout."""
    join_timeout: float = 600.0
    """Seconds training waits for `start_sites` sites to join."""
    ood_percentile: float = 99.0
    """The OOD threshold: the highest of the sites' this-percentile of their slides' scores,
    each slide scored against a reference fitted without it."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.min_sites < 1 or self.local_epochs < 1:
            raise TrainingError(
                f"rounds, min_sites and local_epochs must be at least 1, got {self.rounds}, "
                f"{self.min_sites} and {self.local_epochs}"
            )
        if self.wait_sites < 0 or (self.wait_sites and self.wait_sites < self.min_sites):
            raise TrainingError(
                f"wait_sites ({self.wait_sites}) must be 0 or at least min_sites ({self.min_sites})"
            )
        if self.strategy not in ("fedavg", "fedprox"):
            raise TrainingError(f"strategy must be 'fedavg' or 'fedprox', got {self.strategy!r}")
        if not (self.proximal_mu >= 0 and math.isfinite(self.proximal_mu)):
            raise TrainingError(f"proximal_mu must be >= 0, got {self.proximal_mu}")
        if not (self.dp_noise >= 0 and math.isfinite(self.dp_noise)):
            raise TrainingError(f"dp_noise must be >= 0, got {self.dp_noise}")
        if not (self.dp_clip > 0 and math.isfinite(self.dp_clip)):
            raise TrainingError(f"dp_clip must be > 0, got {self.dp_clip}")
        if not 0 < self.dp_delta < 1:
            raise TrainingError(f"dp_delta must lie in (0, 1), got {self.dp_delta}")
        if self.round_timeout <= 0 or self.join_timeout <= 0:
            raise TrainingError("round_timeout and join_timeout must be positive")
        if self.dp and self.strategy != "fedavg":
            raise TrainingError(
                "differential privacy runs with FedAvg only (Flower's accountant needs its plain "
                "aggregation): drop --strategy fedprox or --dp-noise"
            )
        if not 50.0 <= self.ood_percentile <= 100.0:
            raise TrainingError(f"ood_percentile must lie in [50, 100], got {self.ood_percentile}")

    @property
    def dp(self) -> bool:
        """Differential privacy on the updates."""
        return self.dp_noise > 0

    @property
    def averaged_rounds(self) -> int:
        """The global heads of this many last rounds are averaged into the bundle's (the
        federated form of `train`'s weight averaging over its last epochs)."""
        if self.train.weight_averaging == 0:
            return 1
        return max(1, min(self.rounds, math.ceil(self.train.weight_averaging / self.local_epochs)))

    @property
    def start_sites(self) -> int:
        """Sites that must have joined, with features the model can use, before round 1."""
        return max(self.min_sites, self.wait_sites)

    def to_json(self) -> str:
        data = asdict(self)
        data["train"]["head_kwargs"] = dict(self.train.head_kwargs)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FederationSettings:
        try:
            data: dict[str, Any] = json.loads(text)
            train = TrainConfig(**data.pop("train"))
            known = {f.name for f in fields(cls)}
            return cls(train=train, **{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, KeyError) as err:
            raise TrainingError(f"unreadable federation settings: {err}") from err

    def sha256(self) -> str:
        """Identifies the run for resuming: a restarted aggregator continues only the run with
        the same settings."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def encoder_identity(manifest: ModelManifest, encoder: nn.Module) -> str:
    """The encoder's identity, the same at every site that computed features with it: sha256 of
    its settings and of its tensors (not the bundle id, which also covers a placeholder head)."""
    digest = hashlib.sha256()
    settings = {
        "encoder": manifest.encoder,
        "encoder_kwargs": dict(manifest.encoder_kwargs),
        "feature_dim": manifest.feature_dim,
        "input_mpp": manifest.input_mpp,
        "tile_px": manifest.tile_px,
        "normalisation": manifest.normalisation.model_dump(mode="json"),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What a site says of itself before training (no slide id, path or per-slide label)."""

    name: str
    """The name the site gives itself (`join --name`)."""
    n_slides: int
    """Slides with features and a label."""
    class_counts: tuple[int, ...]
    """Slides per class, in the federation's class order."""
    feature_dim: int
    """Width of its features."""
    encoder_id: str
    """`encoder_identity` of the encoder its features were computed with."""


def refusal(expected_dim: int, expected_encoder: str, site: SiteInfo) -> str | None:
    """Why `site` cannot train this model (one line), or None."""
    if site.feature_dim != expected_dim:
        return (
            f"site {site.name!r} refused: its features are {site.feature_dim}-d, the model's "
            f"encoder gives {expected_dim}-d"
        )
    if site.encoder_id != expected_encoder:
        return (
            f"site {site.name!r} refused: its features come from another encoder (identity "
            f"{site.encoder_id[:12]}, the model's is {expected_encoder[:12]}); compute them with "
            "the aggregator's encoder bundle"
        )
    if site.n_slides < 1:
        return f"site {site.name!r} refused: no labelled slide with features"
    return None
