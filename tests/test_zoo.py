"""The zoo (``zoo/``): every reference run loads and rebuilds its model, its checkpoints'
SHA-256 match, it keeps within the size caps, its eval files are strict JSON, and
docs/zoo.md is what ``scripts/zoo.py table`` makes of it; ``make zoo`` continues a run and
evaluates it once finished."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.rundir.checkpoint import load_checkpoint
from mamlkit.runner import load_run, run_checkpoints, train_run

from .test_rl import TINY as RL_TINY  # the RL tests' tiny settings

ROOT = Path(__file__).parents[1]


def _zoo_module():
    spec = importlib.util.spec_from_file_location("zoo_script", ROOT / "scripts" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


zoo = _zoo_module()
RUNS = sorted(p for p in (ROOT / "zoo").glob("*") if p.is_dir()) if (ROOT / "zoo").is_dir() else []


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_a_zoo_run_loads_and_keeps_within_its_caps(run):
    assert run.name in {e.name for e in zoo.ZOO}, f"{run.name} is not in scripts/zoo.py's ZOO"
    names = {p.name for p in run.iterdir()}
    names.discard(".mamlkit.lock")  # a zoo run training here (git ignores it)
    extra = {n for n in names - zoo.KEEP if not (n.startswith("eval") and n.endswith(".json"))}
    assert not extra, f"{run.name} keeps files a zoo run must not: {sorted(extra)}"
    status = json.loads((run / "status.json").read_text())
    finished = status["status"] == "finished"
    # the latest checkpoint only (a finished run over the cap keeps its weights alone)
    assert len(run_checkpoints(run)) == 1 or (finished and not run_checkpoints(run))
    # config.yaml rebuilds the model; load_checkpoint checks every SHA-256 it reads
    if run_checkpoints(run):
        _, _, step = load_run(run, checkpoint="latest")
        assert step == status["step"] == max(run_checkpoints(run))
    if finished:
        _, _, step = load_run(run)  # model.safetensors
        assert step == status["step"]
    for record in run.glob("eval*.json"):
        data = _strict(record.read_text())
        assert "step" in data or "iteration" in data, f"{record} names no step it evaluated"
    # eval.ensemble's test predictions: readable (their SHA-256 checked), of steps trained
    for step, path in run_checkpoints(run, "ensemble").items():
        tensors, meta = load_checkpoint(path)
        assert meta["step"] == step <= status["step"] and set(tensors) == {"predictions", "targets"}
    assert zoo.check(run.parent) == [] or all(run.name not in p for p in zoo.check(run.parent))


def test_the_zoo_is_within_its_caps_and_its_table_is_current():
    assert zoo.check() == []
    assert (ROOT / "docs" / "zoo.md").read_text() == zoo.table(), (
        "docs/zoo.md is not what the zoo's files give: run `make zoo-table`"
    )


def test_the_zoo_is_not_in_the_package():
    import mamlkit

    assert not (Path(mamlkit.__file__).parent / "zoo").exists()
    assert "zoo" not in (ROOT / "pyproject.toml").read_text().split("[tool.setuptools")[1]


def test_the_table_reports_progress_and_evaluations_from_the_files(tmp_path):
    entry = zoo.Entry("rl_nav2d_oracle")
    text = zoo.table(tmp_path, [entry])
    assert "| `rl_nav2d_oracle` | not started | – | −2.29 (Finn et al. 2017, Fig. 5) |" in text
    run = tmp_path / "rl_nav2d_oracle"
    train_run(load_config("rl_nav2d_oracle", TINY), run, progress=False)
    row = [line for line in zoo.table(tmp_path, [entry]).splitlines() if "nav2d" in line][0]
    assert "| 2 / 2 | finished, not evaluated yet |" in row and "AMD" in row or "@" in row


def test_the_table_gives_each_runs_pace_and_the_time_it_has_left(tmp_path):
    entries = [zoo.Entry("omniglot_anil_5w1s"), zoo.Entry("omniglot_fomaml_5w1s")]
    run = tmp_path / "omniglot_anil_5w1s"
    run.mkdir()
    (run / "config.yaml").write_text("train: {iterations: 1000}\n")
    state = {"status": "paused", "step": 250, "train_seconds": 1000.0}
    (run / "status.json").write_text(json.dumps(state))
    text = zoo.table(tmp_path, entries)
    row = [line for line in text.splitlines() if "anil" in line][0]
    # 4 s an iteration so far, 750 iterations to go: 3000 s
    assert "| 250 / 1000 (0h50m left) |" in row and row.endswith("| 4 s/it |")
    assert "0h50m of one core in all. Unfinished runs not estimated" in text
    assert "(not started, or no pace yet): 1." in text
    state.update(status="finished", step=1000, train_seconds=4000.0)
    (run / "status.json").write_text(json.dumps(state))
    text = zoo.table(tmp_path, entries)
    assert "| 1000 / 1000 | finished, not evaluated yet |" in text  # nothing left
    assert "–" in text.split("Time left for the started runs at their pace: ")[1][:2]


def test_a_finished_classification_run_shows_its_accuracy_as_evaluated(tmp_path):
    """Evaluation files hold accuracy in percent (as `mamlkit eval` prints it): the table
    shows that number, not a hundred times it."""
    run = tmp_path / "omniglot_anil_5w1s"
    run.mkdir()
    (run / "config.yaml").write_text("train: {iterations: 10}\n")
    state = {"status": "finished", "step": 10, "train_seconds": 20.0}
    (run / "status.json").write_text(json.dumps(state))
    record = {"accuracy": 98.7667, "ci95": 0.4069, "tasks": 600, "steps": 3, "step": 10}
    (run / "eval.json").write_text(json.dumps(record))
    text = zoo.table(tmp_path, [zoo.Entry("omniglot_anil_5w1s")])
    assert "| 98.77 ± 0.41 after 3 steps (600 tasks) |" in text


def test_a_run_with_an_ensemble_shows_it_beside_the_final_weights(tmp_path):
    run = tmp_path / "omniglot_mamlpp_5w1s"
    run.mkdir()
    (run / "config.yaml").write_text("train: {iterations: 10}\n")
    state = {"status": "finished", "step": 10, "train_seconds": 20.0}
    (run / "status.json").write_text(json.dumps(state))
    members = [{"step": 10, "val_accuracy": 99.1}, {"step": 8, "val_accuracy": 99.0}]
    ensemble = {"accuracy": 99.4123, "ci95": 0.3012, "members": members, "not_kept": [2]}
    record = {"accuracy": 99.2, "ci95": 0.35, "tasks": 600, "steps": 5, "step": 10,
              "ensemble": ensemble}  # fmt: skip
    (run / "eval.json").write_text(json.dumps(record))
    text = zoo.table(tmp_path, [zoo.Entry("omniglot_mamlpp_5w1s")])
    assert (
        "| 99.20 ± 0.35 after 5 steps (600 tasks); ensemble of the 2 best validation "
        "checkpoints (steps 10, 8): 99.41 ± 0.30 (validations without predictions: 1) |"
    ) in text


TINY = [*RL_TINY, "train.iterations=2", "train.keep_checkpoints=1"]


@pytest.mark.skipif(
    not (ROOT / ".venv" / ".installed").is_file(), reason="make's venv is not built here"
)
def test_make_zoo_continues_a_run_and_evaluates_it(tmp_path, capsys, monkeypatch):
    """`make zoo ZOO_TIME=2m` on a small paused zoo run: it continues it to its end, trims
    it, evaluates it with its config's protocol and writes the table. (`-o`: the venv that
    runs this test is the one make would build; never reinstall it under a running suite.)"""
    run = tmp_path / "zoo" / "rl_nav2d_oracle"
    monkeypatch.setenv("MAMLKIT_TEST_CLOCK", "1")  # pauses it mid-way, deterministically
    config = [s for s in TINY if not s.startswith("train.iterations")]
    assert main(["train", "rl_nav2d_oracle", "--out", str(run), "--no-progress",
                 *[a for s in config for a in ("--set", s)], "--set", "train.iterations=6",
                 "--max-time", "8s"]) == 0  # fmt: skip
    monkeypatch.delenv("MAMLKIT_TEST_CLOCK")
    capsys.readouterr()
    paused = json.loads((run / "status.json").read_text())
    assert paused["status"] == "paused" and 0 < paused["step"] < 6
    table = tmp_path / "zoo.md"
    done = subprocess.run(
        ["make", "-C", str(ROOT), "-o", ".venv/.installed", "zoo", "ZOO_TIME=2m",
         f"ZOO_DIR={tmp_path / 'zoo'}", f"ZOO_TABLE={table}", "ZOO_ONLY=rl_nav2d_oracle",
         "ZOO_NICE=0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"rl_nav2d_oracle: step {paused['step']} -> 6 of 6 (finished)" in done.stdout
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    record = _strict((run / "eval.json").read_text())
    assert record["tasks"] == 3 and record["by_step"]
    assert not (run / "tensorboard").exists() and len(run_checkpoints(run)) == 1
    assert "| `rl_nav2d_oracle` | 6 / 6 | " in table.read_text()
    assert "finished, not evaluated" not in table.read_text()


def test_a_resumed_run_takes_its_presets_ensemble(tmp_path):
    """A run started before its preset asked for eval.ensemble (MAML++'s test protocol) gets
    it on its next piece (a key a resume may change); one that has it, or whose preset does
    not ask for it, gets nothing."""
    for name, config, sets in [
        ("omniglot_mamlpp_5w1s", "eval: {tasks: 600}", ["--set", "eval.ensemble=5"]),
        ("omniglot_mamlpp_5w1s", "eval: {tasks: 600, ensemble: 5}", []),
        ("omniglot_anil_5w1s", "eval: {tasks: 600}", []),
    ]:
        run = tmp_path / name
        run.mkdir(exist_ok=True)
        (run / "config.yaml").write_text(config + "\n")
        (run / "status.json").write_text(json.dumps({"status": "paused", "step": 4}))
        command = zoo.piece_command(zoo.Entry(name), tmp_path, 60)
        assert command[command.index("--resume") :] == [
            "--resume", str(run), "--no-progress", *sets, "--max-time", "60s"
        ]  # fmt: skip


def test_a_zoo_run_moves_to_the_zoos_device(tmp_path, monkeypatch):
    """A lent GPU takes a piece of a CPU run, and the next CPU zoo takes it back: a resume
    gets --device only where the run's config trains on another kind of device, a new run
    starts on the zoo's device, and a finished run is evaluated there."""
    run = tmp_path / "omniglot_anil_5w1s"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"status": "paused", "step": 4}))
    for trained, here, moves in [
        ("cpu", "cpu", False), ("cpu", "cuda", True), ("cuda:0", "cpu", True),
        ("cuda", "cuda:0", False),
    ]:  # fmt: skip
        (run / "config.yaml").write_text(f"train: {{device: '{trained}'}}\n")
        command = zoo.piece_command(zoo.Entry(run.name), tmp_path, 60, here)
        assert command[command.index("--no-progress") + 1 :] == [
            *(["--device", here] if moves else []), "--max-time", "60s"
        ]  # fmt: skip
    new = zoo.piece_command(zoo.Entry("omniglot_metasgd_5w1s"), tmp_path, 60, "cuda")
    assert new[new.index("--device") : new.index("--device") + 2] == ["--device", "cuda"]
    seen = []
    monkeypatch.setattr(zoo, "mamlkit", lambda *a: seen.append(a) or [sys.executable, "-c", ""])
    zoo._start("eval", zoo.Entry(run.name), tmp_path, 60, {}, "cuda").wait()
    assert seen == [("eval", str(run), "--device", "cuda")]
    # on a GPU, RL runs are left to the CPU zoos (their time is the environments' steps)
    fake = tmp_path / "fake.py"
    fake.write_text("import pathlib, sys\n"
                    "pathlib.Path(sys.argv[1]).with_name('seen.txt').open('a').write("
                    "' '.join(sys.argv[2:]) + '\\n')\n")  # fmt: skip
    log = tmp_path / "log"
    monkeypatch.setattr(zoo, "mamlkit", lambda *a: [sys.executable, str(fake), str(log), *a])
    rl = tmp_path / "rl_nav2d_oracle"
    shutil.copytree(run, rl)
    entries = [zoo.Entry("rl_nav2d_oracle"), zoo.Entry(run.name)]
    monkeypatch.setattr(zoo, "POLL", 0.05)
    zoo.run_zoo(60, tmp_path, jobs=2, entries=entries, device="cuda")
    seen = (tmp_path / "seen.txt").read_text().splitlines()
    assert len(seen) == 1 and seen[0].startswith(f"train --resume {run}")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for device in ("tpu", "cuda"):  # refused before anything starts (or lowers its priority)
        assert zoo.main(["run", "--time", "1m", "--device", device, "--zoo", str(tmp_path)]) == 2


def test_trim_keeps_what_resuming_and_evaluating_need(tmp_path):
    run = tmp_path / "zoo" / "omniglot_metasgd_5w1s"
    (run / "checkpoints").mkdir(parents=True)
    (run / "tensorboard").mkdir()
    for name in ("config.yaml", "env.json", "metrics.jsonl", "eval.json", "notes.png"):
        (run / name).write_text("{}")
    for step in (1000, 2000):
        (run / "checkpoints" / f"step-{step:08d}.safetensors").write_bytes(b"0" * 2**20)
    (run / "status.json").write_text(json.dumps({"status": "paused", "step": 2000}))
    zoo.trim(run)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "env.json", "eval.json", "metrics.jsonl", "status.json"
    ]  # fmt: skip
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00002000.safetensors"]
    # finished, with weights and checkpoint over the cap: the weights stay, the checkpoint goes
    (run / "status.json").write_text(json.dumps({"status": "finished", "step": 2000}))
    (run / "model.safetensors").write_bytes(b"0" * (zoo.RUN_CAP - 2**19))
    zoo.trim(run)
    assert (run / "model.safetensors").is_file() and not run_checkpoints(run)


def test_a_finished_run_is_evaluated_before_the_next_run_trains(tmp_path, monkeypatch):
    """One job at a time: the run an earlier zoo finished is evaluated first; a run that
    finishes in this zoo is evaluated next, before the following run starts training. (The
    commands are stand-ins that write what `mamlkit train`/`eval` would.)"""
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import json, sys, pathlib\n"
        "args = sys.argv[1:]\n"
        "run = pathlib.Path(args[args.index('--resume') + 1] if '--resume' in args else args[1])\n"
        "with open(run.parent / 'order.txt', 'a') as f: f.write(f'{args[0]} {run.name}\\n')\n"
        "if args[0] == 'eval':\n"
        "    step = json.loads((run / 'status.json').read_text())['step']\n"
        "    (run / 'eval.json').write_text(json.dumps({'step': step}))\n"
        "else:\n"
        "    (run / 'status.json').write_text(json.dumps({'status': 'finished', 'step': 4}))\n"
    )  # fmt: skip
    monkeypatch.setattr(zoo, "mamlkit", lambda *args: [sys.executable, str(fake), *args])
    entries = [zoo.Entry(name) for name in ("a", "b", "c")]
    for name, state in (("a", "paused"), ("b", "finished"), ("c", "paused")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("train: {iterations: 4}\n")
        (tmp_path / name / "status.json").write_text(json.dumps({"status": state, "step": 2}))
    monkeypatch.setattr(zoo, "POLL", 0.05)
    report = zoo.run_zoo(3600, tmp_path, jobs=1, entries=entries)
    order = (tmp_path / "order.txt").read_text().split("\n")[:-1]
    assert order == ["eval b", "train a", "eval a", "train c", "eval c"]
    assert [(r["run"], r["from"], r["to"], r["status"]) for r in report] == [
        ("a", 2, 4, "finished"), ("c", 2, 4, "finished")
    ]  # fmt: skip
    assert all(zoo.evaluation(tmp_path / name) for name in "abc")


def test_a_zoo_started_as_a_session_leader_still_lowers_its_sessions_share(tmp_path, monkeypatch):
    # `setsid nohup python scripts/zoo.py run …` makes the zoo a session leader, whose
    # os.setsid() fails; its session's CPU share (autogroup) must still go to the lowest,
    # or the zoo takes half the CPU from the user's own work whatever its nice value
    def leader():
        raise PermissionError("already a session leader")

    monkeypatch.delenv("ZOO_NICE", raising=False)
    monkeypatch.setattr(zoo.os, "nice", lambda increment: 0)
    monkeypatch.setattr(zoo.os, "setsid", leader)
    monkeypatch.setattr(zoo.sys, "stdin", open(tmp_path / "stdin", "w+"))  # not a terminal
    monkeypatch.setattr(zoo, "AUTOGROUP", tmp_path / "autogroup")
    zoo.lowest_priority()
    assert (tmp_path / "autogroup").read_text() == "19"
