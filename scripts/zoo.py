"""The zoo: reference runs kept in the repository (``zoo/NAME``, one per preset), trained in
pieces of a time budget on whatever machine has the time, until each has its full length.

    python scripts/zoo.py run --time 2h30m   # `make zoo ZOO_TIME=2h30m`
    python scripts/zoo.py table              # writes docs/zoo.md from zoo/ alone
    python scripts/zoo.py check              # the size caps (also a test)

``run`` continues the unfinished runs in :data:`ZOO` order, as many at once as the machine
has cores (one thread each; ``make zoo`` runs it at ``nice 19`` so that other work keeps
priority). A run starts with its preset and continues with ``mamlkit train --resume
--max-time``: it pauses with a checkpoint before the budget ends. Each piece's machine and
commit are in the run's ``env.json``/``resumes.jsonl``. A run that finished is evaluated with
its preset's protocol (``mamlkit eval``) as the next job, before another run starts training.
After every piece the run directory is trimmed to what resuming and evaluating need
(:data:`KEEP`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = ROOT / "zoo"
TABLE = ROOT / "docs" / "zoo.md"

#: size caps: one run, and the whole zoo
RUN_CAP = 3 * 2**20
ZOO_CAP = 60 * 2**20
#: what a zoo run keeps (the latest checkpoint only: train.keep_checkpoints=1)
KEEP = {
    "config.yaml",
    "data.json",
    "env.json",
    "resumes.jsonl",
    "metrics.jsonl",
    "status.json",
    "model.safetensors",
    "checkpoints",
}
#: settings every zoo run starts with: one thread (as many runs as cores), one checkpoint
START_SETS = ("train.threads=1", "train.keep_checkpoints=1", "train.tensorboard=false")
#: time kept back from a piece's budget for starting and trimming it (a tenth of short ones)
MARGIN = 60.0


def margin(budget: float) -> float:
    return min(MARGIN, budget / 10)


@dataclass(frozen=True)
class Entry:
    """A zoo run: its preset (the published number it is compared with is
    :data:`mamlkit.published.PUBLISHED`'s, or :data:`NO_NUMBER`'s note), or a ``variant`` of
    it: the preset with other settings (``sets``, what ``note`` says), named
    ``PRESET_VARIANT``."""

    preset: str
    variant: str = ""
    sets: tuple[str, ...] = ()
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.preset}_{self.variant}" if self.variant else self.preset

    @property
    def paper(self) -> str:
        from mamlkit.published import PUBLISHED

        if self.preset in NO_NUMBER:
            return NO_NUMBER[self.preset]
        published = PUBLISHED.get(self.preset)
        if published is None:
            return ""
        number = f"{' / '.join(published.by_step.values())} ({published.source})"
        return f"{number}; {self.note}" if self.note else number


#: zoo runs whose paper reports no number for their cell
NO_NUMBER = {
    "omniglot_anil_5w1s": "none: Raghu et al. 2020 report no Omniglot 5-way 1-shot",
    "omniglot_lake_protonet_20w1s": "none quoted here (Lake et al.'s protocol)",
}
#: the zoo, in its priority order (issue "Reference runs that outlive a machine")
ZOO: list[Entry] = [
    Entry(name)
    for name in (
        "rl_cheetah_vel_maml",
        "rl_cheetah_dir_maml",
        "omniglot_anil_5w1s",
        "omniglot_metasgd_5w1s",
        "omniglot_mamlpp_5w1s",
        "omniglot_reptile_5w1s",
        "omniglot_fomaml_5w1s",
        "rl_cheetah_vel_pretrained",
        "rl_cheetah_vel_oracle",
        "rl_cheetah_dir_pretrained",
        "rl_cheetah_dir_oracle",
        "rl_nav2d_maml",
        "rl_nav2d_pretrained",
        "rl_nav2d_oracle",
        "omniglot_lake_protonet_20w1s",
        "omniglot_protonet_5w1s",
        "omniglot_protonet_5w5s",
        "omniglot_protonet_20w1s",
        "omniglot_protonet_20w5s",
        "omniglot_maml_5w5s",
        "omniglot_maml_20w1s",
        "omniglot_maml_20w5s",
    )
]
#: the MAML half-cheetahs in gymnasium's MDP (HalfCheetah-v5: 5 physics steps per environment
#: step), as the presets ran before they took the paper's (rllab's) in session 16
ZOO += [
    Entry(
        f"rl_cheetah_{goal}_maml",
        "gymnasium",
        ("task.env=gymnasium",),
        "this run: gymnasium's HalfCheetah-v5 MDP, not the paper's (rllab's)",
    )
    for goal in ("vel", "dir")
]


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status(run: Path) -> dict:
    return read_json(run / "status.json") or {}


def length(run: Path) -> int | None:
    import yaml

    try:
        return int(yaml.safe_load((run / "config.yaml").read_text())["train"]["iterations"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def evaluation(run: Path) -> dict | None:
    """The run's eval.json when it evaluated the weights the run has now."""
    record = read_json(run / "eval.json")
    if record is None or status(run).get("status") != "finished":
        return None
    if record.get("step") != status(run).get("step"):
        return None  # an evaluation of other weights (the run was extended since)
    return record


def trim(run: Path) -> None:
    """Keep what resuming and evaluating need: :data:`KEEP`, eval files, one checkpoint."""
    for path in run.iterdir():
        keep = path.name in KEEP or (path.name.startswith("eval") and path.suffix == ".json")
        if keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    checkpoints = sorted((run / "checkpoints").glob("step-*.safetensors"))
    for old in checkpoints[:-1]:
        old.unlink()
    # a finished run is evaluated from model.safetensors; its last checkpoint only serves to
    # train it further. Where both break the cap (Meta-SGD: step sizes and their Adam
    # moments), the checkpoint goes: the weights are what the zoo keeps.
    finished = status(run).get("status") == "finished" and (run / "model.safetensors").is_file()
    if finished and sizes(run.parent)[0].get(run.name, 0) > RUN_CAP:
        for path in checkpoints[-1:]:
            path.unlink()


def mamlkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "mamlkit", *args]


def piece_command(entry: Entry, zoo: Path, seconds: float) -> list[str] | None:
    """The command that continues ``entry`` for ``seconds``, or None when it has nothing to
    train (finished, or diverged: a run that needs other settings is a new zoo run)."""
    run = zoo / entry.name
    budget = f"{max(int(seconds), 1)}s"
    state = status(run).get("status")
    if state in ("finished", "diverged"):
        return None
    if not (run / "config.yaml").is_file():
        sets = [a for s in (*START_SETS, *entry.sets) for a in ("--set", s)]
        return mamlkit("train", entry.preset, "--out", str(run), "--no-progress", *sets,
                       "--max-time", budget)  # fmt: skip
    return mamlkit("train", "--resume", str(run), "--no-progress", "--max-time", budget)


def _say(text: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[zoo {stamp}] {text}", flush=True)


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
        Path("/proc/self/autogroup").write_text("19")
    except OSError:
        pass


def _needs_evaluation(run: Path) -> bool:
    return status(run).get("status") == "finished" and evaluation(run) is None


def _start(kind: str, entry: Entry, zoo: Path, left: float, env: dict) -> subprocess.Popen:
    """Start a training piece of ``left`` seconds, or an evaluation, logging to the zoo."""
    run = zoo / entry.name
    if kind == "train":
        command = piece_command(entry, zoo, left)
        _say(f"{entry.name}: training from step {int(status(run).get('step', 0))} "
             f"for {int(left)} s")  # fmt: skip
    else:
        command = mamlkit("eval", str(run))
        _say(f"{entry.name}: evaluating with its preset's protocol")
    log = open(zoo / f".{entry.name}.log", "a")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _log_tail(zoo: Path, name: str) -> str:
    lines = (zoo / f".{name}.log").read_text(errors="replace").splitlines()
    return " | ".join(lines[-3:])


def run_zoo(budget: float, zoo: Path = ZOO_DIR, jobs: int | None = None,
            entries: list[Entry] | None = None) -> list[dict]:  # fmt: skip
    """Continue the zoo's unfinished runs for ``budget`` seconds, ``jobs`` at once. A run that
    finishes (in this zoo or an earlier one) is evaluated next, as a job of its own, before
    the next run starts training; an evaluation the budget cuts short is redone by the next
    zoo. Returns what happened to each run trained."""
    deadline = time.monotonic() + budget
    keep = margin(budget)
    jobs = jobs or os.cpu_count() or 1
    entries = entries or ZOO
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
            proc = _start(kind, entry, zoo, left - keep, env)
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
        time.sleep(2)
    for entry in entries:
        if _needs_evaluation(zoo / entry.name):
            _say(f"{entry.name}: finished, not evaluated (no time left; the next zoo does it)")
    for log in zoo.glob(".*.log"):
        log.unlink()
    return report


def sizes(zoo: Path = ZOO_DIR) -> tuple[dict[str, int], int]:
    per_run = {
        run.name: sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
        for run in sorted(zoo.iterdir())
        if run.is_dir()
    } if zoo.is_dir() else {}  # fmt: skip
    return per_run, sum(per_run.values())


def check(zoo: Path = ZOO_DIR) -> list[str]:
    """What breaks the zoo's size caps."""
    per_run, total = sizes(zoo)
    problems = [
        f"{name}: {size / 2**20:.2f} MB > {RUN_CAP / 2**20:.0f} MB"
        for name, size in per_run.items()
        if size > RUN_CAP
    ]
    if total > ZOO_CAP:
        problems.append(f"zoo: {total / 2**20:.1f} MB > {ZOO_CAP / 2**20:.0f} MB")
    return problems


# ---- the table ---------------------------------------------------------------------------
def _pieces(run: Path) -> list[dict]:
    first = read_json(run / "env.json") or {}
    pieces = [first]
    try:
        lines = (run / "resumes.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            pieces.append(json.loads(line))
        except ValueError:
            continue
    return pieces


def _machines(pieces: list[dict]) -> str:
    seen: dict[str, None] = {}
    for piece in pieces:
        hw = piece.get("gpu") or piece.get("cpu") or "unknown CPU"
        commit = (piece.get("git_commit") or "")[:7] or "commit not recorded"
        dirty = "+" if piece.get("git_dirty") else ""
        seen[f"{hw} @ {commit}{dirty}"] = None
    return "; ".join(seen)


def _metric_cell(record: dict) -> str:
    if "by_step" in record:  # RL: after every step
        cells = [f"{r['return']:.2f} ± {r['ci95']:.2f}" for r in record["by_step"]]
        return " / ".join(cells) + f" ({record.get('tasks')} tasks)"
    for metric in ("accuracy", "return", "mse"):
        if metric in record and record[metric] is not None:
            value = record[metric] * (100 if metric == "accuracy" else 1)
            ci = (record.get("ci95") or 0) * (100 if metric == "accuracy" else 1)
            return (f"{value:.2f} ± {ci:.2f} after {record.get('steps')} steps "
                    f"({record.get('tasks')} tasks)")  # fmt: skip
    return "not finite"


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "–"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


def table(zoo: Path = ZOO_DIR, entries: list[Entry] | None = None) -> str:
    """docs/zoo.md: one row per zoo run, from the zoo's files alone."""
    lines = [
        "# The zoo: reference runs in the repository",
        "",
        "Generated by `python scripts/zoo.py table` from the files under `zoo/` (do not edit;",
        "`make zoo` trains the unfinished runs further and regenerates it). Each run is a",
        "resumable mamlkit run directory: `mamlkit eval zoo/NAME`, `mamlkit adapt zoo/NAME …`",
        "and `mamlkit.from_run(\"zoo/NAME\")` work on it without training. Metrics are on the",
        "preset's test protocol (Omniglot: 600 tasks; RL: 40 tasks) with 95% confidence",
        "intervals; a run not yet finished is not evaluated.",
        "",
        "| run | iterations | ours | paper | machines @ commits | training time |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries or ZOO:
        run = zoo / entry.name
        if not (run / "config.yaml").is_file():
            lines.append(f"| `{entry.name}` | not started | – | {entry.paper or '–'} | – | – |")
            continue
        state = status(run)
        done, total = state.get("step", 0), length(run)
        record = evaluation(run)
        if record is not None:
            ours = _metric_cell(record)
        elif state.get("status") == "finished":
            ours = "finished, not evaluated yet"
        else:
            ours = f"not evaluated yet ({state.get('status', 'unknown')})"
        best = state.get("best")
        if record is None and isinstance(best, dict) and isinstance(best.get("value"), float):
            ours += f"; best validation {best['value']:.4g} at step {best.get('step')}"
        lines.append(
            f"| `{entry.name}` | {done} / {total} | {ours} | {entry.paper or '–'} | "
            f"{_machines(_pieces(run))} | {_duration(state.get('train_seconds'))} |"
        )
    per_run, total = sizes(zoo)
    caps = f"caps: {RUN_CAP // 2**20} MB a run, {ZOO_CAP // 2**20} MB in all"
    lines += ["", f"Zoo size: {total / 2**20:.1f} MB in {len(per_run)} runs ({caps}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="continue the unfinished zoo runs for a time budget")
    run_p.add_argument("--time", default="2h30m", help="budget, e.g. 2h30m (default)")
    run_p.add_argument("--jobs", type=int, default=None, help="runs at once (default: cores)")
    run_p.add_argument("--zoo", type=Path, default=ZOO_DIR)
    run_p.add_argument("--only", nargs="*", default=None, help="these runs only")
    table_p = sub.add_parser("table", help="write docs/zoo.md from zoo/")
    table_p.add_argument("--zoo", type=Path, default=ZOO_DIR)
    table_p.add_argument("--out", type=Path, default=TABLE)
    check_p = sub.add_parser("check", help="the size caps")
    check_p.add_argument("--zoo", type=Path, default=ZOO_DIR)
    args = parser.parse_args(argv)
    if args.command == "run":
        from mamlkit.budget import parse_duration
        from mamlkit.errors import UserError

        try:
            budget = parse_duration(args.time, "ZOO_TIME")
        except UserError as exc:
            print(f"zoo: error: {exc}", file=sys.stderr)
            return 2
        entries = ZOO if args.only is None else [e for e in ZOO if e.name in args.only]
        lowest_priority()
        report = run_zoo(budget, args.zoo, args.jobs, entries)
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
