"""`slidemill view`: the web viewer over run folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from slidemill.cli._errors import console, fail


def view(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (the --out of `slidemill run`).")],
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback needs a token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 8001,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the viewer's token (else $SLIDEMILL_TOKEN).")
    ] = None,
    cache_mb: Annotated[int, typer.Option(min=1, help="Encoded tiles kept in memory (MiB).")] = 256,
) -> None:
    """Serve run folders in the browser: a table of the slides, and each slide zoomable with its
    heatmap over it, the tile under the pointer and the top-k tiles."""
    from slidemill.cluster import require_extra

    require_extra("fastapi", "viewer", "slidemill view")
    require_extra("uvicorn", "viewer", "slidemill view")
    from slidemill.viewer import ViewerConfigError, ViewerOptions, checked_token, is_loopback
    from slidemill.viewer import view as serve_viewer

    # a variable set but empty is a mistake to report, never "no token" (nor "auth off")
    token = os.environ.get("SLIDEMILL_TOKEN")
    source = "SLIDEMILL_TOKEN"
    if token_file is not None:
        try:
            lines = token_file.read_text().strip().splitlines()
        except OSError as err:
            fail(f"{token_file}: cannot read the token file ({err.strerror})")
        token, source = (lines[0] if lines else ""), str(token_file)  # its first line, as serve's
    if token is not None:
        checked_token(token, source, ViewerConfigError)
    where = f"http://{host}:{port}/" + ("?token=…" if token else "")
    console.print(f"slidemill viewer on {where} (Ctrl-C stops it)", highlight=False)
    if not is_loopback(host):  # browsers keep a Secure cookie only from an https page
        console.print("beyond loopback its session cookie is Secure: serve it behind HTTPS")
    serve_viewer(runs, host, port, ViewerOptions(token=token, cache_bytes=cache_mb << 20))
