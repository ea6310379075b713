"""A federated run survives its aggregator: SIGKILL `slidemill federated serve` after a round of
a differentially private run, start it again on the same folder, and it resumes after that
round, with ε counting every round released. Flower's own processes on loopback, as in
`test_flower.py` (a file of its own, so the two federations run side by side)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
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

from slidemill.workers.federated import FEDERATION_JSON
from slidemill.workers.models import load_bundle
from slidemill.workers.training import build_head, resolve_model_dir
from tests.helpers import free_port
from tests.workers.federated.test_flower import DEADLINE, SLIDEMILL, _join, _site
from tests.workers.training.test_train import cohort

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


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
