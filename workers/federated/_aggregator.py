"""The aggregator's Flower ServerApp: describe the sites, fit the head's input standardisation
and the feature reference from their moment sums, run FedAvg or FedProx (with Flower's DP
wrapper when asked) for the rounds, checkpointing each completed round so a restarted
aggregator resumes, set the OOD threshold from the sites' percentiles, and write an ordinary
bundle with `federation.json` beside it."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from safetensors.torch import load_file, save_file

from slidemill.schemas import REFERENCE_FORMAT, slidemill_version
from slidemill.schemas.files import write_atomic
from slidemill.schemas.layout import FEDERATED_MODEL_DIR as MODEL_DIR
from slidemill.schemas.layout import FEDERATION_JSON, ROUNDS_DIR
from slidemill.workers.errors import TrainingError
from slidemill.workers.federated._plan import FederationSettings, SiteInfo, encoder_identity
from slidemill.workers.federated._records import (
    CLASS_NAMES,
    CLASS_WEIGHTS,
    CONFIG,
    DESCRIBE,
    EXPECTED_DIM,
    EXPECTED_ENCODER,
    INPUT_MOMENTS,
    METRICS,
    OOD,
    PERCENTILE,
    REFERENCE_MOMENTS,
    SETTINGS,
    SITE,
    STEP,
    config_number,
    config_str,
    input_moments_of,
    record_of,
    reference_moments_of,
    reference_moments_record,
    state_of,
    state_record,
)
from slidemill.workers.models import (
    REFERENCE_SHRINKAGE,
    FittedInputHead,
    InputMoments,
    ReferenceMoments,
    load_bundle,
    reference_from_moments,
    save_bundle,
)
from slidemill.workers.training import build_head

log = logging.getLogger("slidemill.federated")

ENV_ENCODER = "SLIDEMILL_FEDERATED_ENCODER"
ENV_OUT = "SLIDEMILL_FEDERATED_OUT"
"""The aggregator's paths reach its ServerApp through the SuperLink's environment, never the
Flower App's configuration, which Flower ships to every site."""


@dataclass(frozen=True, slots=True, eq=False)
class Site:
    """A site that answered the description step."""

    node_id: int
    """Flower's node id."""
    info: SiteInfo
    """What it said of itself."""
    class_names: tuple[str, ...]
    """Its classes."""
    input_moments: InputMoments | None
    """Its tiles' input sums (heads with a fitted standardisation), None when refused."""
    reference_moments: ReferenceMoments | None
    """Its tiles' reference sums, None when refused."""


class SitesGrid(Grid):
    """The grid with the run's sites only: Flower's strategies sample from `get_node_ids`. A node
    that joins after training started is described (so a site whose features do not fit hears
    why, in one line) but does not join the run: its standardisation, reference and class
    weights were fitted on the sites present at the start."""

    def __init__(
        self, grid: Grid, accepted: Iterable[int], known: Iterable[int], describe: Describe
    ) -> None:
        self._grid, self._accepted = grid, frozenset(accepted)
        self._known, self._describe = set(known), describe
        self.late: list[Site] = []

    def set_run(self, run: object) -> None:
        self._grid.set_run(run)  # type: ignore[arg-type]

    @property
    def run(self) -> object:  # type: ignore[override]
        return self._grid.run

    def create_message(self, *args: object, **kwargs: object) -> Message:
        return self._grid.create_message(*args, **kwargs)  # type: ignore[arg-type]

    def get_node_ids(self) -> list[int]:
        nodes = list(self._grid.get_node_ids())
        new = [n for n in nodes if n not in self._known]
        if new:
            self._known.update(new)
            for site in self._describe(new):
                log.warning(
                    "site %r joined after training started: not in this run", site.info.name
                )
                self.late.append(site)
        return [n for n in nodes if n in self._accepted]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


Describe = Callable[[Sequence[int]], list["Site"]]


def _gather_sites(grid: Grid, settings: FederationSettings, describe: Describe) -> list[Site]:
    """Describe each node as it joins until `start_sites` of them can train the model."""
    deadline = time.monotonic() + settings.join_timeout
    sites: dict[int, Site] = {}
    while True:
        # a node that did not answer is asked again on the next pass
        new = [n for n in grid.get_node_ids() if n not in sites]
        if new:
            sites.update((s.node_id, s) for s in describe(new))
        ready = [s for s in sites.values() if s.reference_moments is not None]
        if len(ready) >= settings.start_sites:
            return sorted(sites.values(), key=lambda s: s.info.name)
        if time.monotonic() > deadline:
            raise TrainingError(
                f"{len(ready)} of the {settings.start_sites} sites needed joined with features the "
                f"model can use within {settings.join_timeout:g} s"
            )
        time.sleep(1.0)


def describe_sites(
    grid: Grid, nodes: Sequence[int], settings: FederationSettings, dim: int, encoder_id: str
) -> list[Site]:
    config = ConfigRecord(
        {
            STEP: DESCRIBE,
            SETTINGS: settings.to_json(),
            EXPECTED_DIM: dim,
            EXPECTED_ENCODER: encoder_id,
        }
    )
    messages = [
        Message(content=RecordDict({CONFIG: config}), message_type="query", dst_node_id=n)
        for n in nodes
    ]
    sites = []
    for reply in grid.send_and_receive(messages, timeout=settings.round_timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("site node %s did not describe itself: %s", node, reply.error.reason)
            continue
        c = record_of(reply.content, SITE, ConfigRecord)
        names = tuple(json.loads(config_str(c, "class-names")))
        info = SiteInfo(
            name=config_str(c, "name"),
            n_slides=int(config_number(c, "n-slides")),
            class_counts=tuple(json.loads(config_str(c, "class-counts"))),
            feature_dim=int(config_number(c, "feature-dim")),
            encoder_id=config_str(c, "encoder-id"),
        )
        inputs = reply.content.array_records.get(INPUT_MOMENTS)
        reference = reply.content.array_records.get(REFERENCE_MOMENTS)
        sites.append(
            Site(
                node_id=node,
                info=info,
                class_names=names,
                input_moments=None if inputs is None else input_moments_of(inputs),
                reference_moments=None if reference is None else reference_moments_of(reference),
            )
        )
    return sorted(sites, key=lambda s: s.info.name)


class _Checkpointing:
    """Keeps each aggregated round's head in `rounds/` (the state is written last), and the
    heads of the last rounds for the average."""

    def __init__(self, folder: Path, settings: FederationSettings, offset: int) -> None:
        self.folder, self.settings, self.offset = folder, settings, offset

    def save(self, server_round: int, arrays: ArrayRecord, extra: dict[str, object]) -> None:
        r = server_round + self.offset
        save_file(
            {k: v.contiguous() for k, v in state_of(arrays).items()},
            str(self.folder / f"round-{r:04d}.safetensors"),
        )
        for old in self.folder.glob("round-*.safetensors"):
            if int(old.stem.split("-")[1]) <= r - self.settings.averaged_rounds:
                old.unlink()
        state = {"settings_sha256": self.settings.sha256(), "round": r, **extra}
        write_atomic(self.folder / "state.json", json.dumps(state, indent=2) + "\n")


class _Rounds:
    """Shared by the strategies below: refuse a round with fewer than `min_sites` replies, log
    the sites dropped, and keep each round's figures for `federation.json`."""

    def __init__(self, checkpoint: _Checkpointing, min_sites: int) -> None:
        self.checkpoint, self.min_sites = checkpoint, min_sites
        self.history: list[dict[str, object]] = []
        self.fixed: ArrayRecord = ArrayRecord()
        """The head's buffers (its input standardisation), fitted from the sites' moments before
        round 1: no site trains them, so the aggregate keeps them as fitted (DP's noise, added
        to every array the sites send, would otherwise land on them)."""

    def keep_fixed(self, arrays: ArrayRecord | None) -> ArrayRecord | None:
        if arrays is not None:
            for key, value in self.fixed.items():
                arrays[key] = value
        return arrays

    def answered(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        r = server_round + self.checkpoint.offset
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                node = reply.metadata.src_node_id
                log.warning("round %d: site node %s dropped: %s", r, node, reply.error.reason)
        ok = [reply for reply in replies if not reply.has_error()]
        if len(ok) < self.min_sites:
            raise TrainingError(
                f"round {r}: {len(ok)} sites answered, fewer than min-sites={self.min_sites}; "
                f"restart the aggregator to resume after round {r - 1}"
            )
        return ok

    def record(self, server_round: int, n_sites: int, metrics: MetricRecord | None) -> None:
        loss = None if metrics is None else metrics.get("train-loss")
        self.history.append(
            {"round": server_round + self.checkpoint.offset, "sites": n_sites, "train_loss": loss}
        )


class _RoundsMixin:
    """Before a strategy's `aggregate_train`: `_Rounds`' checks; after it, its record."""

    rounds: _Rounds

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok = self.rounds.answered(server_round, replies)
        arrays, metrics = super().aggregate_train(server_round, ok)  # type: ignore[misc]
        self.rounds.record(server_round, len(ok), metrics)
        return self.rounds.keep_fixed(arrays), metrics


class RoundsFedAvg(_RoundsMixin, FedAvg):
    """FedAvg with `_Rounds`' checks and records."""


class RoundsFedProx(_RoundsMixin, FedProx):
    """FedProx with `_Rounds`' checks and records."""


class RoundsDP(_RoundsMixin, DifferentialPrivacyClientSideFixedClipping):
    """Flower's DP wrapper with `_Rounds`' checks and records (its accountant needs a plain
    FedAvg inside, so they sit here)."""


def _strategy(
    settings: FederationSettings, n_sites: int, checkpoint: _Checkpointing
) -> tuple[Strategy, _Rounds]:
    m, rounds = settings.min_sites, _Rounds(checkpoint, settings.min_sites)
    if settings.dp:
        # the accountant needs FedAvg's own aggregation, equal site weights and the same sites
        # every round
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=settings.dp_delta,
                population_size=n_sites,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        dp = RoundsDP(
            FedAvg(
                fraction_evaluate=0.0,
                min_train_nodes=n_sites,
                min_available_nodes=n_sites,
                weighted_by_key="unit-weight",
            ),
            noise_multiplier=settings.dp_noise,
            clipping_norm=settings.dp_clip,
            num_sampled_clients=n_sites,
            accountant=accountant,
        )
        dp.rounds = rounds
        return dp, rounds
    inner: RoundsFedAvg | RoundsFedProx
    if settings.strategy == "fedprox":
        inner = RoundsFedProx(
            fraction_evaluate=0.0,
            min_train_nodes=m,
            min_available_nodes=m,
            proximal_mu=settings.proximal_mu,
        )
    else:
        inner = RoundsFedAvg(fraction_evaluate=0.0, min_train_nodes=m, min_available_nodes=m)
    inner.rounds = rounds
    return inner, rounds


def run_aggregator(grid: Grid, settings: FederationSettings, encoder_dir: Path, out: Path) -> Path:
    """The whole federated run; returns `out/federation.json`."""
    started = time.perf_counter()
    encoder_model = load_bundle(encoder_dir, torch.device("cpu"))
    enc = encoder_model.manifest
    encoder_id = encoder_identity(enc, encoder_model.encoder)

    def describe(new: Sequence[int]) -> list[Site]:
        return describe_sites(grid, new, settings, enc.feature_dim, encoder_id)

    sites = _gather_sites(grid, settings, describe)
    accepted = [s for s in sites if s.reference_moments is not None]
    for s in sites:
        if s.reference_moments is None:
            log.warning("site %r refused: its features do not fit the model", s.info.name)
    if len(accepted) < settings.min_sites:
        raise TrainingError(
            f"{len(accepted)} sites can train this model "
            f"({', '.join(s.info.name for s in accepted)}), fewer than "
            f"min-sites={settings.min_sites}"
        )
    class_names = sorted({c for s in accepted for c in s.class_names})
    if len(class_names) < 2:
        raise TrainingError(f"the sites' labels hold one class only: {class_names}")
    counts = np.zeros(len(class_names))
    for s in accepted:
        for name, count in zip(s.class_names, s.info.class_counts, strict=True):
            counts[class_names.index(name)] += count
    weights = (
        counts.sum() / (len(class_names) * np.maximum(counts, 1))
        if settings.train.class_weighting
        else np.ones(len(class_names))
    )
    torch.manual_seed(settings.train.seed)
    head = build_head(
        settings.train.head, settings.train.head_kwargs, enc.feature_dim, len(class_names)
    )
    if isinstance(head, FittedInputHead):
        moments = [s.input_moments for s in accepted if s.input_moments is not None]
        total = moments[0]
        for m in moments[1:]:
            total = total + m
        head.set_input(total)
    reference_total = accepted[0].reference_moments
    assert reference_total is not None
    for s in accepted[1:]:
        assert s.reference_moments is not None
        reference_total = reference_total + s.reference_moments

    rounds_dir = out / ROUNDS_DIR
    rounds_dir.mkdir(parents=True, exist_ok=True)
    arrays, done, state = state_record(head.state_dict()), 0, {}
    state_path = rounds_dir / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("settings_sha256") == settings.sha256():
            done = int(state["round"])
            saved = load_file(str(rounds_dir / f"round-{done:04d}.safetensors"))
            # in the head's own order: safetensors sorts its keys, and Flower's DP clipping
            # compares a site's reply key by key with what it was sent
            arrays = state_record({k: saved[k] for k in head.state_dict()})
            log.info("resuming after round %d of %d", done, settings.rounds)
        else:
            state = {}
    checkpoint = _Checkpointing(rounds_dir, settings, done)
    strategy, rounds = _strategy(settings, len(accepted), checkpoint)
    rounds.history = list(state.get("history", []))
    rounds.fixed = state_record(dict(head.named_buffers()))
    accountant = strategy.accountant if isinstance(strategy, RoundsDP) else None
    if accountant is not None and "accountant" in state:
        # ε counts every round released, those before the restart too
        accountant.load_state_dict(state["accountant"])
    train_config = ConfigRecord(
        {
            SETTINGS: settings.to_json(),
            CLASS_NAMES: json.dumps(class_names),
            CLASS_WEIGHTS: json.dumps([float(w) for w in weights]),
        }
    )

    def after_round(server_round: int, current: ArrayRecord) -> MetricRecord | None:
        if server_round > 0:
            extra: dict[str, object] = {
                "sites": [s.info.name for s in accepted],
                "history": rounds.history,
            }
            if accountant is not None:
                extra["accountant"] = accountant.state_dict()
            checkpoint.save(server_round, current, extra)
        return None

    sites_grid = SitesGrid(
        grid,
        [s.node_id for s in accepted],
        [s.node_id for s in sites],
        describe,
    )
    if done < settings.rounds:
        strategy.start(
            grid=sites_grid,
            initial_arrays=arrays,
            num_rounds=settings.rounds - done,
            timeout=settings.round_timeout,
            train_config=train_config,
            evaluate_fn=after_round,
        )
    averaged = _average_last_rounds(rounds_dir, settings)
    head.load_state_dict(averaged)
    head.eval()

    threshold = _ood_threshold(sites_grid, reference_total, settings)
    reference = reference_from_moments(reference_total)
    epsilon = None
    if isinstance(strategy, DifferentialPrivacyClientSideFixedClipping):
        spent = strategy.privacy_spent()
        epsilon = None if spent is None else float(spent.epsilon)
    names = ", ".join(f"{s.info.name} ({s.info.n_slides} slides)" for s in accepted)
    privacy = (
        f"; DP: noise {settings.dp_noise:g}, clip {settings.dp_clip:g}, "
        f"epsilon {epsilon:.3g} at delta {settings.dp_delta:g}"
        if settings.dp and epsilon is not None
        else ""
    )
    fields: dict[str, object] = {
        "encoder": enc.encoder,
        "encoder_kwargs": dict(enc.encoder_kwargs),
        "feature_dim": enc.feature_dim,
        "normalisation": enc.normalisation.model_dump(),
        "input_mpp": enc.input_mpp,
        "tile_px": enc.tile_px,
        "class_names": class_names,
        "weights_sha256": "0" * 64,
        **{
            k: v
            for k in ("encoder_preset", "encoder_weights_sha256", "encoder_weights_source")
            if (v := getattr(enc, k)) is not None
        },
        "head": settings.train.head,
        "head_kwargs": dict(settings.train.head_kwargs),
        "threshold": None,
        "description": (
            f"slidemill federated: {settings.train.head}, {settings.strategy}, "
            f"{settings.rounds} rounds x {settings.local_epochs} local epochs, mean of the last "
            f"{settings.averaged_rounds} rounds' heads; sites {names}{privacy}"
        ),
        "reference": {
            "format": REFERENCE_FORMAT,
            "shrinkage": REFERENCE_SHRINKAGE,
            "threshold": threshold,
            "threshold_rule": (
                f"highest of the {len(accepted)} sites' {settings.ood_percentile:g}th percentile "
                "of their slides' scores, each slide against the reference less its fold"
            ),
        },
    }
    model_dir = out / MODEL_DIR
    manifest = save_bundle(model_dir, encoder_model.encoder, head, fields, reference=reference)
    provenance = {
        "format_version": 1,
        "slidemill_version": slidemill_version(),
        "bundle": MODEL_DIR,
        "settings": json.loads(settings.to_json()),
        "class_names": class_names,
        "sites": [
            {
                "name": s.info.name,
                "n_slides": s.info.n_slides,
                "class_counts": dict(zip(s.class_names, s.info.class_counts, strict=True)),
            }
            for s in accepted
        ],
        "refused": [s.info.name for s in sites if s.reference_moments is None]
        + [s.info.name for s in sites_grid.late if s.reference_moments is None],
        "joined_late": [s.info.name for s in sites_grid.late if s.reference_moments is not None],
        "rounds": rounds.history,
        "resumed_after_round": done,
        "privacy": None
        if not settings.dp
        else {
            "mechanism": "Flower client-side fixed clipping, Gaussian noise at the aggregator",
            "noise_multiplier": settings.dp_noise,
            "clipping_norm": settings.dp_clip,
            "epsilon": epsilon,
            "delta": settings.dp_delta,
            "unit": "site (client-level DP)",
        },
        "ood_threshold": threshold,
        "encoder_identity": encoder_id,
        "model_manifest": manifest.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    path = out / FEDERATION_JSON
    write_atomic(path, json.dumps(provenance, indent=2) + "\n")
    return path


def _average_last_rounds(rounds_dir: Path, settings: FederationSettings) -> dict[str, torch.Tensor]:
    files = sorted(rounds_dir.glob("round-*.safetensors"))[-settings.averaged_rounds :]
    if not files:
        raise TrainingError(f"{rounds_dir}: no completed round")
    states = [load_file(str(f)) for f in files]
    return {
        k: (torch.stack([s[k].double() for s in states]).mean(0)).to(states[-1][k].dtype)
        for k in states[-1]
    }


def _ood_threshold(grid: Grid, total: ReferenceMoments, settings: FederationSettings) -> float:
    config = ConfigRecord({STEP: OOD, PERCENTILE: settings.ood_percentile})
    content = RecordDict({CONFIG: config, REFERENCE_MOMENTS: reference_moments_record(total)})
    messages = [
        Message(content=content, message_type="query", dst_node_id=n) for n in grid.get_node_ids()
    ]
    values = []
    for reply in grid.send_and_receive(messages, timeout=settings.round_timeout):
        if reply.has_error():
            log.warning(
                "site node %s: no OOD percentile: %s",
                reply.metadata.src_node_id,
                reply.error.reason,
            )
            continue
        metrics = record_of(reply.content, METRICS, MetricRecord)
        values.append(config_number(metrics, "ood-percentile"))
    if not values:
        raise TrainingError("no site answered the OOD step")
    return max(values)


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    settings = FederationSettings.from_json(str(context.run_config[SETTINGS]))
    encoder, out = os.environ.get(ENV_ENCODER), os.environ.get(ENV_OUT)
    if not encoder or not out:
        raise TrainingError(
            f"start the aggregator with slidemill federated serve ({ENV_OUT} unset)"
        )
    run_aggregator(grid, settings, Path(encoder), Path(out))
