"""The export's errors, under the pipeline's `PipelineError`."""

from __future__ import annotations

from slidemill.pipeline.errors import PipelineError


class ExportError(PipelineError):
    """A slide folder whose files cannot be written (its store or result is missing or
    unreadable); the message names the folder. The slide fails alone; the others go on."""
