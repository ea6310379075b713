"""A site's Flower ClientApp: it reads its own features folder and labels CSV (named in the
SuperNode's node config, which never leaves the site) and answers the aggregator with moment
sums and head parameters only. Every reply is logged, record by record, to the site's audit file
before it is sent, so a site can show what left it."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from slidemill.workers.errors import TrainingError
from slidemill.workers.federated._plan import (
    FederationSettings,
    SiteInfo,
    encoder_identity,
    refusal,
)
from slidemill.workers.federated._records import (
    ARRAYS,
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
    ROUND,
    SETTINGS,
    SITE,
    STEP,
    config_number,
    config_str,
    input_moments_record,
    record_of,
    reference_moments_of,
    reference_moments_record,
    state_of,
    state_record,
)
from slidemill.workers.models import (
    FittedInputHead,
    load_bundle,
    ood_score,
    reference_from_moments,
    reference_moments,
)
from slidemill.workers.training import (
    FeatureBags,
    build_head,
    match_labels,
    read_label_csv,
    scan_features,
    stratified_folds,
    train_epochs,
)

# the SuperNode's node config (`slidemill federated join` writes it; it stays on the site)
NODE_FEATURES = "features"
NODE_LABELS = "labels"
NODE_NAME = "site-name"
NODE_WORKDIR = "workdir"
AUDIT_FILE = "sent.jsonl"
"""In the site's working folder: one line per reply sent, every record and key in it."""
REFUSED_FILE = "refused.txt"
"""In the site's working folder: the one-line reason the aggregator's model cannot use this
site's features (`join` stops with it)."""


@dataclass(frozen=True, slots=True, eq=False)
class SiteData:
    """A site's cohort, read once per ClientApp process."""

    name: str
    """The site's own name."""
    ids: tuple[str, ...]
    """Labelled slides with features, sorted."""
    label_names: Mapping[str, str]
    """Slide id → class name."""
    bags: FeatureBags
    """Slide id → features (N, D), read lazily."""
    feature_dim: int
    """D."""
    encoder_id: str
    """`encoder_identity` of the features' encoder."""
    workdir: Path
    """The site's working folder (audit file, refusal)."""


@cache
def _site(features: str, labels: str, name: str, workdir: str) -> SiteData:
    folder = scan_features(Path(features))
    match = match_labels(read_label_csv(Path(labels)), folder.slides, base=Path(labels).parent)
    encoder = load_bundle(folder.encoder_bundle, torch.device("cpu"))
    ids = tuple(sorted(match.labels))
    return SiteData(
        name=name,
        ids=ids,
        label_names=dict(match.labels),
        bags=FeatureBags({sid: folder.slides[sid].store for sid in ids}, 2 << 30),
        feature_dim=folder.manifest.feature_dim,
        encoder_id=encoder_identity(encoder.manifest, encoder.encoder),
        workdir=Path(workdir),
    )


def site_of(context: Context) -> SiteData:
    c = context.node_config
    return _site(
        str(c[NODE_FEATURES]), str(c[NODE_LABELS]), str(c[NODE_NAME]), str(c[NODE_WORKDIR])
    )


def _settings(config: ConfigRecord) -> FederationSettings:
    return FederationSettings.from_json(config_str(config, SETTINGS))


def describe(site: SiteData, config: ConfigRecord) -> RecordDict:
    """The site's counts, width and encoder, and the moment sums of its tiles. A site whose
    features the model cannot use writes why to `refused.txt` and sends its counts only."""
    settings = _settings(config)
    names = sorted(set(site.label_names.values()))
    counts = [sum(1 for v in site.label_names.values() if v == c) for c in names]
    info = SiteInfo(site.name, len(site.ids), tuple(counts), site.feature_dim, site.encoder_id)
    expected_dim = int(config_number(config, EXPECTED_DIM))
    why = refusal(expected_dim, config_str(config, EXPECTED_ENCODER), info)
    record = ConfigRecord(
        {
            "name": site.name,
            "n-slides": info.n_slides,
            "feature-dim": info.feature_dim,
            "encoder-id": info.encoder_id,
            "class-names": json.dumps(names),
            "class-counts": json.dumps(counts),
        }
    )
    content = RecordDict({SITE: record})
    if why is not None:
        (site.workdir / REFUSED_FILE).write_text(why + "\n", encoding="utf-8")
        return content
    bags = [site.bags[sid] for sid in site.ids]
    head = build_head(settings.train.head, settings.train.head_kwargs, site.feature_dim, 2)
    if isinstance(head, FittedInputHead):
        content[INPUT_MOMENTS] = input_moments_record(
            head.input_moments(torch.from_numpy(np.asarray(b, dtype=np.float32)) for b in bags)
        )
    content[REFERENCE_MOMENTS] = reference_moments_record(reference_moments(bags))
    return content


def local_round(site: SiteData, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
    """Train the global head on this site's slides for `local_epochs` epochs; the new weights
    and the slide count go back."""
    settings = _settings(config)
    class_names: list[str] = json.loads(config_str(config, CLASS_NAMES))
    weights: list[float] = json.loads(config_str(config, CLASS_WEIGHTS))
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({v for v in site.label_names.values() if v not in index})
    if unknown:
        raise TrainingError(f"site {site.name!r}: classes {unknown} are not the model's")
    labels = {sid: index[site.label_names[sid]] for sid in site.ids}
    head = build_head(
        settings.train.head, settings.train.head_kwargs, site.feature_dim, len(class_names)
    )
    head.load_state_dict(state_of(arrays))
    server_round = int(config_number(config, ROUND))
    mu = config_number(config, "proximal-mu") if settings.strategy == "fedprox" else 0.0
    loss = train_epochs(
        head,
        site.bags,
        labels,
        site.ids,
        weights,
        settings.train,
        epochs=settings.local_epochs,
        seed=settings.train.seed + 1000 * server_round,
        anchor_mu=mu,
    )
    return RecordDict(
        {
            ARRAYS: state_record(head.state_dict()),
            METRICS: MetricRecord(
                {"num-examples": len(site.ids), "unit-weight": 1, "train-loss": loss}
            ),
        }
    )


def ood_percentile(site: SiteData, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
    """Score each of this site's slides against the global reference less the fold of the
    site's slides it is in (so no slide is scored against a reference fitted on it), and send
    the percentile of the scores."""
    total = reference_moments_of(arrays)
    ids = [sid for sid in site.ids if len(site.bags[sid])]
    k = min(5, len(ids))
    folds = stratified_folds(np.zeros(len(ids), dtype=np.int64), k, seed=0) if k > 1 else None
    scores = []
    for fold in range(k):
        held = [ids[i] for i in range(len(ids)) if folds is None or folds[i] == fold]
        rest = total - reference_moments([site.bags[sid] for sid in held])
        if rest.n_slides < 1:  # a federation of one site with one slide: score against all
            rest = total
        reference = reference_from_moments(rest)
        scores += [ood_score(reference, site.bags[sid]) for sid in held]
    value = float(np.percentile(scores, config_number(config, PERCENTILE)))
    return RecordDict({METRICS: MetricRecord({"ood-percentile": value, "n-scored": len(scores)})})


def _summary(content: RecordDict) -> dict[str, object]:
    records: dict[str, object] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {
                "kind": "arrays",
                "entries": {
                    k: {"dtype": str(a.dtype), "shape": list(a.shape), "bytes": len(a.data)}
                    for k, a in record.items()
                },
            }
        else:
            kind = "metrics" if isinstance(record, MetricRecord) else "config"
            records[name] = {"kind": kind, "entries": dict(record)}
    return records


def _bytes(content: RecordDict) -> int:
    n = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            n += sum(len(a.data) for a in record.values())
        else:
            n += len(json.dumps(dict(record)).encode())
    return n


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Append every reply, record by record, to the site's audit file before Flower sends it."""
    reply = call_next(msg, context)
    workdir = Path(str(context.node_config[NODE_WORKDIR]))
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "type": msg.metadata.message_type,
        "step": _step(msg),
        "error": reply.error.reason if reply.has_error() else None,
        "records": {} if reply.has_error() else _summary(reply.content),
        "bytes": 0 if reply.has_error() else _bytes(reply.content),
    }
    with (workdir / AUDIT_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    return reply


def _step(msg: Message) -> str:
    if msg.metadata.message_type.startswith("train"):
        return "train"
    config = msg.content.config_records.get(CONFIG)
    return str(config[STEP]) if config is not None and STEP in config else "?"


def clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `fixedclipping_mod` on training rounds that carry a clipping norm (DP on)."""
    config = msg.content.config_records.get(CONFIG)
    if _step(msg) == "train" and config is not None and "clipping_norm" in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


site_app = ClientApp(mods=[audit_mod, clipping_mod])


@site_app.query()
def _query(msg: Message, context: Context) -> Message:
    site = site_of(context)
    config = record_of(msg.content, CONFIG, ConfigRecord)
    step = config_str(config, STEP)
    if step == DESCRIBE:
        return Message(content=describe(site, config), reply_to=msg)
    if step == OOD:
        arrays = record_of(msg.content, REFERENCE_MOMENTS, ArrayRecord)
        return Message(content=ood_percentile(site, arrays, config), reply_to=msg)
    raise TrainingError(f"site {site.name!r}: unknown step {step!r}")


@site_app.train()
def _train(msg: Message, context: Context) -> Message:
    site = site_of(context)
    config = record_of(msg.content, CONFIG, ConfigRecord)
    arrays = record_of(msg.content, ARRAYS, ArrayRecord)
    return Message(content=local_round(site, arrays, config), reply_to=msg)
