"""The real single-node SLURM (`slurm_harness`), for the session, started only by the tests
that ask for it. All of them live in `test_slurm.py`, so under `make test`'s
`--dist loadfile` one pytest process starts it, once."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster.slurm_harness import SingleNodeSlurm, missing_commands


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SingleNodeSlurm]:
    """slurmctld, slurmd and munged as root, all their state in a temporary folder; the SLURM
    commands of this process and its children (`SLURM_CONF`) talk to it."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM tests run slurmctld and slurmd as root; run them as root")
    missing = missing_commands()
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: `make slurm` installs slurm-wlm and munge"
        )
    cluster = SingleNodeSlurm(tmp_path_factory.mktemp("slurm"))
    saved = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ.update(cluster.env)
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
