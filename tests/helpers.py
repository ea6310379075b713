"""Helpers shared by the tests: the command line in a subprocess, generated slides, the sample
slide's path, dask processes, and dask connections that must be refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from slidemill.pipeline.demo import default_sample
from slidemill.pipeline.synth import Ellipse, SyntheticSlide
from slidemill.schemas.layout import STORE_ATTRS_KEY

REPO = Path(__file__).resolve().parents[1]

# Two tissue regions on a 3072 × 2048 slide at 0.5 µm/px: a test knows where tissue must be.
TISSUE = (Ellipse(900, 1000, 600, 550), Ellipse(2250, 900, 520, 640))


def slidemill(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "slidemill.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def sample_path() -> Path | None:
    """$SLIDEMILL_SAMPLE_SLIDE, else ../shared/data beside the checkout: as `slidemill bench`."""
    return default_sample(REPO.parent / "shared" / "data")


def synthetic(mpp: float | None = 0.5, tissue: tuple[Ellipse, ...] = TISSUE) -> SyntheticSlide:
    return SyntheticSlide(3072, 2048, mpp, tissue, seed=3)


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dask_process(*args: str) -> subprocess.Popen[bytes]:
    """`dask scheduler` / `dask worker` as a real process (`dask_scheduler`, `dask_worker`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli." + args[0], *args[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def refused(address: str, **connection_args: Any) -> bool:
    """Whether a dask connection (the handshake included) to `address` fails. A comm in a
    loop of its own, not a `Client`: a refused Client leaves its loop thread and can leave
    dask's `scheduler` setting behind, and under load its thread's start alone can time out."""
    from distributed.comm import connect

    async def attempt() -> None:
        comm = await connect(address, timeout=5, **connection_args)
        await comm.close()

    try:
        asyncio.run(attempt())
    except OSError:
        return True
    return False


def stop_groups(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM each process's group (each started with `start_new_session`), wait up to `grace`
    seconds for all of them, then SIGKILL what is left: a group holds what its leader started,
    e.g. a nanny's worker that is still starting and would wait for a scheduler that is gone."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class StoreView:
    """A slide store opened read-only for assertions: arrays come back as numpy arrays, and
    `attrs` is slidemill's attribute document (plain JSON)."""

    def __init__(self, path: Path) -> None:
        self._root = zarr.open_group(store=str(path), mode="r")

    def __getitem__(self, name: str) -> NDArray[Any]:
        array = self._root[name]
        assert isinstance(array, zarr.Array), f"{name} is not an array"
        return np.asarray(array[...])

    def __contains__(self, name: str) -> bool:
        return name in self._root

    def array_names(self) -> set[str]:
        return set(self._root.array_keys())

    @property
    def attrs(self) -> dict[str, Any]:
        doc = self._root.attrs[STORE_ATTRS_KEY]
        assert isinstance(doc, dict)
        return doc


def write_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for localhost and 127.0.0.1, valid for a day:
    (CA PEM, certificate PEM, key PEM) in `folder`, as a lab's own PKI would issue them."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slidemill test CA")]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        build("slidemill test CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        build("localhost", key)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths
