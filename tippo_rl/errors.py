"""The errors a user's input or machine can cause, each a one-line message that names the file, row, option or path and
what to do; the recipes print it and exit with status 2 (`INPUT_ERRORS`, `TIPPoParser.reporting_input_errors`)."""

from __future__ import annotations

import errno


class DataValidationError(ValueError):
    """A row of a dataset file is unusable; the message names the file, row and field."""


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from; the message names the folder, the file and what to do."""


class DiskFullError(OSError):
    """A save ran out of disk space; the message names what was being written and, when known, the space it needs."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


class RewardError(ValueError):
    """A reward plug-in that cannot be used or misbehaved: its spec names no module, file or function, its signature
    cannot take the trainer's keyword arguments, it raised, or it returned NaN, inf or something not a number. The
    message is one line naming the reward and what is wrong."""


class OutputDirInUseError(RuntimeError):
    """Another run writes into this `output_dir`; the message names its PID, host and command."""


# What the recipes report as one line and exit status 2 (FileNotFoundError: a file an option names is missing).
INPUT_ERRORS = (
    DataValidationError,
    CheckpointError,
    FileNotFoundError,
    RewardError,
    OutputDirInUseError,
    DiskFullError,
)
