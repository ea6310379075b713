"""Federated training of MIL heads on Flower: sites keep their slides and features, and send
head parameters and moment sums only.

Bottom up: `_plan` (the run's settings, the encoder's identity, what a site says of itself;
pure), `_records` (what crosses the network, as Flower records), `_site` (a site's ClientApp,
with its audit of every reply), `_aggregator` (the ServerApp: standardisation and reference
from moment sums, FedAvg/FedProx with Flower's DP wrapper, checkpoints, the bundle), `_launch`
(Flower's SuperLink and SuperNode processes for `slidemill federated serve` and `join`).
"""

from slidemill.workers.federated._aggregator import FEDERATION_JSON, MODEL_DIR, ROUNDS_DIR
from slidemill.workers.federated._launch import (
    ServeResult,
    flower_env,
    free_port,
    generate_site_key,
    join,
    serve,
    site_public_keys,
)
from slidemill.workers.federated._plan import (
    FederationSettings,
    SiteInfo,
    encoder_identity,
    refusal,
)
from slidemill.workers.federated._records import SITE_SENDS
from slidemill.workers.federated._site import AUDIT_FILE, REFUSED_FILE

__all__ = [
    "AUDIT_FILE",
    "FEDERATION_JSON",
    "MODEL_DIR",
    "REFUSED_FILE",
    "ROUNDS_DIR",
    "SITE_SENDS",
    "FederationSettings",
    "ServeResult",
    "SiteInfo",
    "encoder_identity",
    "flower_env",
    "free_port",
    "generate_site_key",
    "join",
    "refusal",
    "serve",
    "site_public_keys",
]
