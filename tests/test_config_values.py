"""Config values: one coercion rule for YAML files and --set, and ranges checked (with the
reason) before anything is created."""

from __future__ import annotations

import pytest

from mamlkit.cli import main
from mamlkit.config import load_config


@pytest.mark.parametrize("text", ["1e-3", "1.0e-3", "+1E-3", "0.001"])
def test_numbers_yaml_reads_as_strings_are_floats_in_files_and_in_set(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(f"train: {{outer_lr: {text}, grad_clip: {text}}}\n")
    from_file = load_config(str(path))
    from_set = load_config(None, [f"train.outer_lr={text}", f"train.grad_clip={text}"])
    assert from_file.train.outer_lr == from_set.train.outer_lr == 0.001
    assert from_file.train.grad_clip == from_set.train.grad_clip == 0.001


def test_a_number_like_string_stays_a_string_where_a_string_is_expected():
    config = load_config({"task": {"name": "omniglot"}}, ["task.data_dir=1e3"])
    assert config.task.data_dir == "1e3"


ABSURD = [  # (preset, --set, what the one line must name)
    ("sine_maml", "train.threads=100000", "train.threads"),
    ("sine_maml", f"train.seed={2**64 + 5}", "train.seed"),
    ("sine_maml", "train.seed=-1", "train.seed"),
    ("sine_maml", f"eval.seed={10**30}", "eval.seed"),
    ("sine_maml", f"train.iterations={10**23}", "train.iterations"),
    ("sine_maml", "train.meta_batch=100000000", "train.meta_batch"),
    ("sine_maml", "model.hidden=[100000000]", "model.hidden"),
    ("omniglot_maml_5w1s", "task.image_size=100000", "task.image_size"),
    ("omniglot_maml_5w1s", "model.filters=100000", "model.filters"),
    ("omniglot_maml_5w1s", "eval.chunk=100000000", "eval.chunk"),
]


@pytest.mark.parametrize("preset,setting,key", ABSURD, ids=[a[1].split("=")[0] for a in ABSURD])
def test_absurd_resource_requests_fail_before_anything_is_created(
    tmp_path, capsys, preset, setting, key
):
    out = tmp_path / "run"
    argv = ["train", preset, "--out", str(out), "--no-progress", "--set", "train.iterations=2"]
    argv += ["--set", setting]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mamlkit: error:") and key in err[0], err
    assert not out.exists()
