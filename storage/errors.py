"""Errors raised by `storage/`: their messages are meant for the user as they are."""

from __future__ import annotations


class StorageError(Exception):
    """An output, manifest or shard that cannot be used as asked."""


class ManifestError(StorageError, ValueError):
    """A manifest that cannot be read into video tasks (missing columns, bad labels, duplicate ids)."""


class FingerprintMismatch(StorageError):
    """The output was built with rows that the current configuration would not produce."""
