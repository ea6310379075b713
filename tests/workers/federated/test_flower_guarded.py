"""A federation as a lab would run it beyond loopback, here on loopback: Flower's SuperLink over
TLS with the lab's certificate, admitting only the sites whose public keys it registered
(Flower's SuperNode authentication). Two registered sites train; one is killed while the
round is under way, and the round counts the other's reply. A site with an unregistered
key, and one with no key, are refused in one line each; the SuperLink speaks TLS only.

And a federated run survives its aggregator: SIGKILL `slidemill federated serve` after a round
of a differentially private run, start it again on the same folder, and it resumes after that
round, with ε counting every round released. (One file, so that the scheduler of `make test`
starts its long federations early rather than leaving a one-test file for the end.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from slidemill.schemas import TlsFiles
from slidemill.workers.errors import TrainingError
from slidemill.workers.federated import (
    FEDERATION_JSON,
    FederationSettings,
    generate_site_key,
    join,
    serve,
    site_public_keys,
)
from slidemill.workers.models import load_bundle
from slidemill.workers.training import build_head, resolve_model_dir
from tests.helpers import free_port, write_test_ca
from tests.workers.federated.test_flower import DEADLINE, SLIDEMILL, _join, _site
from tests.workers.training.test_train import cohort

pytestmark = [pytest.mark.timeout(DEADLINE_S := 900), pytest.mark.slow]

TRAIN_MESSAGE = b"Receiving: train message"
"""What a SuperNode logs when a round's training message reaches it."""


@dataclass(frozen=True)
class Guarded:
    out: Path
    serve_code: int
    serve_output: str
    refused: dict[str, tuple[int, str]]
    """Site → (exit status, output) of the sites the aggregator did not admit."""
    killed_at: float
    tls_peer: str
    """The subject the SuperLink's certificate names, as a TLS client saw it."""
    plain_reply: bytes
    """What the SuperLink answered a plain-HTTP request."""


def _popen(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: killed with its SuperNode
    )  # fmt: skip


def _probe_tls(port: int, ca: Path) -> tuple[str, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cert = tls.getpeercert()
    names = [pair for rdn in (cert or {}).get("subject", ()) for pair in rdn]
    subject = {str(pair[0]): str(pair[1]) for pair in names if isinstance(pair, tuple)}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        plain.settimeout(10)
        try:
            reply = plain.recv(4096)
        except (TimeoutError, ConnectionResetError):
            reply = b""
    return str(subject.get("commonName", "")), reply


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    root = tmp_path_factory.mktemp("guarded")
    ca, cert, key = write_test_ca(root / "pki")
    keys = {n: generate_site_key(root / "keys" / n, n) for n in ("north", "west", "stranger")}
    folders = {
        n: _site(root, n, *spec)
        for n, spec in {"north": (6, 4, 21), "west": (5, 4, 22), "stranger": (4, 4, 23),
                        "nokey": (4, 4, 24)}.items()
    }  # fmt: skip
    port, out = free_port(), root / "model"
    serve_p = _popen(
        [*SLIDEMILL, "federated", "serve", "--encoder", str(folders["north"] / "features"),
         "--out", str(out), "--rounds", "1", "--local-epochs", "2", "--min-sites", "1",
         "--wait-sites", "2", "--port", str(port), "--round-timeout", "600",
         "--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key),
         "--site-key", str(keys["north"][1]), "--site-key", str(keys["west"][1])]
    )  # fmt: skip
    lines: list[str] = []
    admitted = threading.Event()

    def read() -> None:
        assert serve_p.stdout is not None
        for line in serve_p.stdout:
            lines.append(line)
            if "sites admitted" in line:
                admitted.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    joins: dict[str, subprocess.Popen[str]] = {}
    try:
        assert admitted.wait(DEADLINE / 3), "".join(lines)[-3000:]
        tls_peer, plain_reply = _probe_tls(port, ca)

        def join_args(name: str, key_file: Path | None) -> list[str]:
            folder = folders[name]
            return [*SLIDEMILL, "federated", "join", "--features", str(folder / "features"),
                    "--labels", str(folder / "labels.csv"), "--server", f"127.0.0.1:{port}",
                    "--name", name, "--workdir", str(folder / "site"),
                    "--root-certificates", str(ca),
                    *(["--key", str(key_file)] if key_file else [])]  # fmt: skip

        for name in ("north", "west", "stranger"):
            joins[name] = _popen(join_args(name, keys[name][0]))
        joins["nokey"] = _popen(join_args("nokey", None))
        west_log = folders["west"] / "site" / "supernode.log"
        deadline = time.monotonic() + DEADLINE / 2
        while not (west_log.is_file() and TRAIN_MESSAGE in west_log.read_bytes()):
            assert time.monotonic() < deadline and serve_p.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.2)
        os.killpg(joins["west"].pid, signal.SIGKILL)  # the site, its SuperNode and its ClientApp
        killed_at = time.monotonic()
        serve_p.wait(timeout=DEADLINE / 2)
        reader.join(timeout=30)
        refused = {}
        for name in ("stranger", "nokey"):
            text, _ = joins[name].communicate(timeout=120)
            refused[name] = (joins[name].returncode, text)
        yield Guarded(out, serve_p.returncode, "".join(lines), refused, killed_at, tls_peer,
                      plain_reply)  # fmt: skip
    finally:
        for p in [serve_p, *joins.values()]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def test_registered_sites_train_and_a_site_killed_mid_round_leaves_it_to_the_other(
    guarded: Guarded,
) -> None:
    assert guarded.serve_code == 0, guarded.serve_output[-4000:]
    federation = json.loads((guarded.out / FEDERATION_JSON).read_text())
    assert sorted(s["name"] for s in federation["sites"]) == ["north", "west"]
    # west was sent round 1's training and died with it: the round counts north's reply alone
    assert [r["sites"] for r in federation["rounds"]] == [1]
    model = load_bundle(resolve_model_dir(guarded.out))
    assert "north" in model.manifest.description


def test_unregistered_sites_are_refused_in_one_line(guarded: Guarded) -> None:
    code, text = guarded.refused["stranger"]
    assert code == 2, text
    (line,) = [ln for ln in text.splitlines() if "did not admit" in ln]
    assert "site 'stranger'" in line and "not registered" in line, text
    code, text = guarded.refused["nokey"]
    assert code == 2 and "site 'nokey'" in text and "--key" in text, text


def test_the_superlink_speaks_tls_with_the_labs_certificate_only(guarded: Guarded) -> None:
    assert guarded.tls_peer == "localhost"
    assert not guarded.plain_reply.startswith(b"HTTP/"), guarded.plain_reply[:200]


def test_keys_and_tls_are_required_beyond_loopback_and_checked(tmp_path: Path) -> None:
    private, public = generate_site_key(tmp_path / "k", "north")
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(TrainingError, match="never replaced"):
        generate_site_key(tmp_path / "k", "north")
    assert site_public_keys([tmp_path / "k"]) == {"north": public.resolve()}
    (tmp_path / "k" / "bad.pub").write_text("not a key")
    with pytest.raises(TrainingError, match=r"bad\.pub: not a site's public key"):
        site_public_keys([tmp_path / "k"])
    with pytest.raises(TrainingError, match="site name"):
        generate_site_key(tmp_path / "k", "../x")
    features = _site(tmp_path, "site", 2, 2, 5) / "features"
    settings = FederationSettings(rounds=1, min_sites=1)
    with pytest.raises(TrainingError, match="site keys need TLS"):
        serve(settings, features, tmp_path / "o1", site_keys=[public])
    with pytest.raises(TrainingError, match="beyond loopback: give TLS"):
        serve(settings, features, tmp_path / "o2", host="0.0.0.0")
    ca_file, cert_file, key_file = write_test_ca(tmp_path / "pki")
    tls = TlsFiles(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    with pytest.raises(TrainingError, match="beyond loopback: give the sites' public keys"):
        serve(settings, features, tmp_path / "o3", host="0.0.0.0", tls=tls)
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
    labels = features.parent / "labels.csv"
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    with pytest.raises(TrainingError, match="--key"):
        join(features, labels, "192.0.2.1:9092", "site", tmp_path / "w", root_certificates=ca)
    assert not (tmp_path / "w").exists()


def _serve(encoder: Path, out: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SLIDEMILL, "federated", "serve", "--encoder", str(encoder), "--out", str(out),
         "--port", str(port), "--min-sites", "2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _until(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_a_killed_aggregator_resumes_and_dp_counts_every_round(tmp_path: Path) -> None:
    """SIGKILL the aggregator after its first round of a DP run; `serve` again on the same
    folder resumes after that round (the sites reconnect by themselves), and ε covers both
    rounds, the one before the kill included."""
    folders = {n: _site(tmp_path, n, 5, 4, seed) for n, seed in (("west", 20), ("east", 21))}
    port, out = free_port(), tmp_path / "model"
    args = ("--rounds", "2", "--local-epochs", "1", "--dp-noise", "1.0", "--dp-clip", "0.5")
    encoder = folders["west"] / "features"
    first = _serve(encoder, out, port, *args)
    joins = [_join(folder, name, port) for name, folder in folders.items()]
    try:
        state = out / "rounds" / "state.json"
        _until(lambda: state.is_file() or first.poll() is not None, "no round completed")
        assert first.poll() is None, first.communicate()[0][-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert not (out / FEDERATION_JSON).exists()
        _until(lambda: _port_free(port), "the killed aggregator's SuperLink kept its port", 60)
        second = _serve(encoder, out, port, *args)
        output, _ = second.communicate(timeout=DEADLINE)
        assert second.returncode == 0, output[-3000:]
    finally:
        for p in [first, *joins]:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=60)
    provenance = json.loads((out / FEDERATION_JSON).read_text())
    assert provenance["resumed_after_round"] >= 1
    assert [r["round"] for r in provenance["rounds"]] == [1, 2]
    privacy = provenance["privacy"]
    reference = RdpAccountant(
        PrivacyConfig(
            target_delta=1e-5,
            population_size=2,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    reference.compose(
        GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=2, population_size=2), 2
    )
    assert privacy["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    model = load_bundle(resolve_model_dir(out))
    assert "epsilon" in model.manifest.description
    # DP's noise lands on what the sites train, not on the standardisation fitted from their
    # moments: the bundle's is the pooled fit over both sites' tiles
    pooled = build_head("topk_linear", {}, 16, 2)
    pooled.fit_input(  # type: ignore[operator]
        torch.from_numpy(b) for seed in (20, 21) for b in cohort(5, 4, seed=seed).bags.values()
    )
    for name in ("input_mean", "input_std"):
        got, want = model.head.get_buffer(name), pooled.get_buffer(name)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), name
