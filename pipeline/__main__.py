"""`python -m pipeline` is the `slidemill` command."""

from pipeline.cli import main

main()
