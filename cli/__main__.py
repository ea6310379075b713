"""`python -m slidemill.cli` is the `slidemill` command."""

from slidemill.cli import main

main()
