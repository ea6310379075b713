"""TLS between client, scheduler and workers for the backends whose scheduler listens beyond
loopback (SLURM, an existing scheduler).

A plain-TCP Dask scheduler runs whatever any client that reaches its port sends, as the account
that started it, with its workers' access to the slides. So these backends use TLS unless their
config says `tls: false`: each side presents a certificate signed by the run's CA and refuses a
peer without one (distributed requires client certificates whenever a CA is set).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from distributed.security import Security

from slidemill.cluster.errors import ClusterConfigError
from slidemill.schemas import TlsFiles

log = logging.getLogger(__name__)

PLAIN_TCP_WARNING = (
    "%s: plain TCP (tls: false): anyone who can reach the scheduler's port can run code as "
    "this account and read the slides; use it only on a network you trust"
)


def tls_security(tls: TlsFiles | bool, where: str) -> Security | None:
    """The `Security` of a `tls:` setting: temporary certificates (True), certificate files,
    or None for plain TCP (False, with a warning naming `where`)."""
    if tls is False:
        log.warning(PLAIN_TCP_WARNING, where)
        return None
    if tls is True:
        return Security.temporary()
    return file_security(tls, where)


def file_security(tls: TlsFiles, where: str) -> Security:
    """A `Security` for every role from certificate files, TLS required."""
    for path in (tls.ca_file, tls.cert_file, tls.key_file):
        if path is not None and not path.is_file():
            raise ClusterConfigError(f"{where}: tls: no certificate file {path}")
    ca, cert = str(tls.ca_file), str(tls.cert_file)
    key = None if tls.key_file is None else str(tls.key_file)
    return Security(
        tls_ca_file=ca,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        require_encryption=True,
    )


def is_loopback(address: str) -> bool:
    """Whether a Dask address (`tcp://HOST:PORT`) names this machine's loopback."""
    host = urlsplit(address if "://" in address else f"tcp://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:  # a host name: loopback when it resolves there only
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def existing_security(address: str, tls: TlsFiles | bool | None, where: str) -> Security | None:
    """How to reach an existing scheduler at `address`: its certificate files for tls://,
    plain TCP on loopback, and plain TCP beyond loopback only when the config says
    `tls: false`."""
    if address.startswith("tls://"):
        if not isinstance(tls, TlsFiles):
            raise ClusterConfigError(
                f"{where}: scheduler {address} speaks TLS: name its certificates in the config "
                "(tls: {ca_file, cert_file, key_file})"
            )
        return file_security(tls, where)
    if isinstance(tls, TlsFiles):
        raise ClusterConfigError(
            f"{where}: tls certificate files are given but the scheduler address {address} is "
            "not tls://"
        )
    in_process = address.startswith("inproc://")
    if tls is None and not in_process and not is_loopback(address):
        raise ClusterConfigError(
            f"{where}: scheduler {address} is plain TCP beyond loopback, where anyone who can "
            "reach it can run code as you; start it with TLS (dask scheduler --protocol tls "
            "--tls-ca-file ... ) and name the certificates under tls:, or set tls: false to "
            "accept that"
        )
    if tls is False:
        log.warning(PLAIN_TCP_WARNING, where)
    return None
