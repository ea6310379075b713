"""Flower's own processes, started for `slidemill federated serve` and `join`: the aggregator is
a SuperLink and the run `flwr run` submits to it (its ServerApp runs in Flower's SuperExec), a
site is a SuperNode (its ClientApp likewise). Nothing here trains; it writes the Flower App
folder and the configuration files, starts the processes, and waits."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from slidemill.cluster import is_loopback
from slidemill.schemas import TlsFiles
from slidemill.schemas.layout import site_name_problem
from slidemill.workers.errors import TrainingError
from slidemill.workers.federated._aggregator import (
    ENV_ENCODER,
    ENV_OUT,
    FEDERATION_JSON,
    MODEL_DIR,
    ROUNDS_DIR,
)
from slidemill.workers.federated._plan import FederationSettings
from slidemill.workers.federated._records import SETTINGS
from slidemill.workers.federated._site import (
    NODE_FEATURES,
    NODE_LABELS,
    NODE_NAME,
    NODE_WORKDIR,
    REFUSED_FILE,
)
from slidemill.workers.models import check_bundle
from slidemill.workers.training import match_labels, read_label_csv, scan_features

_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception): ")
"""The ServerApp's exception, as Flower streams its traceback."""
FLOWER_DIR = "flower"
"""In the aggregator's output folder: Flower's home, the App folder, the SuperLink's state
database and the logs."""
APP_NAME = "slidemill_federation"
SITE_MARKER = ".slidemill-site"
"""Marks a folder `join` created (it writes into no other)."""
STARTUP_TIMEOUT = 120.0


def flower_env(home: Path) -> dict[str, str]:
    """The environment of Flower's processes: this interpreter's scripts first on PATH (Flower
    starts `flower-superexec` by name), its home in `home`, and no telemetry or update check
    (nothing may reach the internet)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.is_file() else shutil.which(name)
    if found is None:
        raise TrainingError(f"Flower's {name} is not installed (pip install flwr)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(host: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            raise TrainingError(f"Flower's SuperLink exited at start: {' | '.join(tail)} ({log})")
        with contextlib.suppress(OSError), socket.create_connection((target, port), timeout=1.0):
            return
        time.sleep(0.2)
    raise TrainingError(
        f"Flower's SuperLink did not listen on {host}:{port} within {STARTUP_TIMEOUT:g} s"
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when slidemill dies, even by SIGKILL, so a restarted
    aggregator finds its port free (Linux's PR_SET_PDEATHSIG; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _check_tls(host: str, tls: TlsFiles | None, where: str) -> None:
    if tls is None and not is_loopback(f"tcp://{host}:1"):
        raise TrainingError(
            f"{where}: {host} is beyond loopback: give TLS certificates (--tls-ca, --tls-cert, "
            "--tls-key), so model updates do not cross the network in clear"
        )
    if tls is not None:
        for path in (tls.ca_file, tls.cert_file, tls.key_file):
            if path is not None and not Path(path).is_file():
                raise TrainingError(f"{where}: no certificate file {path}")


def _tls_args(tls: TlsFiles | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    if tls.key_file is None:
        raise TrainingError("the SuperLink needs its private key in a file of its own (--tls-key)")
    return [
        "--ssl-ca-certfile",
        str(tls.ca_file),
        "--ssl-certfile",
        str(tls.cert_file),
        "--ssl-keyfile",
        str(tls.key_file),
    ]


KEY_SUFFIX, PUBLIC_SUFFIX = ".key", ".pub"
"""A site's key pair as `generate_site_key` writes it: NAME.key (private) and NAME.pub."""


def generate_site_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A new key pair for the site `name` in `folder`: `NAME.key`, the private key the site's
    SuperNode signs with (OpenSSH format, readable by its owner only), and `NAME.pub`, the public
    key the aggregator registers (`serve --site-key`). Refuses to replace an existing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    _check_name(name)
    folder = Path(folder)
    private, public = folder / f"{name}{KEY_SUFFIX}", folder / f"{name}{PUBLIC_SUFFIX}"
    for path in (private, public):
        if path.exists():
            raise TrainingError(
                f"{path}: exists; a site's key is never replaced, choose a new name"
            )
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())  # the curve Flower's documentation uses
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    tmp = private.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # left by an interrupted keygen
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    tmp.replace(private)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {name}\n".encode()
    )
    return private, public


def site_public_keys(paths: Sequence[Path]) -> dict[str, Path]:
    """Site name → public key, from key files and folders of `*.pub` files (the name is the
    file's stem). Raises `TrainingError` on a file that is not a NIST-curve EC public key, or a
    name given twice."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys: dict[str, Path] = {}
    for given in paths:
        given = Path(given)
        files = sorted(given.glob(f"*{PUBLIC_SUFFIX}")) if given.is_dir() else [given]
        if not files:
            raise TrainingError(f"--site-key {given}: no {PUBLIC_SUFFIX} file in it")
        for path in files:
            try:
                key = serialization.load_ssh_public_key(path.read_bytes())
            except (OSError, ValueError, UnsupportedAlgorithm) as e:
                raise TrainingError(f"--site-key {path}: not a site's public key ({e})") from e
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise TrainingError(
                    f"--site-key {path}: an EC key is needed (slidemill federated keygen)"
                )
            name = path.name.removesuffix(PUBLIC_SUFFIX)
            if name in keys:
                raise TrainingError(f"--site-key: two keys for site {name!r}")
            keys[name] = path.resolve()
    return keys


def _register_sites(keys: dict[str, Path], env: dict[str, str], home: Path) -> None:
    """Register each site's key with the SuperLink (its Control API, through `flwr`), so that
    only those sites' SuperNodes are admitted. A key already registered (a resumed run's
    SuperLink keeps its state) is left as it is."""
    for name, key in keys.items():
        done = subprocess.run(
            [_script("flwr"), "supernode", "register", str(key), "slidemill", "--name", name],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            check=False,
        )
        said = done.stdout + done.stderr
        if done.returncode != 0 and "already in use" not in said:
            reason = said.strip().splitlines()
            raise TrainingError(
                f"site {name!r}: its key {key} could not be registered: "
                f"{reason[-1] if reason else f'exit {done.returncode}'}"
            )


def _check_name(name: str) -> None:
    if (problem := site_name_problem(name)) is not None:
        raise TrainingError(problem)


def write_app(folder: Path, settings: FederationSettings) -> Path:
    """The Flower App folder `flwr run` bundles: a pyproject naming slidemill's ServerApp and
    ClientApp, with this run's settings (Flower ships it to every site: no path in it)."""
    app = folder / APP_NAME
    app.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["setuptools>=77"], "build-backend": "setuptools.build_meta"},
        "project": {
            "name": "slidemill-federation",
            "version": "1.0.0",
            "description": "slidemill's federated MIL head training",
            "license": "Apache-2.0",
            # installed already where the SuperLink and the SuperNodes run
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "slidemill",
                    "components": {
                        "serverapp": "slidemill.workers.federated._aggregator:server_app",
                        "clientapp": "slidemill.workers.federated._site:site_app",
                    },
                    "config": {SETTINGS: settings.to_json()},
                }
            }
        },
    }
    (app / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return app


def _check_out(out: Path, settings: FederationSettings) -> None:
    """`out` must be new, empty, or an unfinished run of the same settings (resumed)."""
    if not out.exists() or not any(out.iterdir()):
        return
    if (out / FEDERATION_JSON).exists():
        raise TrainingError(f"{out}: holds a finished federated model; choose a new folder")
    if not (out / ROUNDS_DIR).is_dir() and not (out / FLOWER_DIR).is_dir():
        raise TrainingError(f"{out}: exists and is not a federated run's folder; choose a new one")


@dataclass(frozen=True, slots=True)
class ServeResult:
    """What `serve` made."""

    federation_json: Path
    """The run's provenance."""
    bundle: Path
    """The model bundle."""
    seconds: float
    """Wall time."""


def serve(
    settings: FederationSettings,
    encoder: Path,
    out: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 9092,
    tls: TlsFiles | None = None,
    site_keys: Sequence[Path] = (),
    on_line: Callable[[str], None] | None = None,
) -> ServeResult:
    """Start a SuperLink on host:port, submit slidemill's Flower App to it and wait for the
    federated run to finish; the bundle is `out/model`. Restarted on the same `out` with the
    same settings, the run resumes after its last completed round. With `site_keys` (public
    keys, or folders of them), only SuperNodes holding those keys' private halves are admitted
    (Flower's SuperNode authentication, which needs TLS); beyond loopback both are required."""
    started = time.perf_counter()
    encoder = Path(encoder).resolve()
    if (encoder / "encoder-bundle").is_dir():  # a features folder: its encoder
        encoder = encoder / "encoder-bundle"
    check_bundle(encoder)
    _check_tls(host, tls, "federated serve")
    keys = site_public_keys(site_keys)
    if keys and tls is None:
        raise TrainingError(
            "federated serve: site keys need TLS (Flower authenticates sites over TLS only): "
            "give --tls-ca, --tls-cert and --tls-key"
        )
    if not keys and not is_loopback(f"tcp://{host}:1"):
        raise TrainingError(
            f"federated serve: {host} is beyond loopback: give the sites' public keys "
            "(--site-key), so that only they can join"
        )
    out = Path(out).resolve()
    _check_out(out, settings)
    home = out / FLOWER_DIR
    home.mkdir(parents=True, exist_ok=True)
    env = flower_env(home)
    env[ENV_ENCODER], env[ENV_OUT] = str(encoder), str(out)
    connection: dict[str, object] = {"address": f"127.0.0.1:{port}"}
    if tls is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(tls.ca_file)
    (home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": "slidemill", "slidemill": connection}}),
        encoding="utf-8",
    )
    app = write_app(home, settings)
    link = [
        _script("flower-superlink"),
        *_tls_args(tls),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(home / "superlink.db"),
        *(["--enable-supernode-auth"] if keys else []),
    ]
    with _process(link, env, home / "superlink.log") as superlink:
        _wait_listening(host, port, superlink, home / "superlink.log")
        _register_sites(keys, env, home)
        if keys and on_line is not None:
            on_line(f"sites admitted (SuperNode authentication): {', '.join(keys)}")
        run = subprocess.Popen(
            [_script("flwr"), "run", str(app), "slidemill", "--stream"],
            preexec_fn=_die_with_parent,
            env=env,
            cwd=home,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert run.stdout is not None
        error = ""
        with (home / "run.log").open("a", encoding="utf-8") as log:
            for line in run.stdout:
                log.write(line)
                if _ERROR_LINE.match(line):
                    error = line.strip()
                if on_line is not None:
                    on_line(line.rstrip("\n"))
        run.wait()
    federation = out / FEDERATION_JSON
    if not federation.is_file():
        raise TrainingError(
            f"the federated run ended without a model: {error or f'exit {run.returncode}'} "
            f"(its log: {home / 'run.log'})"
        )
    return ServeResult(federation, out / MODEL_DIR, time.perf_counter() - started)


def _check_site(features: Path, labels: Path, name: str) -> int:
    folder = scan_features(features)
    match = match_labels(read_label_csv(labels), folder.slides, base=labels.parent)
    if not match.labels:
        raise TrainingError(f"site {name!r}: no slide of {labels} has features in {features}")
    return len(match.labels)


def _site_workdir(workdir: Path) -> None:
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / SITE_MARKER).is_file():
        raise TrainingError(f"{workdir}: exists and is not a site's folder; choose a new one")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SITE_MARKER).touch()
    (workdir / REFUSED_FILE).unlink(missing_ok=True)


def join(
    features: Path,
    labels: Path,
    server: str,
    name: str,
    workdir: Path,
    *,
    root_certificates: Path | None = None,
    key: Path | None = None,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run a SuperNode for this site until it stops; returns its exit status. With `key` (the
    site's private key, `generate_site_key`), the SuperNode authenticates with it. Raises
    `TrainingError` at once on an unreadable features folder or labels; with the aggregator's
    one-line reason when the model cannot use this site's features; and with Flower's reason
    when the aggregator does not admit the site."""
    features, labels, workdir = (
        Path(features).resolve(),
        Path(labels).resolve(),
        Path(workdir).resolve(),
    )
    _check_name(name)
    n_slides = _check_site(features, labels, name)
    host = server.rsplit(":", 1)[0].strip("[]")
    if not is_loopback(f"tcp://{host}:1"):
        if root_certificates is None:
            raise TrainingError(
                f"federated join: {server} is beyond loopback: give the aggregator's CA "
                "(--root-certificates) so the site's updates travel over TLS"
            )
        if key is None:
            raise TrainingError(
                f"federated join: {server} is beyond loopback: give this site's private key "
                "(--key; slidemill federated keygen makes one, the aggregator registers its .pub)"
            )
    if key is not None and not Path(key).is_file():
        raise TrainingError(f"federated join: no key file {key}")
    _site_workdir(workdir)
    node_config = {
        NODE_FEATURES: str(features),
        NODE_LABELS: str(labels),
        NODE_NAME: name,
        NODE_WORKDIR: str(workdir),
    }
    config_file = workdir / "node-config.toml"
    config_file.write_text(tomli_w.dumps(node_config), encoding="utf-8")
    args = [
        _script("flower-supernode"),
        *(
            ["--insecure"]
            if root_certificates is None
            else ["--root-certificates", str(root_certificates)]
        ),
        "--superlink",
        server,
        "--port",
        str(free_port()),
        "--node-config",
        str(config_file),
        *(["--auth-supernode-private-key", str(Path(key).resolve())] if key is not None else []),
    ]
    if on_start is not None:
        on_start(n_slides)
    log = workdir / "supernode.log"
    with _process(args, flower_env(workdir / FLOWER_DIR), log) as node:
        while node.poll() is None:
            refused = workdir / REFUSED_FILE
            if refused.is_file():
                _until_sent(log, log.stat().st_size, node)
                raise TrainingError(refused.read_text(encoding="utf-8").strip())
            time.sleep(0.5)
        if node.returncode != 0 and (reason := _flower_refusal(log)) is not None:
            raise TrainingError(f"site {name!r}: the aggregator did not admit it: {reason}")
        return int(node.returncode)


_FLOWER_CODE = re.compile(rb"\[code: (\d+)\] ([^\n]+)")
_ADMISSION_HINTS = {
    b"2001": "join with --key, and have the aggregator register this site's public key",
    b"2004": "this site's key is not registered: have the aggregator add its .pub (--site-key)",
}


def _flower_refusal(log: Path) -> str | None:
    """Flower's one-line reason a SuperNode stopped (its `[code: N] reason` line), with what
    to do about a refused admission."""
    found = _FLOWER_CODE.findall(log.read_bytes()) if log.is_file() else []
    if not found:
        return None
    code, reason = found[-1]
    hint = _ADMISSION_HINTS.get(code)
    text = reason.decode(errors="replace").strip()
    return f"{text} ({hint})" if hint else text


REPLY_SENT = b"Sent successfully"
"""What Flower's SuperNode logs once a reply has left it."""
REFUSAL_GRACE = 10.0
"""Seconds a refused site stays connected after its reply left: a SuperNode that stops
unregisters, and the SuperLink then answers the aggregator "node unavailable" in its place."""


def _until_sent(log: Path, since: int, node: subprocess.Popen[bytes]) -> None:
    """Wait (a minute at most) for the SuperNode to send the reply being written at `since`, so
    the aggregator hears the refusal before the site stops."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline and node.poll() is None:
        with log.open("rb") as f:
            f.seek(since)
            if REPLY_SENT in f.read():
                break
        time.sleep(0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        node.wait(timeout=REFUSAL_GRACE)
