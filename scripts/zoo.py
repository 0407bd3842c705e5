"""The zoo: reference runs kept in the repository (``zoo/NAME``, one per preset), trained in
pieces of a time budget on whatever machine has the time, until each has its full length.

    python scripts/zoo.py run --time 2h30m   # `make zoo ZOO_TIME=2h30m`
    python scripts/zoo.py run --time 9m --device cuda --jobs 3 --only NAME ...   # a lent GPU
    python scripts/zoo.py table              # writes docs/zoo.md from zoo/ alone
    python scripts/zoo.py check              # the size caps (also a test)

``run`` continues the unfinished runs in :data:`ZOO` order, as many at once as the machine
has cores (one thread each; ``make zoo`` runs it at ``nice 19`` so that other work keeps
priority). A run starts with its preset and continues with ``mamlkit train --resume
--max-time``: it pauses with a checkpoint before the budget ends. Each piece's machine and
commit are in the run's ``env.json``/``resumes.jsonl``; a run its preset has since asked to
keep an ensemble's test predictions for (``eval.ensemble``) keeps them from its next piece
on (:func:`protocol_sets`). A run that finished is evaluated with
its preset's protocol (``mamlkit eval``) as the next job, before another run starts training.
After every piece the run directory is trimmed to what resuming and evaluating need
(:data:`KEEP`). With ``--device cuda`` the pieces train on a GPU: a run last trained on the
CPU moves there (``mamlkit train --resume --device``; its task sampler starts from a new
seed, which ``resumes.jsonl`` records), and the next CPU zoo moves it back (RL runs stay on
the CPU: their time is the environments'). The runs and
their files: ``scripts/zoo_runs.py``; the table: ``scripts/zoo_table.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_runs import (  # noqa: E402, F401 (the zoo's runs, re-exported for the tests)
    KEEP,
    NO_NUMBER,
    RUN_CAP,
    ZOO,
    ZOO_CAP,
    ZOO_DIR,
    Entry,
    check,
    evaluation,
    length,
    read_json,
    sizes,
    status,
    trim,
)
from zoo_table import TABLE, table  # noqa: E402

#: settings every zoo run starts with: one thread (as many runs as cores), one checkpoint
START_SETS = ("train.threads=1", "train.keep_checkpoints=1", "train.tensorboard=false")
#: seconds between two looks at the running pieces (the tests' stand-ins take a shorter one)
POLL = 2.0
#: time kept back from a piece's budget for starting and trimming it (a tenth of short ones)
MARGIN = 60.0


def margin(budget: float) -> float:
    return min(MARGIN, budget / 10)


def mamlkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "mamlkit", *args]


def piece_command(
    entry: Entry, zoo: Path, seconds: float, device: str = "cpu"
) -> list[str] | None:
    """The command that continues ``entry`` for ``seconds`` on ``device``, or None when it
    has nothing to train (finished, or diverged: a run that needs other settings is a new
    zoo run). A run last trained on another device moves to this one (``--device``): a GPU
    machine can take a piece of a run and hand it back."""
    run = zoo / entry.name
    budget = f"{max(int(seconds), 1)}s"
    state = status(run).get("status")
    if state in ("finished", "diverged"):
        return None
    where = ["--device", device]
    if not (run / "config.yaml").is_file():
        sets = [a for s in (*START_SETS, *entry.sets) for a in ("--set", s)]
        return mamlkit("train", entry.preset, "--out", str(run), "--no-progress", *sets,
                       *where, "--max-time", budget)  # fmt: skip
    sets = [a for s in protocol_sets(entry, run) for a in ("--set", s)]
    if run_device(run) in (None, torch_device_type(device)):
        where = []  # it stays where it is (or its config is unreadable: the resume says so)
    return mamlkit("train", "--resume", str(run), "--no-progress", *sets, *where,
                   "--max-time", budget)  # fmt: skip


def torch_device_type(device: str) -> str:
    """``cuda:1`` -> ``cuda``."""
    return device.split(":", 1)[0]


def run_device(run: Path) -> str | None:
    """The kind of device a zoo run's config trains on (None: unreadable; the resume says
    what is wrong)."""
    import yaml

    try:
        device = yaml.safe_load((run / "config.yaml").read_text())["train"]["device"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return torch_device_type(device) if isinstance(device, str) else None


def protocol_sets(entry: Entry, run: Path) -> list[str]:
    """The preset's test-protocol settings that a resume may take and the run lacks: a run
    started before its preset kept the test predictions of its best validation checkpoints
    (``eval.ensemble``, MAML++'s protocol) keeps them from its next piece on."""
    import yaml

    from mamlkit.config import load_config
    from mamlkit.errors import ConfigError

    try:
        section = yaml.safe_load((run / "config.yaml").read_text()).get("eval") or {}
        wanted = load_config(entry.preset, list(entry.sets)).eval.ensemble
    except (OSError, AttributeError, yaml.YAMLError, ConfigError):  # the resume says what
        return []
    return [f"eval.ensemble={wanted}"] if section.get("ensemble", 1) != wanted else []


def _say(text: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[zoo {stamp}] {text}", flush=True)


#: the CPU share of this process's session (Linux's autogroup), where the kernel has one
AUTOGROUP = Path("/proc/self/autogroup")


def lowest_priority() -> None:
    """Yield the CPU to everything else. `nice 19` alone does not where the kernel shares the
    CPU between sessions first (Linux's autogroup): a background zoo (no terminal) takes a
    session of its own and sets that session's share to the lowest."""
    if os.environ.get("ZOO_NICE", "19") == "0":
        return  # asked to keep the normal priority (a test of the zoo beside others)
    os.nice(19 - os.nice(0))
    if sys.stdin.isatty():
        return  # in a terminal: keep Ctrl-C reaching it
    try:
        os.setsid()
    except OSError:
        pass  # a session leader already (started with `setsid`): its session is its own
    try:
        AUTOGROUP.write_text("19")
    except OSError:
        pass  # no autogroup here: nice alone decides


def _is_rl(entry: Entry) -> bool:
    """Whether ``entry``'s preset is a reinforcement-learning task."""
    from mamlkit.config import load_config
    from mamlkit.tasks.registry import task_spec

    return task_spec(load_config(entry.preset, list(entry.sets)).task.name).rl


def _needs_evaluation(run: Path) -> bool:
    return status(run).get("status") == "finished" and evaluation(run) is None


def _start(
    kind: str, entry: Entry, zoo: Path, left: float, env: dict, device: str = "cpu"
) -> subprocess.Popen:
    """Start a training piece of ``left`` seconds, or an evaluation, logging to the zoo."""
    run = zoo / entry.name
    if kind == "train":
        command = piece_command(entry, zoo, left, device)
        _say(f"{entry.name}: training from step {int(status(run).get('step', 0))} "
             f"for {int(left)} s on {device}")  # fmt: skip
    else:
        command = mamlkit("eval", str(run), "--device", device)
        _say(f"{entry.name}: evaluating with its preset's protocol")
    log = open(zoo / f".{entry.name}.log", "a")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _log_tail(zoo: Path, name: str) -> str:
    lines = (zoo / f".{name}.log").read_text(errors="replace").splitlines()
    return " | ".join(lines[-3:])


def run_zoo(budget: float, zoo: Path = ZOO_DIR, jobs: int | None = None,
            entries: list[Entry] | None = None, device: str = "cpu") -> list[dict]:  # fmt: skip
    """Continue the zoo's unfinished runs for ``budget`` seconds, ``jobs`` at once, on
    ``device`` (a run trained elsewhere moves here for the piece). A run that
    finishes (in this zoo or an earlier one) is evaluated next, as a job of its own, before
    the next run starts training; an evaluation the budget cuts short is redone by the next
    zoo. Returns what happened to each run trained."""
    deadline = time.monotonic() + budget
    keep = margin(budget)
    jobs = jobs or os.cpu_count() or 1
    entries = entries or ZOO
    if device != "cpu":  # RL trains on the CPU: its time goes to the environments' steps
        for entry in [e for e in entries if _is_rl(e)]:
            _say(f"{entry.name}: RL, not trained on {device} (its rollouts run on the CPU)")
        entries = [e for e in entries if not _is_rl(e)]
    queue = [("eval", e) for e in entries if _needs_evaluation(zoo / e.name)]
    queue += [("train", e) for e in entries if piece_command(e, zoo, 1) is not None]
    running: dict[str, tuple[subprocess.Popen, str, Entry, int]] = {}
    report: list[dict] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    zoo.mkdir(exist_ok=True)
    while queue or running:
        left = deadline - time.monotonic()
        while queue and len(running) < jobs and left > 2 * keep:
            kind, entry = queue.pop(0)
            before = int(status(zoo / entry.name).get("step", 0))
            proc = _start(kind, entry, zoo, left - keep, env, device)
            running[entry.name] = (proc, kind, entry, before)
        for name, (proc, kind, entry, before) in list(running.items()):
            if proc.poll() is None:
                if kind == "eval" and time.monotonic() > deadline - keep / 2:
                    proc.terminate()  # training pieces stop themselves (--max-time)
                    proc.wait()
                    _say(f"{name}: evaluation stopped by the budget; the next zoo redoes it")
                    del running[name]
                continue
            del running[name]
            run = zoo / name
            if kind == "eval":
                state = "written" if evaluation(run) is not None else "not written"
                _say(f"{name}: evaluation {state} (exit {proc.returncode})")
                if proc.returncode != 0:
                    _say(f"{name}: " + _log_tail(zoo, name))
                continue
            state = status(run)
            trim(run)
            row = {
                "run": name,
                "from": before,
                "to": state.get("step", 0),
                "of": length(run),
                "status": state.get("status"),
                "exit": proc.returncode,
            }
            _say(f"{name}: step {row['from']} -> {row['to']} of {row['of']} ({row['status']}, "
                 f"exit {proc.returncode})")  # fmt: skip
            if proc.returncode != 0:
                _say(f"{name}: " + _log_tail(zoo, name))
            if _needs_evaluation(run):
                queue.insert(0, ("eval", entry))  # a finished run is evaluated first
            report.append(row)
        if not running and deadline - time.monotonic() <= 2 * keep:
            break
        time.sleep(POLL)
    for entry in entries:
        if _needs_evaluation(zoo / entry.name):
            _say(f"{entry.name}: finished, not evaluated (no time left; the next zoo does it)")
    for log in zoo.glob(".*.log"):
        log.unlink()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="continue the unfinished zoo runs for a time budget")
    run_p.add_argument("--time", default="2h30m", help="budget, e.g. 2h30m (default)")
    run_p.add_argument("--jobs", type=int, default=None, help="runs at once (default: cores)")
    run_p.add_argument("--zoo", type=Path, default=ZOO_DIR)
    run_p.add_argument("--only", nargs="*", default=None, help="these runs only")
    run_p.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda: where the pieces train"
    )
    table_p = sub.add_parser("table", help="write docs/zoo.md from zoo/")
    table_p.add_argument("--zoo", type=Path, default=ZOO_DIR)
    table_p.add_argument("--out", type=Path, default=TABLE)
    check_p = sub.add_parser("check", help="the size caps")
    check_p.add_argument("--zoo", type=Path, default=ZOO_DIR)
    args = parser.parse_args(argv)
    if args.command == "run":
        from mamlkit.budget import parse_duration
        from mamlkit.errors import UserError

        try:  # mamlkit's own check: cpu, or cuda where this machine has it
            from mamlkit.cli.common import check_device

            check_device(args.device)
        except UserError as exc:
            print(f"zoo: error: {exc}", file=sys.stderr)
            return 2
        try:
            budget = parse_duration(args.time, "ZOO_TIME")
        except UserError as exc:
            print(f"zoo: error: {exc}", file=sys.stderr)
            return 2
        entries = ZOO if args.only is None else [e for e in ZOO if e.name in args.only]
        lowest_priority()
        report = run_zoo(budget, args.zoo, args.jobs, entries, args.device)
        for row in report:
            print(f"{row['run']}: step {row['from']} -> {row['to']} of {row['of']} "
                  f"({row['status']})")  # fmt: skip
        if not report:
            print("zoo: nothing to train")
        return 0
    if args.command == "table":
        args.out.write_text(table(args.zoo))
        print(f"wrote {args.out}")
        return 0
    problems = check(args.zoo)
    for problem in problems:
        print(f"zoo: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
