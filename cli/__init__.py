"""The `slidemill` command: one module per command group, each a thin shell over one library
call; slidemill's errors map to exit codes in one table (`exit_codes`)."""

from slidemill.cli._app import app, main
from slidemill.cli._errors import EXIT_FAILED, EXIT_USAGE, exit_code, exit_codes

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "app", "exit_code", "exit_codes", "main"]
