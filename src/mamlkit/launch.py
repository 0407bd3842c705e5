"""``python -m mamlkit.launch ARGS...``: ``torchrun ARGS...`` whose job, when its workers
exit with an error they have already explained (a user error: exit 2, one line; a lost
rank: exit 1), ends with their exit code and nothing more.

``torchrun`` itself turns any failed worker into its own ``ChildFailedError``: a traceback
through its launcher, a table per worker and exit code 1, whatever the worker said (torch's
launcher has no option to leave that out). This wrapper runs the same launcher
(``torch.distributed.run``, same arguments) and, when every failed worker *exited* (none
was killed by a signal), returns the first failure's exit code without that report. A
worker killed by a signal, or a failure of the launcher itself, is reported as ``torchrun``
reports it."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["main"]


class _DropWorkerExitLines(logging.Filter):
    """Leave out the agent's "failed (exitcode: N) local_rank: ..." line: the worker has
    already said why, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("failed (exitcode")


def main(argv: list[str] | None = None) -> int:
    """Run ``torchrun`` with ``argv`` (default: this command line); the job's exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun sets 1 itself when several processes share a node, with a 4-line banner
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    agent_log = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    if not any(isinstance(f, _DropWorkerExitLines) for f in agent_log.filters):
        agent_log.addFilter(_DropWorkerExitLines())
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        if not codes or min(codes) <= 0:  # killed by a signal: torchrun's report says which
            raise
        return exc.get_first_failure()[1].exitcode
    return 0


if __name__ == "__main__":
    sys.exit(main())
