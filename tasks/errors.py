"""The one exception per-video stages raise: the pipeline turns it into a `videos` row with status `error`."""

from __future__ import annotations


class VideoError(Exception):
    """A readable reason why one video cannot be processed; the shard goes on with the next video.

    The message is written for the user as is (it lands in the `error` column), e.g.
    ``"not a readable video container: Invalid data found when processing input"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
