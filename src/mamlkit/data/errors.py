"""Exceptions raised by the data layer.

The data layer is the part of mamlkit that users hit first and most often gets wrong input
(missing downloads, half-copied archives, wrong folders), so its failures are reported as a
single exception type that the CLI can catch and print without a traceback.
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(Exception):
    """A user-facing data problem.

    ``str(exc)`` is ONE line that names the offending input (a path, or an archive member)
    and says how to fix it, so that a command-line front end can print it as is.
    """

    def __init__(self, message: str) -> None:
        # Collapse any line breaks (e.g. from an embedded OS error) so the one-line promise
        # holds no matter what text we were handed.
        super().__init__(" ".join(str(message).split()))
