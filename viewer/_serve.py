"""`slidemill view`: the viewer alone, under uvicorn, on loopback unless given a token."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from slidemill.schemas.layout import RESULT_JSON, RESULTS_CSV
from slidemill.viewer._access import is_loopback
from slidemill.viewer._app import ViewerOptions, create_viewer_app
from slidemill.viewer._runs import FolderCatalog
from slidemill.viewer.errors import ViewerConfigError


def check_run_folders(folders: Sequence[Path]) -> list[Path]:
    """The folders, resolved; ViewerConfigError naming the first that is not a run folder."""
    if not folders:
        raise ViewerConfigError("name at least one run folder (the --out of `slidemill run`)")
    checked = []
    for folder in folders:
        if not folder.is_dir():
            raise ViewerConfigError(f"{folder}: not a folder")
        if not (folder / RESULTS_CSV).is_file() and not any(folder.glob(f"*/{RESULT_JSON}")):
            raise ViewerConfigError(f"{folder}: no results.csv and no slide results: not a run")
        checked.append(folder.resolve())
    return checked


def view(
    folders: Sequence[Path],
    host: str = "127.0.0.1",
    port: int = 8001,
    options: ViewerOptions | None = None,
) -> None:
    """Serve `folders` until SIGINT or SIGTERM. Off loopback only with a token (checked, as any
    token is, by `ViewerOptions`), and then its session cookie is always `Secure`."""
    runs = check_run_folders(folders)
    options = options or ViewerOptions()
    if not is_loopback(host):
        if options.token is None:
            raise ViewerConfigError(
                f"binding {host} (beyond loopback) needs a token: set SLIDEMILL_TOKEN or "
                "--token-file"
            )
        options = dataclasses.replace(options, off_loopback=True)
    app = create_viewer_app(FolderCatalog(runs), options)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()
