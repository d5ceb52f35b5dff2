"""The exceptions that mean "the input is wrong" (a missing column, a leaked patient, an
unreadable run folder...): the command line prints them as one line; everything else is a bug
and keeps its traceback."""

from __future__ import annotations

from probes.core.features import FeatureError
from probes.core.run import RunFolderError
from probes.core.splits import LeakageError

__all__ = ["USER_ERRORS"]

USER_ERRORS: tuple[type[BaseException], ...] = (
    FeatureError,
    LeakageError,
    RunFolderError,
    ValueError,
    FileNotFoundError,
)
