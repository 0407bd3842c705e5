"""Which code a run may make mamlkit run, and what a command may ask for (issue 23):

- item 1: a ``model.target`` is trusted by what it resolves to (an nn.Module class defined
  in mamlkit), never by its name; ``model.kwargs`` are plain data;
- items 15, 19: a target that exits at import or raises while building is one line;
- item 17: YAML anchor bombs, recursive aliases and deep nesting are refused before use;
- item 16: every count of eval/adapt/reproduce has a ceiling, an evaluation's size is
  estimated before it starts;
- item 24: a message suggests only flags its command has (adapt --checkpoint, --device);
- item 20: under torchrun a user error is said once; ``python -m mamlkit.launch``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import mamlkit
from mamlkit.errors import UserError

from .test_cli_bad_input import assert_user_error, run_cli


def refused(capsys, *argv, match: str = "") -> str:
    """assert_user_error, and every flag its line suggests exists on that command."""
    line = assert_user_error(capsys, *argv, match=match)
    check_suggested_flags(list(argv), line)
    return line


TINY = [
    "train.iterations=2",
    "train.meta_batch=2",
    "train.tensorboard=false",
    "eval.tasks=2",
    "algorithm.inner_steps=1",
]


def _sets(values: list[str]) -> list[str]:
    return [a for s in values for a in ("--set", s)]


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory) -> Path:
    """A finished two-step sine run with a checkpoint (for eval, adapt and --resume)."""
    from mamlkit.cli import main

    run = tmp_path_factory.mktemp("trust") / "sine"
    code = main(["train", "sine_maml", *_sets(TINY), "--out", str(run), "--no-progress"])
    assert code == 0
    return run


def _copy_with_model(run: Path, dest: Path, model: dict) -> Path:
    """A copy of ``run`` whose config.yaml builds its model with ``model`` (as an attacker
    or a careless user would edit it)."""
    shutil.copytree(run, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    config["model"].update(model)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def _commands(run: Path, tmp_path: Path) -> dict[str, list]:
    support = tmp_path / "support.csv"
    support.write_text("x,y\n0.5,0.1\n1.5,0.9\n")
    return {
        "eval": ["eval", run],
        "adapt": ["adapt", run, "--support", support, "--query", "1.0"],
        "resume": ["train", "--resume", run, "--set", "train.iterations=3", "--no-progress"],
    }


# (target, kwargs): each resolves, through a mamlkit module, to code outside mamlkit
ATTACKS = {
    "os.system": ("mamlkit.models.target:os.system", {"command": "touch {marker}"}),
    "cli os.system": ("mamlkit.cli:os.system", {"command": "touch {marker}"}),
    "subprocess.run": (
        "mamlkit.run_files:subprocess.run",
        {"args": "touch {marker}", "shell": True},
    ),
    "builtins.exec": (
        "mamlkit.config:dataclasses.builtins.exec",
        {"source": "open({marker!r}, 'w')"},
    ),
    "os.path.join": ("mamlkit.models.target:os.path.join", {"a": "{marker}"}),
    "json.loads": ("mamlkit.cli.train:json.loads", {"s": "1"}),
    "torch's Module": ("mamlkit.models.target:nn.Linear", {"in_features": 1, "out_features": 1}),
    "package __main__": ("mamlkit.__main__:console", {}),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("command", ["eval", "adapt", "resume"])
def test_a_target_reaching_outside_mamlkit_needs_trust_code(
    capsys, tmp_path, sine_run, attack, command
):
    """Before: the module name started with 'mamlkit', so the target counted as built in;
    the command ran (e.g. the shell command) and only then exited 2."""
    marker = tmp_path / "marker"
    target, kwargs = ATTACKS[attack]
    kwargs = {k: v.format(marker=str(marker)) if isinstance(v, str) else v
              for k, v in kwargs.items()}
    run = _copy_with_model(sine_run, tmp_path / "run", {"target": target, "kwargs": kwargs})
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refused(capsys, *_commands(run, tmp_path)[command], match="--trust-code")
    assert not marker.exists()
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_the_library_entry_points_need_trust_code_too(tmp_path, sine_run):
    marker = tmp_path / "marker"
    run = _copy_with_model(
        sine_run,
        tmp_path / "run",
        {"target": "mamlkit.cli:os.system", "kwargs": {"command": f"touch {marker}"}},
    )
    with pytest.raises(UserError, match="--trust-code"):
        mamlkit.from_pretrained(run)
    assert not marker.exists()


def test_a_model_class_of_mamlkit_needs_no_trust(capsys, tmp_path, sine_run):
    run = tmp_path / "mlp"
    sets = [*TINY, "model.target=mamlkit.models.mlp:MLP", "model.kwargs={sizes: [1, 8, 1]}"]
    code, _, err = run_cli(
        capsys, "train", "sine_maml", *_sets(sets), "--out", run, "--no-progress"
    )
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 0, err


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ("{sizes: !!set {1: null}}", "model.kwargs.sizes"),
        ("{sizes: 2024-01-01}", "model.kwargs.sizes"),
        ("{sizes: !!binary aGVsbG8=}", "model.kwargs.sizes"),
        ("{1: 2}", "model.kwargs"),
    ],
)
def test_model_kwargs_are_plain_data(capsys, tmp_path, kwargs, match):
    out = tmp_path / "run"
    sets = [*TINY, "model.target=mamlkit.models.mlp:MLP", f"model.kwargs={kwargs}"]
    refused(
        capsys, "train", "sine_maml", *_sets(sets), "--out", out, match=match
    )
    assert not out.exists()


def test_a_misspelt_mamlkit_target_says_what_is_missing(capsys, tmp_path, sine_run):
    run = _copy_with_model(
        sine_run, tmp_path / "run", {"target": "mamlkit.models:MLPP", "kwargs": {}}
    )
    refused(capsys, "eval", run, "--trust-code", match="MLPP")


# a module beside the config (the current directory is searched, as `python -m` does)
MODULES = {
    "exit 0 at import": ("import sys\nsys.exit(0)\n", "sys.exit(0)"),
    "exit 3 at import": ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
    "exit text at import": ("raise SystemExit('bye')\n", "sys.exit('bye')"),
    "ValueError at import": ("raise ValueError('no GPU here')\n", "no GPU here"),
    "factory raises ValueError": (
        "def Net(**kw):\n    raise ValueError('width must be even')\n",
        "ValueError: width must be even",
    ),
    "factory raises RuntimeError": (
        "def Net(**kw):\n    raise RuntimeError('bad\\nstate')\n",
        "RuntimeError: bad state",
    ),
    "factory exits": ("import sys\ndef Net(**kw):\n    sys.exit(0)\n", "sys.exit(0)"),
}


@pytest.mark.parametrize("case", list(MODULES))
def test_a_target_that_exits_or_raises_is_one_line(capsys, tmp_path, monkeypatch, case):
    """Before: sys.exit(0) at import ended `mamlkit train` with exit 0, nothing said and no
    run; sys.exit(3) with exit 3; a factory's ValueError was a 42-line traceback."""
    source, match = MODULES[case]
    name = "user_model_" + "".join(c if c.isalnum() else "_" for c in case)
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    sets = [*TINY, f"model.target={name}:Net"]
    line = refused(
        capsys, "train", "sine_maml", *_sets(sets), "--out", out, match=match
    )
    assert "model.target" in line
    assert not out.exists()


def _bomb(levels: int) -> str:
    """Nested YAML anchors: ``levels`` lists of 10 aliases to the one before, 10**levels
    values once expanded, a few hundred bytes as written."""
    lines = ["    a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines)


def test_a_yaml_anchor_bomb_is_refused_before_it_is_used(capsys, tmp_path):
    """Before: nine nested anchors in model.kwargs took 67 s and 4.8 GB, then a MemoryError
    traceback."""
    config = tmp_path / "bomb.yaml"
    config.write_text(
        "task: {name: sine}\nmodel:\n  target: mamlkit.models.mlp:MLP\n  kwargs:\n"
        + _bomb(9)
        + "\n"
    )
    out = tmp_path / "run"
    refused(capsys, "train", str(config), "--out", out, match="alias")
    assert not out.exists()
    # the same in --set, in a run's config.yaml (eval) and a recursive alias
    bomb = "{" + _bomb(9).replace("\n", ",").replace("    ", "") + "}"
    refused(
        capsys, "train", "sine_maml", "--set", f"model.kwargs={bomb}", "--out", out,
        match="alias",
    )
    assert not out.exists()


def test_a_run_config_bomb_and_a_recursive_alias_are_refused(capsys, tmp_path, sine_run):
    run = _copy_with_model(sine_run, tmp_path / "run", {"target": "mamlkit.models.mlp:MLP"})
    text = (run / "config.yaml").read_text()
    assert text.count("  kwargs: {}\n") == 1

    def kwargs(yaml_text: str) -> None:
        (run / "config.yaml").write_text(text.replace("  kwargs: {}\n", yaml_text))

    kwargs("  kwargs:\n" + _bomb(9) + "\n")
    refused(capsys, "eval", run, match="alias")
    kwargs("  kwargs: {sizes: &b [1, *b]}\n")
    refused(capsys, "eval", run, match="recursive")
    kwargs("  kwargs: {sizes: " + "[" * 60 + "]" * 60 + "}\n")
    refused(capsys, "eval", run, match="nested deeper")
    kwargs("  kwargs: {sizes: " + "[" * 5000 + "]" * 5000 + "}\n")
    refused(capsys, "eval", run, match="nested deeper")


def test_a_config_just_below_the_limit_loads(tmp_path):
    """The limit is on the expanded size, not on aliases: 10**4 expanded values pass."""
    from mamlkit.config_data import MAX_YAML_NODES, load_yaml

    assert 10**4 < MAX_YAML_NODES < 10**9
    data = load_yaml("kwargs:\n" + _bomb(4) + "\n", "test")
    assert len(data["kwargs"]["a3"]) == 10 and data["kwargs"]["a3"][0][0][0] == [1] * 10


HUGE = {  # (command after the run directory, the flag the message names)
    "eval --steps": (["eval", "{run}", "--steps", "1000000000000"], "--steps"),
    "eval --tasks": (["eval", "{run}", "--tasks", "99999999999999999999999"], "--tasks"),
    "eval --samples": (["eval", "{run}", "--samples", "1000000000000"], "--samples"),
    "eval tasks x steps": (["eval", "{run}", "--tasks", "900000", "--steps", "900000"], "--tasks"),
    "adapt --steps": (
        ["adapt", "{run}", "--support", "{support}", "--query", "1", "--steps", "10000000000"],
        "--steps",
    ),
}


@pytest.mark.parametrize("case", list(HUGE))
def test_huge_flags_are_refused_before_anything_runs(capsys, tmp_path, sine_run, case):
    """Before: --steps 10**12 was an allocator traceback, --tasks 10**23 and --samples
    10**12 ran forever."""
    support = tmp_path / "support.csv"
    support.write_text("x,y\n0.5,0.1\n1.5,0.9\n")
    argv, flag = HUGE[case]
    argv = [a.format(run=sine_run, support=support) for a in argv]
    before = sorted(p.name for p in sine_run.iterdir())
    line = refused(capsys, *argv, match=flag)
    assert "more than" in line
    assert sorted(p.name for p in sine_run.iterdir()) == before


def test_huge_eval_values_in_a_config_are_refused_like_the_flags(capsys, tmp_path, sine_run):
    from mamlkit.config import load_config
    from mamlkit.errors import ConfigError

    out = tmp_path / "run"
    for sets, key in [
        (["eval.tasks=100000000"], "eval.tasks"),
        (["eval.steps=1000000000000"], "eval.steps"),
        (["eval.tasks=100000", "eval.steps=100000"], "eval.tasks"),
        (["train.val_tasks=100000000"], "train.val_tasks"),
    ]:
        refused(
            capsys, "train", "sine_maml", *_sets([*TINY, *sets]), "--out", out, match=key
        )
        assert not out.exists()
    with pytest.raises(ConfigError, match="environment steps"):
        load_config("rl_nav2d_maml", ["task.eval_samples=10000000", "eval.tasks=100000"])
    # a run whose config.yaml was edited to ask for 10**12 steps: eval says so at once
    run = tmp_path / "edited"
    shutil.copytree(sine_run, run)
    text = (run / "config.yaml").read_text()
    config = yaml.safe_load(text)
    config["eval"]["steps"] = 10**12
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    refused(capsys, "eval", run, match="eval.steps")


def test_other_flags_out_of_range_are_one_line(capsys, tmp_path, sine_run):
    """A unicode digit as --checkpoint was a ValueError traceback; --seeds 10**12 built a
    list of 10**12 seeds; a checkpoint file named with such a digit broke resume."""
    refused(capsys, "eval", sine_run, "--checkpoint", "²", match="--checkpoint")
    out = tmp_path / "study"
    refused(
        capsys, "reproduce", "sine-seeds", "--seeds", "1000000000000", "--out", out,
        match="--seeds",
    )
    refused(
        capsys, "reproduce", "sine-seeds", "--tasks", "10000000000", "--out", out,
        match="--tasks",
    )
    assert not out.exists()
    run = tmp_path / "run"
    shutil.copytree(sine_run, run)
    (run / "checkpoints" / "step-²³.safetensors").write_bytes(b"")
    code, out_text, err = run_cli(capsys, "eval", run, "--checkpoint", "latest")
    assert code == 0, err


# --- item 24: a message suggests only flags the command has ------------------------------

EXTERNAL_FLAGS = {"--nproc-per-node", "--force-reinstall"}  # torchrun's and pip's


def _click_command(words: list[str]):
    """The click command that ``mamlkit WORDS...`` runs, and the words left after it."""
    from mamlkit.cli import app

    command, rest = app, list(words)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def _flags(command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def check_suggested_flags(argv: list, line: str) -> None:
    """Each ``--flag`` in ``line`` exists on the command it belongs to: a quoted
    `mamlkit CMD ...` names its own command, any other flag belongs to ``argv``'s."""
    import re

    for quoted in re.findall(r"`mamlkit ([^`]*)`", line):
        command, rest = _click_command(quoted.split())
        missing = {w.split("=")[0] for w in rest if w.startswith("--")} - _flags(command)
        assert not missing, (quoted, missing)
    command, _ = _click_command([str(a) for a in argv])
    named = set(re.findall(r"--[a-z][a-z-]*", re.sub(r"`[^`]*`", "", line)))
    missing = named - _flags(command) - EXTERNAL_FLAGS
    assert not missing, (line, missing)


def test_every_quoted_mamlkit_command_in_the_sources_exists():
    """Every `mamlkit CMD --flag ...` that a message (or a docstring) quotes names a
    command that exists, with flags that it has."""
    import re

    from mamlkit.cli import app

    sources = Path(mamlkit.__file__).parent
    quoted = [
        q
        for path in sources.rglob("*.py")
        for q in re.findall(r"`mamlkit ([^`]*)`", path.read_text())
    ]
    assert any("--resume" in q for q in quoted)  # the scan sees the messages
    for text in quoted:
        check_suggested_flags(["--help"], f"`mamlkit {text}`")
        command, _ = _click_command(text.split())
        assert command is not app, text  # a command that exists


def test_the_fixes_messages_suggest_exist(capsys, tmp_path, sine_run, monkeypatch):
    """Before: `adapt` on an unfinished run suggested --checkpoint latest, which adapt did
    not have; `eval` of a CUDA run on a machine without CUDA suggested --set
    train.device=cpu, which eval does not have."""
    import torch

    support = tmp_path / "support.csv"
    support.write_text("x,y\n0.5,0.1\n1.5,0.9\n")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(sine_run, unfinished)
    (unfinished / "model.safetensors").unlink()
    adapt = ["adapt", unfinished, "--support", support, "--query", "1.0"]
    line = refused(capsys, *adapt, match="--checkpoint latest")
    check_suggested_flags(adapt, line)
    code, out, err = run_cli(capsys, *adapt, "--checkpoint", "latest")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1

    cuda = _copy_with_model(sine_run, tmp_path / "cuda", {})
    config = yaml.safe_load((cuda / "config.yaml").read_text())
    config["train"]["device"] = "cuda"
    (cuda / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cuda_adapt = ["adapt", cuda, "--support", support, "--query", "1.0"]
    for argv in (["eval", cuda], cuda_adapt, ["train", "--resume", cuda, "--no-progress"]):
        line = refused(capsys, *argv, match="train.device")
        check_suggested_flags(argv, line)
        assert "--set train.device" not in line
    for argv in (["eval", cuda, "--tasks", "2"], cuda_adapt):
        code, _, err = run_cli(capsys, *argv, "--device", "cpu")
        assert code == 0, err
    refused(capsys, "eval", cuda, "--device", "cuda", match="--device cpu")
    refused(capsys, "eval", cuda, "--device", "tpu", match="--device")


# --- item 20: under torchrun a user error is said once -----------------------------------


@pytest.mark.parametrize(
    "world,local_rank,lines", [("4", "0", 1), ("4", "1", 0), ("4", "3", 0), ("1", "1", 1)]
)
def test_under_torchrun_a_user_error_is_said_by_the_first_process_only(
    capsys, monkeypatch, tmp_path, world, local_rank, lines
):
    """Before: every process printed the line (twice on 2 processes). Refused before any
    process group is joined, so this needs no torchrun: its environment is enough. Outside
    torchrun (WORLD_SIZE 1) a stray LOCAL_RANK silences nothing."""
    from mamlkit.cli import main

    for name, value in {"WORLD_SIZE": world, "RANK": local_rank, "LOCAL_RANK": local_rank}.items():
        monkeypatch.setenv(name, value)
    code = main(["train", "sine_maml", "--set", "train.foo=1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == lines, err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("codes,expected", [({0: 2, 1: 2}, 2), ({1: 1}, 1), ({}, 0)])
def test_mamlkit_launch_ends_a_job_with_the_workers_code_and_no_report(
    capsys, monkeypatch, codes, expected
):
    """torchrun reports any failed worker with its ChildFailedError traceback and exit 1
    (45 lines after the worker's one); `python -m mamlkit.launch` (the same launcher and
    arguments) ends with the workers' own exit code and nothing more. The launcher is
    replaced here by one whose workers failed so, to stay fast."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import (
        ChildFailedError,
        ProcessFailure,
    )

    from mamlkit import launch

    def run(args):
        assert args.nproc_per_node == "2" and args.training_script == "mamlkit"
        if codes:
            failures = {
                rank: ProcessFailure(rank, 1000 + rank, code, "<N/A>")
                for rank, code in codes.items()
            }
            raise ChildFailedError("mamlkit", failures)

    monkeypatch.setattr(torchrun, "run", run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored after the test
    argv = ["--standalone", "--nproc-per-node=2", "-m", "mamlkit", "eval", "RUN"]
    assert launch.main(argv) == expected
    assert capsys.readouterr().err == ""


def test_mamlkit_launch_keeps_torchruns_report_for_a_killed_worker(monkeypatch):
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import (
        ChildFailedError,
        ProcessFailure,
    )

    from mamlkit import launch

    def run(args):
        raise ChildFailedError("mamlkit", {0: ProcessFailure(0, 1000, -9, "<N/A>")})

    monkeypatch.setattr(torchrun, "run", run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(ChildFailedError):
        launch.main(["--standalone", "--nproc-per-node=2", "-m", "mamlkit", "eval", "RUN"])
