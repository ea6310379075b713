"""Typed errors of the pipeline, under the one root `SlidemillError`. Each message is one line
that names the file and, where there is one, the fix; the batch reports it in `result.json` and
`results.csv` and carries on."""

from __future__ import annotations

from slidemill.schemas.errors import InvalidInputError, SlidemillError, one_line


class PipelineError(SlidemillError):
    """Base of everything the pipeline raises on purpose."""


class SlideError(PipelineError):
    """A problem with one slide; the slide fails alone."""


class MissingSlideError(SlideError):
    """The slide file does not exist or cannot be read at all."""


class UnreadableSlideError(SlideError):
    """The file exists but is empty, truncated or corrupt."""


class UnsupportedSlideError(SlideError):
    """The file is not a whole-slide image any reader supports."""


class MissingResolutionError(SlideError):
    """The slide records no µm/px and none was given."""


class SlideFolderNotOursError(SlideError):
    """The slide's output folder exists and slidemill did not build it: it is left untouched
    and the slide fails."""


class SlidePathNotAllowedError(SlideError):
    """The slide resolves outside the allowed roots when it is opened (a link swapped in after
    it was submitted, say): it is not read."""


class NoTissueError(SlideError):
    """No tile passes the tissue filter; the slide is skipped, not failed."""


__all__ = [
    "BatchCancelledError",
    "InvalidInputError",
    "MissingResolutionError",
    "MissingSlideError",
    "NoTissueError",
    "NoWorkersError",
    "OutputLockedError",
    "OutputNotOursError",
    "PipelineError",
    "SchedulerLostError",
    "SlideError",
    "SlideFolderNotOursError",
    "SlidePathNotAllowedError",
    "UnreadableSlideError",
    "UnsupportedSlideError",
    "one_line",
]


class OutputLockedError(PipelineError):
    """Another run holds the output folder's lock; the message names the holder."""


class OutputNotOursError(PipelineError):
    """The output folder holds files slidemill did not write (or is not a folder): the batch
    writes nothing there."""


class NoWorkersError(PipelineError):
    """The cluster had no workers for longer than the run waits; unfinished slides fail."""


class SchedulerLostError(PipelineError):
    """The client lost its scheduler, and with it every task; unfinished slides fail."""


class BatchCancelledError(PipelineError):
    """Someone cancelled the batch; unfinished slides fail as cancelled, their finished blocks
    kept for a later run."""
