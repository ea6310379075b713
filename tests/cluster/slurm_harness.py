"""A real single-node SLURM for the tests: Debian's `slurm-wlm` and `munge`, run as root.

munged with a generated key, a generated `slurm.conf` sized to this machine
(`proctrack/linuxproc` and `task/none`, which need no cgroups), `slurmctld` and `slurmd` in the
foreground with every file (state, spool, logs, pid files, the munge socket) in one folder.
Commands (`sbatch`, `squeue`, `scancel`) find it through `SLURM_CONF`. Every wait polls with a
deadline.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PARTITION = "batch"
"""The one partition, the default."""
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def missing_commands() -> list[str]:
    """The SLURM and munge programs that are not installed."""
    return [name for name in DAEMONS if _which(name) is None]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class SingleNodeSlurm:
    """One SLURM cluster: a controller and a compute node on this machine."""

    root: Path
    """Holds everything: conf, state, spool, logs, the munge key and socket."""
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    """The node's CPUs (all of this machine's)."""
    memory_mib: int = field(
        default_factory=lambda: int(psutil.virtual_memory().total / 2**20 * 0.5)
    )
    """The node's RealMemory: half of this machine's, so slurmd never finds less."""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What the SLURM commands need to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60) -> None:
        """munged, then slurmctld and slurmd; returns once the node is idle."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(exist_ok=True, mode=0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        socket_path = self.root / "munge" / "munge.socket"
        self._spawn(
            "munged", "--foreground", "--force", f"--key-file={key}",
            f"--socket={socket_path}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
        )  # fmt: skip
        self._wait(lambda: socket_path.exists(), "munged's socket", timeout)
        self.conf.write_text(self._slurm_conf(socket_path))
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-f", str(self.conf))
        self._wait(self._node_idle, "the node to be idle", timeout)

    def _slurm_conf(self, munge_socket: Path) -> str:
        host = socket.gethostname()
        r = self.root
        return "\n".join(
            [
                "ClusterName=slidemill-test",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_socket}",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool'}",
                f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'slurmd.pid'}",
                f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "MpiDefault=none",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "ReturnToService=2",
                # a job past its walltime is killed at once, and its resources freed quickly
                "OverTimeLimit=0",
                "KillWait=5",
                "MinJobAge=300",
                f"NodeName={host} CPUs={self.cpus} RealMemory={self.memory_mib} State=UNKNOWN",
                f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _spawn(self, name: str, *args: str) -> None:
        program = _which(name)
        assert program is not None, f"{name} is not installed"
        log = (self.root / "log" / f"{name}.out").open("ab")
        self.procs.append(
            subprocess.Popen(
                [program, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        )

    def _wait(self, ready: object, what: str, timeout: float) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while not ready():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args!r} exited ({p.returncode}) {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what} {self.logs()}")
            time.sleep(0.2)

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A SLURM command against this cluster."""
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=30,
            check=check,
        )

    def _node_idle(self) -> bool:
        proc = self.command("sinfo", "-h", "-N", "-o", "%T", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def jobs(self) -> dict[str, tuple[str, str, str]]:
        """Queued and recently ended jobs: id → (name, state, reason)."""
        out = self.command("squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%r").stdout
        rows = (line.split("|") for line in out.splitlines() if line.strip())
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace")[-1500:]
            parts.append(f"\n--- {path.name}\n{text}")
        return "".join(parts)

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, then stop the daemons (slurmd, slurmctld, munged)."""
        if self.procs and self.procs[0].poll() is None and len(self.procs) == 3:
            self.command("scancel", "--full", "--quiet", "-u", "root", check=False)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
