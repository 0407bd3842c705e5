"""User-facing errors: the CLI prints ``str(exc)`` as one line and exits with code 2."""

from __future__ import annotations

import errno


class UserError(Exception):
    """A mistake in what the user asked for (a path, a config value, a data set).

    The message is one line that names the input and says how to fix it.
    """


class ConfigError(UserError):
    """A config key is unknown, has the wrong type, or an impossible value."""


class DivergenceError(UserError):
    """The loss or the meta-gradient became NaN/Inf; training stopped."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM at an iteration's end, after writing a checkpoint
    of that iteration; the message says where ``--resume`` continues (the CLI prints it as
    one line and exits with code 130)."""


class LostRank(Exception):
    """A collective of a ``torchrun`` job failed: another process of the job died, hung
    longer than ``MAMLKIT_DIST_TIMEOUT`` or left it.

    Not the user's mistake (the CLI exits with code 1, not 2), but one line too: a
    traceback would point into gloo or nccl, while the cause is in the other process's own
    message.
    """


# A write refused by the system rather than a bug: full disk or quota, a file-size limit,
# a read-only file system, missing permission.
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)


def is_write_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS
