"""The `slidemill` command: one module per command group, each a thin shell over one library
call; slidemill's errors map to exit codes in one table (`EXIT_CODES`)."""

from slidemill.cli._app import app, main
from slidemill.cli._errors import EXIT_CODES, EXIT_FAILED, EXIT_USAGE, exit_code

__all__ = ["EXIT_CODES", "EXIT_FAILED", "EXIT_USAGE", "app", "exit_code", "main"]
