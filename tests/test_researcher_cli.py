"""What a researcher sees at the command line (issue 26, items 1, 2, 6 and 7): progress on
long work, eval's summary, `presets show`, `train --dry-run`, `train --seed/--device`, the
`runs` table and the presets list."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from mamlkit import progress
from mamlkit.cli import main
from mamlkit.cli_info import eval_summary, preset_summary
from mamlkit.config import load_config
from mamlkit.progress import is_progress_line

from .imagefolders import write_image_folder
from .test_cli_bad_input import assert_user_error, run_cli

TINY = ["--set", "train.iterations=4", "--set", "train.log_every=2", "--set", "eval.tasks=6"]
TINY += ["--set", "train.tensorboard=false", "--set", "train.checkpoint_every=4"]


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory):
    """A tiny sine run trained once for the module (stdout/stderr are not checked here)."""
    run = tmp_path_factory.mktemp("researcher") / "sine"
    assert main(["train", "sine_maml", "--out", str(run), "--no-progress", *TINY]) == 0
    return run


# --- item 1: progress without a terminal ------------------------------------------------


def test_no_progress_training_prints_a_log_line_every_log_every_steps(tmp_path, capsys):
    """Before: `--no-progress` printed nothing at all while training."""
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "sine_maml", "--out", run, "--no-progress", *TINY)
    assert code == 0, err
    lines = [line for line in err.splitlines() if is_progress_line(line)]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"]  # steps 2 and 4 of 4
    assert "mse" in lines[0] and "ETA" in lines[0]  # metric and time left
    assert json.loads(out)["step"] == 4  # stdout stays the summary


def test_no_progress_eval_prints_log_lines(sine_run, capsys, monkeypatch):
    """Before: `eval` printed nothing until its result (and had no --no-progress)."""
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)  # a line at every update
    code, _, err = run_cli(capsys, "eval", sine_run, "--no-progress", "--tasks", "3")
    assert code == 0, err
    lines = [line for line in err.splitlines() if is_progress_line(line)]
    assert lines and lines[0].startswith(f"[eval {sine_run.name}] step 1/11")
    assert lines[-1].split()[3] == "11/11"  # the last line: all 11 steps (0..10) done


def test_progress_lines_are_silent_from_python_unless_logging_is_set_up(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="mamlkit.progress"):
        with progress.Progress(2, "work") as bar:
            progress.LOGGER.info(progress.log_line("work", 1, 2, 3.0, mse=0.5))
            bar.update(2)
    assert caplog.records[0].getMessage().startswith("[work] step 1/2 (50%) mse 0.5")
    assert capsys.readouterr().err == ""  # no handler of ours outside the command


def test_progress_lines_are_told_from_other_output():
    """Tools (and the one-error-line rule) tell progress lines from other output."""
    assert is_progress_line("[sine] step 2/4 (50%) loss 1 | 0s elapsed | ETA 0s")
    assert not is_progress_line("mamlkit: error: --out x: not writable")


# --- item 2: eval's summary ---------------------------------------------------------------


def test_eval_prints_a_summary_and_json_only_with_the_flag(sine_run, capsys):
    """Before: raw JSON only."""
    code, out, err = run_cli(capsys, "eval", sine_run, "--tasks", "3")
    assert code == 0, err
    record = json.loads((sine_run / "eval-tasks-3.json").read_text())
    lines = out.splitlines()
    assert lines[0].startswith(f"{sine_run}: mse, 3 test tasks")
    rows = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(11))  # every step 0..10
    assert rows[-1][1] == f"{record['mse']:.4g}" and rows[-1][2] == "±"
    assert "eval-tasks-3.json" in lines[-1]
    code, out, err = run_cli(capsys, "eval", sine_run, "--tasks", "3", "--json")
    assert json.loads(out) == record


def test_the_summary_puts_the_papers_number_beside_a_presets_result(tmp_path):
    config = load_config("omniglot_maml_5w1s")
    by_step = [{"steps": s, "accuracy": 90.0 + s, "ci95": 0.5} for s in range(4)]
    record = {"accuracy": 93.0, "ci95": 0.5, "tasks": 600, "split": "test", "ways": 5,
              "shots": 1, "step": 60000}  # fmt: skip
    lines = eval_summary(record, by_step, config, tmp_path / "eval.json")
    last = [line for line in lines if line.strip().startswith("3 ")][0]
    assert "93 ± 0.5" in last and "98.7 ± 0.4" in last  # the paper's beside the final step
    assert any("Finn et al. 2017" in line for line in lines)
    rl = load_config("rl_nav2d_maml")
    steps = [{"steps": s, "return": -10.0, "ci95": 1.0} for s in range(4)]
    lines = eval_summary({"tasks": 40, "split": "test"}, steps, rl, tmp_path / "eval.json")
    assert "−11.68" in [line for line in lines if line.strip().startswith("1 ")][0]
    sine = eval_summary({"tasks": 3, "split": "test"}, steps[:1], load_config("sine_maml"),
                        tmp_path / "eval.json")  # fmt: skip
    assert not any("paper" in line for line in sine)  # no published number: no column


# --- item 6: presets show, train --dry-run -----------------------------------------------


def test_presets_show_prints_only_the_keys_the_components_read(capsys):
    code, out, err = run_cli(capsys, "presets", "show", "sine_maml", "--set", "train.seed=7")
    assert code == 0, err
    keys = {line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ")}
    assert {"k_support", "hidden", "inner_lr", "iterations"} <= keys
    assert not keys & {"ways", "filters", "horizon", "meta_step_size", "msl_epochs",
                       "dropblock"}  # fmt: skip
    seed = [line for line in out.splitlines() if line.strip().startswith("seed:")][0]
    assert "7" in seed and "#" in seed  # the --set value, with its meaning
    code, out, _ = run_cli(capsys, "presets", "show", "omniglot_reptile_5w1s")
    keys = {line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ")}
    assert {"ways", "filters", "meta_step_size"} <= keys and "k_support" not in keys
    assert not keys & {"dropblock", "dropblock_size"}  # resnet12's
    code, out, _ = run_cli(capsys, "presets", "show", "omniglot_protonet_resnet12_20w1s")
    keys = {line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ")}
    assert {"dropblock", "dropblock_size"} <= keys and not keys & {"filters", "pooling"}
    assert_user_error(capsys, "presets", "show", "no_such_preset", match="no_such_preset")


def test_dry_run_says_the_split_sizes_and_a_time_and_writes_nothing(tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "data", classes=16, per_class=3)
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({
        "task": {"name": "imagefolder", "data_dir": str(root), "ways": 3, "shots": 1,
                 "queries": 1, "image_size": 12, "channels": 1},
        "model": {"name": "conv4", "filters": 4},
        "train": {"iterations": 50, "meta_batch": 2},
        "eval": {"tasks": 4, "steps": 1},
    }))  # fmt: skip
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", config, "--out", run, "--dry-run")
    assert code == 0, err
    sizes = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
             if line.startswith("  ") and "classes," in line}  # fmt: skip
    assert set(sizes) == {"train", "test"} and sum(sizes.values()) <= 16 and sizes["test"] > 0
    assert any(line.startswith("timing:") and "50 iterations" in line for line in out.splitlines())
    assert "ways:" in out and not run.exists()
    assert not (tmp_path / "runs").exists()


def test_dry_run_refuses_what_train_refuses(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "mine.txt").write_text("x")
    assert_user_error(capsys, "train", "sine_maml", "--out", run, "--dry-run", match="--force")
    assert_user_error(capsys, "train", "--resume", run, "--dry-run", match="--dry-run")


# --- item 7: --seed/--device, the runs table, the presets list -----------------------------


def test_train_takes_seed_and_device(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "sine_maml", "--out", run, "--no-progress", *TINY, "--seed", "5"]
    code, _, err = run_cli(capsys, *argv, "--device", "cpu")
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["seed"] == 5 and saved["device"] == "cpu"
    assert_user_error(capsys, "train", "sine_maml", "--out", tmp_path / "x", "--device", "tpu",
                      match="--device")  # fmt: skip
    assert_user_error(capsys, "train", "--resume", run, "--seed", "6", match="--seed")


def test_runs_has_a_header_and_shows_mse_from_results_json(sine_run, tmp_path, capsys):
    assert run_cli(capsys, "eval", sine_run, "--json")[0] == 0
    code, out, err = run_cli(capsys, "runs", sine_run.parent)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "STATUS", "STEP", "RESULT"]
    assert "eval mse" in lines[1]
    # a `reproduce sine` folder: its models have no eval.json; results.json has their MSE
    folder = tmp_path / "sine"
    (folder / "pretrained").mkdir(parents=True)
    for name in ("env.json", "status.json", "config.yaml"):
        (folder / "pretrained" / name).write_bytes((sine_run / name).read_bytes())
    rows = [{"method": "pretrained", "k_shot": 5, "steps": s, "mse": 2.5 - s / 10,
             "ci95": 0.1} for s in (0, 10)]  # fmt: skip
    (folder / "results.json").write_text(json.dumps(rows))
    code, out, err = run_cli(capsys, "runs", folder)
    assert code == 0, err
    assert "results.json mse 1.5 ± 0.1 (K=5, 10 steps)" in out.splitlines()[1]


def test_presets_list_shows_whole_first_sentences_wrapped(capsys):
    """Before: the first comment line, cut mid-sentence ("... §5.3 and")."""
    code, out, err = run_cli(capsys, "presets")
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines)
    nav = [i for i, line in enumerate(lines) if line.startswith("rl_nav2d_maml ")][0]
    text = " ".join(line.strip() for line in lines[nav:nav + 4]).split("rl_nav2d_oracle")[0]
    assert not text.rstrip().endswith(" and") and "§5.3 and appendix A.2" in text
    assert preset_summary("# One sentence. Another.\ntask: {}\n") == "One sentence."
    assert preset_summary("# MAML (Finn et al. 2017, §5.1).\n# more\n").endswith("§5.1).")


def test_runs_columns_stay_aligned_with_the_longest_status():
    """Before: `interrupted` (11 letters) pushed its row's STEP and RESULT out of line."""
    from mamlkit.cli_info import run_table

    rows = [{"run": f"runs/{s}", "status": s, "step": 7, "best": "-"}
            for s in ("finished", "interrupted", "running")]  # fmt: skip
    lines = run_table(rows)
    assert len({line.index("STEP" if i == 0 else "step ") for i, line in enumerate(lines)}) == 1
