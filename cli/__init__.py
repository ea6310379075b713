"""The `slidemill` command: one module per command group, each a thin shell over one library
call; errors map to exit codes in `_errors`."""

from slidemill.cli._app import app, main

__all__ = ["app", "main"]
