"""`slidemill federated serve` and `join`: train a head across sites on Flower, no slide moving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from slidemill.cli._errors import console


def _require_flower() -> None:
    from slidemill.cluster import require_extra

    require_extra("flwr", "federated", needed_by="slidemill federated")


def _tls(ca: Path | None, cert: Path | None, key: Path | None) -> object:
    from slidemill.schemas import TlsFiles
    from slidemill.workers.errors import TrainingError

    given = [p is not None for p in (ca, cert, key)]
    if not any(given):
        return None
    if not all(given):
        raise TrainingError("TLS needs all of --tls-ca, --tls-cert and --tls-key")
    return TlsFiles(ca_file=ca, cert_file=cert, key_file=key)  # type: ignore[arg-type]


def federated_serve(
    encoder: Annotated[
        Path,
        typer.Option(
            help="The encoder the sites computed their features with: its bundle, or a features "
            "folder made with it (its encoder-bundle). A site whose features came from another "
            "encoder is refused."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="New folder: model/ (the bundle for run, serve and view), federation.json, the "
            "rounds' checkpoints and Flower's logs. The same folder again resumes an unfinished "
            "run."
        ),
    ],
    rounds: Annotated[int, typer.Option(min=1, help="Aggregation rounds.")] = 20,
    min_sites: Annotated[
        int, typer.Option(min=1, help="Sites needed to start, and to count a round.")
    ] = 2,
    wait_sites: Annotated[
        int,
        typer.Option(
            min=0,
            help="Sites to wait for before the first round, when more than --min-sites (0: "
            "--min-sites): a round then still counts when a site leaves.",
        ),
    ] = 0,
    local_epochs: Annotated[
        int, typer.Option(min=1, help="Epochs each site trains per round.")
    ] = 2,
    strategy: Annotated[
        Literal["fedavg", "fedprox"],
        typer.Option(help="fedavg (weighted by slide count) or fedprox (for sites that differ)."),
    ] = "fedavg",
    mu: Annotated[float, typer.Option(min=0.0, help="FedProx's proximal weight μ.")] = 0.1,
    head: Annotated[str, typer.Option(help="Registered MIL head, as for `train`.")] = "topk_linear",
    lr: Annotated[float, typer.Option(help="Learning rate (as for `train`).")] = 5e-4,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 1e-2,
    weight_averaging: Annotated[
        int,
        typer.Option(
            min=0,
            help="Average the global heads of the rounds covering the last this-many epochs.",
        ),
    ] = 20,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the initial head and the sites.")] = 0,
    dp_noise: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Above 0: differential privacy on the sites' updates (clipped at each site, "
            "Gaussian noise of this multiplier added by the aggregator; ε reported).",
        ),
    ] = 0.0,
    dp_clip: Annotated[float, typer.Option(help="L2 norm each site's update is clipped to.")] = 1.0,
    dp_delta: Annotated[float, typer.Option(help="δ at which ε is reported.")] = 1e-5,
    round_timeout: Annotated[
        float, typer.Option(help="Seconds a round waits for the sites' replies.")
    ] = 600.0,
    host: Annotated[
        str, typer.Option(help="Address the SuperLink listens on; beyond loopback needs TLS.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The SuperLink's port (sites join HOST:PORT).")] = 9092,
    tls_ca: Annotated[Path | None, typer.Option(help="CA certificate (PEM).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="The SuperLink's certificate.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key.")] = None,
    site_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="A site's public key (NAME.pub from `slidemill federated keygen`), or a folder "
            "of them; repeatable. Only these sites are admitted (needs TLS); required beyond "
            "loopback."
        ),
    ] = None,
) -> None:
    """Aggregate a federated training run: start Flower's SuperLink, wait for --min-sites sites
    to join, train the head for --rounds rounds, and write an ordinary bundle."""
    _require_flower()
    from slidemill.workers.federated import FederationSettings, serve
    from slidemill.workers.training import TrainConfig

    settings = FederationSettings(
        rounds=rounds,
        min_sites=min_sites,
        wait_sites=wait_sites,
        local_epochs=local_epochs,
        strategy=strategy,
        proximal_mu=mu,
        train=TrainConfig(
            head=head,
            lr=lr,
            weight_decay=weight_decay,
            weight_averaging=weight_averaging,
            seed=seed,
        ),
        dp_noise=dp_noise,
        dp_clip=dp_clip,
        dp_delta=dp_delta,
        round_timeout=round_timeout,
    )
    console.print(f"SuperLink on {host}:{port}; sites join with --server <this host>:{port}")
    result = serve(
        settings,
        encoder,
        out,
        host=host,
        port=port,
        tls=_tls(tls_ca, tls_cert, tls_key),  # type: ignore[arg-type]
        site_keys=tuple(site_key or ()),
        on_line=lambda line: console.print(line, markup=False, highlight=False),
    )
    provenance = json.loads(result.federation_json.read_text(encoding="utf-8"))
    sites = ", ".join(f"{s['name']} ({s['n_slides']})" for s in provenance["sites"])
    console.print(f"model: {result.bundle} (sites: {sites}; {result.seconds:.0f} s)")


def federated_join(
    features: Annotated[Path, typer.Option(help="This site's features folder.")],
    labels: Annotated[Path, typer.Option(help="This site's labels CSV (as for `train`).")],
    server: Annotated[str, typer.Option(help="The aggregator's SuperLink, HOST:PORT.")],
    name: Annotated[
        str, typer.Option(help="This site's name, as the model's provenance will show it.")
    ],
    workdir: Annotated[
        Path,
        typer.Option(
            help="New folder for this site's SuperNode: its logs, and sent.jsonl, every record "
            "this site sent."
        ),
    ],
    root_certificates: Annotated[
        Path | None, typer.Option(help="The aggregator's CA (PEM), for TLS.")
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="This site's private key (NAME.key from `slidemill federated keygen`), when the "
            "aggregator admits registered sites only; required beyond loopback."
        ),
    ] = None,
) -> None:
    """Join a federated training run as a site: run Flower's SuperNode, which trains the global
    head on this site's features and sends back parameters and moment sums only. Runs until
    stopped."""
    _require_flower()
    from slidemill.workers.federated import join

    code = join(
        features,
        labels,
        server,
        name,
        workdir,
        root_certificates=root_certificates,
        key=key,
        on_start=lambda n: console.print(f"site {name}: {n} labelled slides; joining {server}"),
    )
    raise typer.Exit(code)


def federated_keygen(
    out: Annotated[Path, typer.Option(help="Folder for the key pair (made when missing).")],
    name: Annotated[str, typer.Option(help="The site's name, as it joins with --name.")],
) -> None:
    """Make a site's key pair: OUT/NAME.key stays at the site (`join --key`), OUT/NAME.pub goes
    to the aggregator (`serve --site-key`), which then admits this site's SuperNode only with it."""
    _require_flower()
    from slidemill.workers.federated import generate_site_key

    private, public = generate_site_key(out, name)
    console.print(f"private key: {private} (keep it at the site)", highlight=False)
    console.print(f"public key: {public} (give it to the aggregator)", highlight=False)
