"""Errors the user reads as they are: every layer raises these, so they live on the ground floor.

`ExitCode` is the one list of what `faceshard` exits with (README, "Exit codes"). Click/typer's own
usage errors (an unknown option, a missing argument) exit 2, so faceshard's own refusals use other
codes: a script can tell "I called it wrong" from "the input is wrong" from "someone else holds it".
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of every `faceshard` command."""

    OK = 0
    FAILED = 1  # the command ran and reports failures (failed shards or videos: see `status`)
    USAGE = 2  # the CLI framework's: unknown option, missing argument, bad option type
    BAD_INPUT = 3  # a manifest, path, preset, config value or output that cannot be used as given
    BUSY = 4  # the output is held by another live build (or cannot be written)
    DAMAGED = 5  # the output's metadata is damaged: `faceshard repair URI`
    NO_WEIGHTS = 6  # a model's weights are missing: `faceshard weights` says where to put them
    INTERNAL = 70  # a bug: rerun with --verbose and report the traceback
    INTERRUPTED = 130  # Ctrl-C / SIGINT / SIGTERM


class UserError(Exception):
    """A refusal whose message is meant for the user as is, with the exit code it ends with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


class StorageError(Exception):
    """An output, manifest or shard that cannot be used as asked."""


class ManifestError(StorageError, ValueError):
    """A manifest that cannot be read into video tasks (missing columns, bad labels, duplicate ids)."""


class FingerprintMismatch(StorageError):
    """The output was built with rows that the current configuration would not produce."""


class DamagedOutput(StorageError):
    """An output whose metadata (`_faceshard.json`, the plan, a marker, the lease) cannot be read;
    the message names the file and `faceshard repair`."""


class VideoError(Exception):
    """A readable reason why one video cannot be processed; the shard goes on with the next video.

    The message is written for the user as is (it lands in the `error` column), e.g.
    ``"not a readable video container: Invalid data found when processing input"``.
    The pipeline turns it into a `videos` row with status `error`.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutputBusy(StorageError):
    """Another live build holds the output's lease; the message names it (owner, host, pid, expiry)."""
