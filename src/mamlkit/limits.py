"""Ceilings on the work one evaluation may ask for, shared by config values and the command
line's flags (``eval --tasks/--steps/--samples``, ``adapt --steps``), so that a mistyped
number is refused in one line before anything is allocated or a loop starts that would
never end (``eval --steps 1000000000000`` was an allocator traceback, ``eval --tasks
99999999999999999999999`` ran forever). Each ceiling is far above any sensible request and
documented in docs/reliability.md. Kept free of torch: config validation uses it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mamlkit.errors import UserError

if TYPE_CHECKING:
    from mamlkit.config import Config

__all__ = [
    "MAX_ENV_STEPS",
    "MAX_EVAL_SAMPLES",
    "MAX_EVAL_TASKS",
    "MAX_SEEDS",
    "MAX_STEPS",
    "MAX_TASK_STEPS",
    "check_eval_work",
    "check_flag",
]

#: test tasks of one evaluation (the papers use 600)
MAX_EVAL_TASKS = 1_000_000
#: test-time adaptation steps of eval and adapt (the papers use 10; 100,000 takes minutes)
MAX_STEPS = 1_000_000
#: RL: environment steps per task per test step (maml_rl's test batch is 4,000)
MAX_EVAL_SAMPLES = 10_000_000
#: seeds of `reproduce sine-seeds` (each trains its own models; the study uses 5)
MAX_SEEDS = 10_000
#: tasks x (steps + 1) of one evaluation: at this many, hours of computing
MAX_TASK_STEPS = 1_000_000_000
#: RL: environment steps of one evaluation: at this many, days of simulation
MAX_ENV_STEPS = 10_000_000_000

_REASONS = {
    "tasks": (MAX_EVAL_TASKS, "test tasks; the papers use 600, more only narrows the interval"),
    "steps": (MAX_STEPS, "adaptation steps; the papers use 10"),
    "samples": (MAX_EVAL_SAMPLES, "environment steps per task and test step"),
    "seeds": (MAX_SEEDS, "seeds, each training its own models; the study uses 5"),
}


def check_flag(flag: str, value: int | None, kind: str) -> None:
    """Refuse a command-line count above its ceiling (``kind``: tasks, steps, samples or
    seeds) before anything is loaded; None (not given) passes."""
    ceiling, what = _REASONS[kind]
    if value is not None and value > ceiling:
        raise UserError(f"{flag} {value}: more than {ceiling:,} {what}; give at most {ceiling:,}")


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_eval_work(
    config: Config, tasks: int, steps: int, names: dict[str, str], rl: bool = False
) -> None:
    """Refuse an evaluation of ``tasks`` tasks and ``steps`` steps (and, ``rl``, the
    config's environment steps per test step) whose size alone is beyond reason, before it
    starts: each count over its ceiling, ``tasks x (steps + 1)`` over
    :data:`MAX_TASK_STEPS`, the per-task table of results (8 bytes a task and step) over
    this machine's memory, an RL evaluation over :data:`MAX_ENV_STEPS`. ``names`` say how
    the user set each count (``--tasks`` or ``config key 'eval.tasks'``)."""
    check_flag(names["tasks"], tasks, "tasks")
    check_flag(names["steps"], steps, "steps")
    both = f"{names['tasks']} {tasks} with {names['steps']} {steps}"
    work = tasks * (steps + 1)
    if work > MAX_TASK_STEPS:
        raise UserError(
            f"{both}: {work:.3g} task-steps, more than the {MAX_TASK_STEPS:.0e} one evaluation "
            "may do (hours of computing); lower them"
        )
    memory = _memory_bytes()
    if memory and 8 * work > memory // 2:
        raise UserError(
            f"{both}: the table of per-task results alone needs {8 * work / 2**30:.1f} GiB, more "
            f"than half this machine's {memory / 2**30:.0f} GiB of memory; lower them"
        )
    if rl:
        t = config.task
        check_flag(names["samples"], t.eval_samples, "samples")
        per_step = max(t.eval_samples, t.eval_rollouts * t.horizon)
        env_steps = work * per_step
        if env_steps > MAX_ENV_STEPS:
            raise UserError(
                f"{both} and {names['samples']} {t.eval_samples} ({t.eval_rollouts} "
                f"trajectories of {t.horizon} steps per test step): {env_steps:.3g} environment "
                f"steps, more than the {MAX_ENV_STEPS:.0e} one evaluation may simulate (days); "
                "lower them"
            )
