"""The `slidemill` command: one module per command group, each a thin shell over one library call."""

from slidemill.cli._app import app, main

__all__ = ["app", "main"]
