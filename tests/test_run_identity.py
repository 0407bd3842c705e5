"""Run identity, eval files and what ``--force`` removes (issue 23, items 2, 3, 7-11, 27,
28): a folder is a run only by mamlkit's own marker, each run's files carry its id, a
resume refuses a hand-edited config, a damaged log is named with its repair, every eval
file names the weights it scored, and nothing of the user's (or of another tool's) is
ever removed or overwritten."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from mamlkit.checkpoint import load_checkpoint, save_checkpoint
from mamlkit.cli import main
from mamlkit.eval_files import EVAL_FILE, eval_file_name
from mamlkit.progress import is_progress_line

from .test_cli_bad_input import assert_user_error, run_cli
from .test_rundir import snapshot

SETS = [
    "train.tensorboard=false",
    "train.log_every=1",
    "train.threads=1",
    "train.iterations=4",
    "train.checkpoint_every=2",
    "eval.tasks=3",
    "eval.steps=2",
]


def _train(out: Path, *extra: str) -> Path:
    argv = ["train", "sine_maml", "--out", str(out), "--no-progress"]
    for s in [*SETS, *extra]:
        argv += ["--force"] if s == "--force" else ["--set", s]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A finished 4-step sine run (checkpoints at 2 and 4), never changed: copy it."""
    return _train(tmp_path_factory.mktemp("pristine") / "run")


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """Another run of the same preset, with another seed."""
    return _train(tmp_path_factory.mktemp("other") / "run", "train.seed=7")


@pytest.fixture
def run(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "run"))


def resume(capsys, run: Path, *sets: str):
    argv = ["train", "--resume", run, "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    return run_cli(capsys, *argv)


def checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}.safetensors"


def sine_support(folder: Path) -> Path:
    path = folder / "support.csv"
    path.write_text("x,y\n0,0\n1,0.84\n2,0.91\n")
    return path


# --- item 2: adapt --out never writes inside a run ---------------------------------------


@pytest.mark.parametrize(
    "target, force",
    [
        ("{run}/config.yaml", True),
        ("{run}/model.safetensors", True),
        ("{run}/eval.json", False),  # absent: still a foreign file in the run
        ("{run}/checkpoints/preds.json", False),
        ("{other}/preds.json", False),  # any run, not only the adapted one
        ("{link}/preds.json", False),  # a link into a run
    ],
)
def test_adapt_out_is_never_inside_a_run(run, other, tmp_path, capsys, target, force):
    (tmp_path / "link").symlink_to(other, target_is_directory=True)
    out = target.format(run=run, other=other, link=tmp_path / "link")
    before, before_other = snapshot(run), snapshot(other)
    argv = ["adapt", run, "--support", sine_support(tmp_path), "--query", "0.5", "--out", out]
    line = assert_user_error(capsys, *argv, *(["--force"] if force else []), match="--out")
    assert "a folder of mamlkit's own" in line
    assert snapshot(run) == before and snapshot(other) == before_other
    # outside any run it writes
    code, _, err = run_cli(capsys, *argv[:-1], tmp_path / "preds.json")
    assert code == 0, err
    assert (tmp_path / "preds.json").is_file()


# --- item 3: a run only by mamlkit's marker; --force removes only mamlkit's files --------


def another_tools_folder(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "tensorboard").mkdir()
    (folder / "config.yaml").write_text("trainer:\n  max_epochs: 100\n")
    (folder / "checkpoints" / "epoch=99.ckpt").write_bytes(b"weights")
    (folder / "tensorboard" / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"ev")
    (folder / "notes.txt").write_text("mine")
    return folder


def test_force_refuses_another_tools_folder(tmp_path, capsys):
    folder = another_tools_folder(tmp_path / "theirs")
    before = snapshot(folder)
    sets = [x for s in SETS for x in ("--set", s)]  # short, should the refusal ever fail
    assert_user_error(
        capsys, "train", "sine_maml", "--out", folder, "--force", "--no-progress", *sets,
        match="not a mamlkit run",
    )
    assert snapshot(folder) == before


def test_resume_refuses_a_folder_mamlkit_did_not_start(tmp_path, capsys):
    """A valid mamlkit config.yaml and a status.json are not mamlkit's marker: a restart
    (which clears the folder) is refused."""
    folder = another_tools_folder(tmp_path / "theirs")
    argv = ["train", "sine_maml", "--out", tmp_path / "tmp", "--no-progress", "--set"]
    assert main([str(a) for a in [*argv, "train.iterations=0"]]) == 0
    shutil.copy(tmp_path / "tmp" / "config.yaml", folder / "config.yaml")
    (folder / "status.json").write_text('{"status": "finished"}')
    before = snapshot(folder)
    assert_user_error(capsys, "train", "--resume", folder, "--no-progress", match="env.json")
    assert snapshot(folder) == before


def test_force_keeps_the_users_files_inside_checkpoints_and_tensorboard(run, capsys):
    (run / "checkpoints" / "my-best.ckpt").write_bytes(b"mine")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host.2.0").write_bytes(b"ev")
    (run / "tensorboard" / "notes.md").write_text("mine")
    assert main(["eval", str(run), "--split", "val"]) == 0
    assert main(["eval", str(run), "--inner-lr", "0.02"]) == 0
    (run / "eval-mine.json").write_text("{}")  # not a name mamlkit gives
    _train(run, "--force", "train.iterations=2")
    assert (run / "checkpoints" / "my-best.ckpt").read_bytes() == b"mine"
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["notes.md"]
    # item 10: the old model's evaluations go with it
    assert not (run / "eval-val.json").exists() and not (run / "eval-inner-lr-0.02.json").exists()
    assert (run / "eval-mine.json").read_text() == "{}"


def test_a_run_from_before_the_marker_is_still_a_run(run, capsys):
    env = json.loads((run / "env.json").read_text())
    for key in ("run_format", "run_id", "instance"):
        del env[key]
    (run / "env.json").write_text(json.dumps(env))
    for path in [run / "model.safetensors", *(run / "checkpoints").iterdir()]:
        tensors, meta = load_checkpoint(path)
        meta.pop("run_id", None)
        meta.pop("config", None)
        save_checkpoint(path, tensors, meta)
    assert main(["eval", str(run)]) == 0  # no ids: nothing to check
    code, _, err = resume(capsys, run, "train.iterations=6")
    assert code == 0, err
    _train(run, "--force", "train.iterations=2")  # recognised by its env.json
    assert json.loads((run / "env.json").read_text())["run_format"] == 1


# --- item 8: each run's files carry its id ------------------------------------------------


def test_weights_of_another_run_are_refused(run, other, capsys):
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    line = assert_user_error(capsys, "eval", run, match="model.safetensors")
    assert "another run" in line
    assert_user_error(
        capsys, "adapt", run, "--support", sine_support(run.parent), "--query", "1",
        match="another run",
    )
    shutil.copy(other / "checkpoints" / checkpoint(other, 4).name, checkpoint(run, 4))
    assert_user_error(capsys, "eval", run, "--checkpoint", "latest", match="step-00000004")
    before = snapshot(run)
    code, _, err = resume(capsys, run, "train.iterations=6")
    assert code == 2 and "another run" in err and "step-00000004" in err, err
    assert snapshot(run) == before
    ids = {json.loads((r / "env.json").read_text())["run_id"] for r in (run, other)}
    assert len(ids) == 2  # another seed: another config, another run id


def test_run_files_carry_the_run_id(run):
    ours = json.loads((run / "env.json").read_text())["run_id"]
    for path in [run / "model.safetensors", *(run / "checkpoints").iterdir()]:
        assert load_checkpoint(path)[1]["run_id"] == ours


# --- item 7: the config trained with is in every checkpoint -------------------------------


def test_resume_refuses_a_hand_edited_config(run, capsys):
    text = (run / "config.yaml").read_text()
    config = yaml.safe_load(text)
    trained = config["algorithm"]["inner_lr"]
    config["algorithm"]["inner_lr"] = trained * 500
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = snapshot(run)
    code, _, err = resume(capsys, run, "train.iterations=6")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "algorithm.inner_lr" in err and repr(trained) in err
    assert snapshot(run) == before
    # what a resume may change may also be edited by hand
    (run / "config.yaml").write_text(text.replace("iterations: 4\n", "iterations: 6\n"))
    code, _, err = resume(capsys, run)
    assert code == 0, err
    assert json.loads((run / "status.json").read_text())["step"] == 6


# --- item 9: a damaged metrics.jsonl ------------------------------------------------------


def test_a_damaged_middle_line_is_named_with_its_repair(run, capsys):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = '{"step": 2, "lo'
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(run)
    code, _, err = resume(capsys, run, "train.iterations=6")
    assert code == 2 and "line 2" in err and f"mamlkit runs --repair {run}" in err, err
    assert snapshot(run) == before
    code, out, err = run_cli(capsys, "runs", "--repair", run)
    assert code == 0 and "line 2" in out, err
    assert (run / "metrics.jsonl.damaged").read_text() == '{"step": 2, "lo\n'
    code, _, err = resume(capsys, run, "train.iterations=6")
    assert code == 0, err
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 3, 4, 5, 6]


def test_a_torn_line_before_the_checkpoint_is_an_error(run, capsys):
    text = (run / "metrics.jsonl").read_text()
    cut = text.index('{"step": 3')
    (run / "metrics.jsonl").write_text(text[: cut + 15])  # torn inside step 3's record
    before = snapshot(run)
    code, _, err = resume(capsys, run, "train.iterations=6")
    assert code == 2 and "line 3" in err and "--repair" in err and "step 4" in err, err
    assert snapshot(run) == before


def test_a_torn_last_line_after_the_checkpoint_is_dropped_with_a_notice(run, capsys):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.')  # a crash mid-append after the step-4 checkpoint
    code, _, err = resume(capsys, run, "train.iterations=6")
    assert code == 0, err
    notice = [line for line in err.splitlines() if "torn" in line]
    assert len(notice) == 1 and "line 5" in notice[0]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# --- items 10, 11: eval files -------------------------------------------------------------


def test_eval_records_name_their_weights_and_runs_shows_only_current_ones(run, capsys):
    code, out, err = run_cli(capsys, "eval", run, "--json")
    assert code == 0, err
    record = json.loads((run / "eval.json").read_text())
    env = json.loads((run / "env.json").read_text())
    assert record == json.loads(out)
    assert record["step"] == 4 and record["weights"] == "model.safetensors"
    assert record["run_id"] == env["run_id"] and len(record["weights_sha256"]) == 64
    code, out, _ = run_cli(capsys, "runs", run.parent)
    assert "eval mse" in out
    code, _, err = resume(capsys, run, "train.iterations=6")  # new final weights
    assert code == 0, err
    code, out, _ = run_cli(capsys, "runs", run.parent)
    assert "step 6" in out and "eval" not in out.split("step 6")[1]


def test_an_eval_with_other_settings_keeps_the_protocols_file(run, capsys):
    assert main(["eval", str(run)]) == 0
    protocol = (run / "eval.json").read_bytes()
    capsys.readouterr()
    code, out, err = run_cli(capsys, "eval", run, "--tasks", "2", "--steps", "1", "--json")
    assert code == 0, err
    assert (run / "eval.json").read_bytes() == protocol
    assert json.loads((run / "eval-tasks-2-steps-1.json").read_text()) == json.loads(out)
    code, _, err = run_cli(capsys, "eval", run, "--tasks", "3", "--checkpoint", "2")  # eval.tasks
    assert code == 0, err
    assert (run / "eval-step-00000002.json").is_file()


@pytest.mark.parametrize("change", ["weights", "started anew"])
def test_an_eval_writes_nothing_when_the_run_changed_meanwhile(run, capsys, monkeypatch, change):
    from mamlkit import runner

    evaluate = runner.evaluate

    def and_meanwhile(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        if change == "weights":  # e.g. a resume finished while the eval ran
            tensors, meta = load_checkpoint(run / "model.safetensors")
            tensors = {k: v + 1 for k, v in tensors.items()}
            save_checkpoint(run / "model.safetensors", tensors, meta)
        else:  # --force started the run again (same config: same id, new instance)
            env = json.loads((run / "env.json").read_text())
            (run / "env.json").write_text(json.dumps({**env, "instance": "new"}))
        return result

    monkeypatch.setattr(runner, "evaluate", and_meanwhile)
    line = assert_user_error(capsys, "eval", run, match="was not written")
    assert str(run) in line
    assert not list(run.glob("eval*.json")) and not list(run.glob(".*.tmp"))


def test_eval_file_names_are_the_ones_force_removes():
    names = [
        eval_file_name(),
        eval_file_name(step=20, split="val", tasks=10),
        eval_file_name(inner_lr=[0.1, 1e-05], split="val", alphabet="any"),
        eval_file_name(samples=350, steps=0, alphabet="within", step=123456789),
    ]
    assert names[2] == "eval-inner-lr-0.1-1e-05-val-any-alphabet.json"
    assert all(EVAL_FILE.fullmatch(n) for n in names)
    assert not any(EVAL_FILE.fullmatch(n) for n in ("eval-mine.json", "evaluation.json"))


# --- item 27: temporaries of a killed eval ------------------------------------------------


def test_resume_and_force_remove_a_killed_evals_temporaries(run, capsys):
    orphans = [run / ".eval.json.k2j3.tmp", run / ".eval-val.json.x.tmp"]
    orphans.append(run / ".learning_curves.png.q.tmp")
    for path in orphans:
        path.write_bytes(b"half")
    live = run / ".eval-tasks-9.json.live.tmp"  # an eval still writing: it holds the file
    live.write_bytes(b"half")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = resume(capsys, run, "train.iterations=5")
        assert code == 0, err
        assert not any(p.exists() for p in orphans) and live.exists()
        for path in orphans:
            path.write_bytes(b"half")
        _train(run, "--force", "train.iterations=2")
        assert not any(p.exists() for p in orphans) and live.exists()
    finally:
        os.close(fd)
    _train(run, "--force", "train.iterations=2")
    assert not live.exists()  # its writer is gone


# --- item 28: a run whose checkpoints/ was deleted ----------------------------------------


def test_resume_without_checkpoints_restarts_saying_so_and_keeps_the_old_log(run, capsys):
    old = (run / "metrics.jsonl").read_bytes()
    old_model = (run / "model.safetensors").read_bytes()
    shutil.rmtree(run / "checkpoints")
    code, out, err = resume(capsys, run)
    assert code == 0 and json.loads(out)["restarted"] is True
    lines = [line for line in err.strip().splitlines() if not is_progress_line(line)]
    assert len(lines) == 1 and "step 0" in lines[0] and "metrics.before-restart-1.jsonl" in lines[0]
    assert (run / "metrics.before-restart-1.jsonl").read_bytes() == old
    assert (run / "model.before-restart-1.safetensors").read_bytes() == old_model
    assert (run / "metrics.jsonl").read_bytes() == old  # the same seeds: the same run again
    shutil.rmtree(run / "checkpoints")
    assert resume(capsys, run)[0] == 0
    assert (run / "metrics.before-restart-2.jsonl").is_file()
    _train(run, "--force")  # --force replaces all of it
    assert not list(run.glob("*.before-restart-*"))


# --- the same class elsewhere -------------------------------------------------------------


def test_runs_lists_only_mamlkit_runs(run, tmp_path, capsys):
    theirs = another_tools_folder(tmp_path / "theirs")
    (theirs / "status.json").write_text('{"status": "running", "step": 3}')
    code, out, _ = run_cli(capsys, "runs", tmp_path)
    assert code == 0 and str(run) in out and str(theirs) not in out


def test_plot_never_writes_into_another_tools_folder(tmp_path, capsys):
    theirs = another_tools_folder(tmp_path / "theirs")
    (theirs / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (theirs / "learning_curves.png").write_bytes(b"their figure")
    before = snapshot(theirs)
    assert_user_error(capsys, "plot", theirs, match="not a mamlkit run")
    assert snapshot(theirs) == before


def test_force_refuses_a_folder_with_another_tools_report(tmp_path, capsys):
    folder = tmp_path / "analysis"
    folder.mkdir()
    for name in ("results.json", "report.md"):
        (folder / name).write_text("mine")
    before = snapshot(folder)
    sets = [x for s in SETS for x in ("--set", s)]  # short, should the refusal ever fail
    assert_user_error(
        capsys, "train", "sine_maml", "--out", folder, "--force", "--no-progress", *sets,
        match="not a mamlkit run",
    )
    assert snapshot(folder) == before
