"""Lake et al.'s within-alphabet one-shot protocol: every test episode's N characters come
from one alphabet."""

from __future__ import annotations

import json

import pytest
import torch

from mamlkit.build import build_tasks
from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.tasks import EpisodeTasks
from mamlkit.tasks.builtin import _omniglot_split_alphabets

from .conftest import data_root


def test_episodes_within_a_group():
    images = torch.arange(12 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8)
    images = images.view(12, 3, 4, 4)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 5, 5])  # groups 2 and 5 too small
    tasks = EpisodeTasks(images, ways=3, shots=1, queries=1, groups=groups)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        classes = tasks.sample(16, gen).info["classes"]
        for episode in classes:
            assert len(set(episode.tolist())) == 3
            (group,) = set(groups[episode].tolist())
            seen.add(group)
    assert seen == {0, 1}  # both eligible groups, never the small ones
    with pytest.raises(ValueError, match="no group has the 6 classes"):
        EpisodeTasks(images, ways=6, shots=1, queries=1, groups=groups)


def test_lake_presets_test_within_one_evaluation_alphabet():
    data = data_root()
    config = load_config("omniglot_lake_protonet_20w1s", [f"task.data_dir={data}/omniglot"])
    alphabets = torch.from_numpy(
        _omniglot_split_alphabets(f"{data}/omniglot", 28, "lake", 0, 100)["test"]
    )
    test = build_tasks(config, "test")
    classes = test.sample(50, torch.Generator().manual_seed(1)).info["classes"]
    assert all(len(set(alphabets[c].tolist())) == 1 for c in classes)
    assert len({alphabets[c[0]].item() for c in classes}) > 5  # many alphabets over 50 tasks
    # validation and training episodes stay any-alphabet
    config.task.within_alphabet = False
    free = build_tasks(config, "test").sample(50, torch.Generator().manual_seed(1))
    assert any(len(set(alphabets[c].tolist())) > 1 for c in free.info["classes"])


def test_eval_reports_both_protocols(tmp_path, capsys):
    data = data_root()
    run = tmp_path / "run"
    sets = [
        "train.iterations=2",
        "task.train_ways=20",
        "model.filters=4",
        "train.val_every=0",
        "train.tensorboard=false",
        "eval.tasks=3",
    ]
    args = [
        "train",
        "omniglot_lake_protonet_20w1s",
        "--out",
        str(run),
        "--no-progress",
        "--data-dir",
        f"{data}/omniglot",
    ]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    assert main(["eval", str(run)]) == 0
    assert main(["eval", str(run), "--any-alphabet"]) == 0
    within = json.loads((run / "eval.json").read_text())
    anywhere = json.loads((run / "eval-any-alphabet.json").read_text())
    assert within["within_alphabet"] is True and "within_alphabet" not in anywhere
    assert main(["eval", str(run), "--within-alphabet"]) == 0  # the config's own: eval.json
    assert not (run / "eval-within-alphabet.json").exists()
    capsys.readouterr()
