"""Config values: one coercion rule for YAML files and --set, and ranges checked (with the
reason) before anything is created."""

from __future__ import annotations

import pytest

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
    assert load_config(None, ["task.data_dir=1e3"]).task.data_dir == "1e3"
