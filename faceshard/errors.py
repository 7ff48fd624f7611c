"""Errors the user reads as they are: every layer raises these, so they live on the ground floor."""

from __future__ import annotations


class StorageError(Exception):
    """An output, manifest or shard that cannot be used as asked."""


class ManifestError(StorageError, ValueError):
    """A manifest that cannot be read into video tasks (missing columns, bad labels, duplicate ids)."""


class FingerprintMismatch(StorageError):
    """The output was built with rows that the current configuration would not produce."""


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
