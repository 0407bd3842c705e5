"""mamlkit's own tasks, registered by name: sine regression, few-shot image episodes
(Omniglot, MiniImagenet, a folder of class folders) and :mod:`mamlkit.rl`'s environments.

Everything a config can get wrong about the data (an empty split, impossible episodes) is
refused here, before a run directory is written."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from mamlkit.errors import ConfigError
from mamlkit.tasks.base import TaskDistribution
from mamlkit.tasks.datasets import load_split, reads_dataset
from mamlkit.tasks.episode_settings import EpisodeSettings, ImageFolderSettings
from mamlkit.tasks.episodes import ClassBatches, EpisodeTasks
from mamlkit.tasks.registry import TASKS, register_task
from mamlkit.tasks.sine import SineSettings, SineTasks

if TYPE_CHECKING:
    from mamlkit.config import Config


@register_task("sine", metric="mse", inputs="vector", settings=SineSettings)
def build_sine_tasks(c: Config, split: str) -> TaskDistribution:
    if split == "train":
        return SineTasks(c.task.k_support, c.task.k_query)
    # evaluation: MSE over a grid across the whole input range
    return SineTasks(c.task.k_support, c.task.k_query, query_grid=100)


def _omniglot_split(data_dir: str | None, image_size: int, scheme: str, seed: int, n_val: int):
    from mamlkit.data import find_omniglot_dir
    from mamlkit.tasks.datasets import _omniglot_splits, _signature

    location = find_omniglot_dir(data_dir).resolve()
    return _omniglot_splits(str(location), _signature(location), image_size, scheme, seed, n_val)


def _omniglot_split_images(
    data_dir: str | None, image_size: int, scheme: str, seed: int, n_val: int
) -> dict[str, np.ndarray]:
    """The images of every Omniglot split."""
    splits = _omniglot_split(data_dir, image_size, scheme, seed, n_val)
    return {name: images for name, (images, *_rest) in splits.items()}


def _omniglot_split_alphabets(
    data_dir: str | None, image_size: int, scheme: str, seed: int, n_val: int
) -> dict[str, np.ndarray]:
    """The alphabet (an integer id) of every character of each split."""
    splits = _omniglot_split(data_dir, image_size, scheme, seed, n_val)
    return {name: ids for name, (_images, _names, ids, _digest) in splits.items()}


@register_task(
    "omniglot",
    metric="accuracy",
    inputs="image",
    channels=1,
    inverted=True,
    alphabets=True,
    settings=EpisodeSettings,
)
@reads_dataset("omniglot")
def build_omniglot_tasks(c: Config, split: str) -> TaskDistribution:
    data = load_split(c, split)
    return episodes(c, split, data.images, default_rotations=True, alphabets=data.alphabets)


@register_task(
    "miniimagenet", metric="accuracy", inputs="image", channels=3, settings=EpisodeSettings
)
@reads_dataset("miniimagenet")
def build_miniimagenet_tasks(c: Config, split: str) -> TaskDistribution:
    return _validated_episodes(c, split, default_rotations=False, can_rotate=False)


@register_task(
    "imagefolder", metric="accuracy", inputs="image", channels=3, settings=ImageFolderSettings
)
@reads_dataset("imagefolder")
def build_image_folder_tasks(c: Config, split: str) -> TaskDistribution:
    return _validated_episodes(c, split, default_rotations=False)


def _validated_episodes(
    c: Config, split: str, *, default_rotations: bool, can_rotate: bool = True
) -> TaskDistribution:
    """:func:`episodes` of a data set whose reader may cut every class to the smallest (a
    warning): the cut is said once the episodes are known to fit, else it is part of the
    one-line error that they do not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_split(c, split)
    notes = [" ".join(str(w.message).split()) for w in caught]
    if len(data.images) == 0:
        raise ConfigError(
            f"config key 'task.split_fractions': the {split!r} split of {data.location} has "
            "no classes; add class folders, change the fractions, or set train.val_every=0"
        )
    try:
        tasks = episodes(
            c, split, data.images, default_rotations=default_rotations, can_rotate=can_rotate
        )
    except ConfigError as exc:
        if notes:
            raise ConfigError(f"{exc}; {'; '.join(notes)}") from None
        raise
    for w in caught:
        warnings.warn(w.message, stacklevel=3)
    return tasks


def _trains_on_examples(c: Config) -> bool:
    """Whether the learner ``c`` builds trains on ordinary class minibatches (the
    pretrained classifier) instead of episodes: the learner class says."""
    from mamlkit.algorithms.registry import learner_class  # the layer above: asked, not known

    return learner_class(c).trains_on == "examples"


def episodes(
    c: Config,
    split: str,
    class_images: np.ndarray,
    *,
    default_rotations: bool,
    can_rotate: bool = True,
    alphabets: Callable[[], np.ndarray] | None = None,
) -> TaskDistribution:
    """N-way K-shot episodes of ``split`` from ``class_images`` ``[classes, images, ...]``
    (in training, the pretrained baseline's ordinary minibatches). ``default_rotations`` is
    the task's ``task.rotations`` when unset (training only; none where not ``can_rotate``);
    ``alphabets`` gives each class's alphabet id, for ``task.within_alphabet``."""
    t = c.task
    if len(class_images) == 0:
        raise ConfigError(
            f"config key 'task.val_classes': the {split!r} split is empty; "
            "set task.val_classes > 0 or train.val_every=0"
        )
    images = torch.from_numpy(class_images)
    rotate = default_rotations if t.rotations is None else t.rotations
    rotations = rotate and can_rotate and split == "train"
    device = c.train.device
    if split == "train" and _trains_on_examples(c):
        return ClassBatches(images, t.batch_size, rotations=rotations, device=device)
    ways = (t.train_ways or t.ways) if split == "train" else t.ways
    queries = (t.train_queries or t.queries) if split == "train" else t.queries
    classes = len(images) * (4 if rotations else 1)
    key = "task.train_ways" if split == "train" and t.train_ways else "task.ways"
    if ways > classes:
        raise ConfigError(
            f"config key '{key}': {ways}-way episodes need {ways} classes but the "
            f"{split!r} split has {classes}"
        )
    if t.shots + queries > images.shape[1]:
        raise ConfigError(
            f"config key 'task.shots': shots + queries = {t.shots + queries} "
            f"exceeds the {images.shape[1]} images per class"
        )
    groups = None
    if t.within_alphabet and split == "test":
        if alphabets is None:
            having = ", ".join(name for name, spec in TASKS.items() if spec.alphabets)
            raise ConfigError(
                f"config key 'task.within_alphabet': task {t.name!r} has no alphabets "
                f"(tasks with alphabets: {having})"
            )
        groups = torch.from_numpy(alphabets())
        largest = int(torch.bincount(groups).max())
        if ways > largest:
            raise ConfigError(
                f"config key 'task.ways': {ways}-way episodes within one alphabet need an "
                f"alphabet with {ways} characters; the {split!r} split's largest has {largest}"
            )
    return EpisodeTasks(
        images, ways, t.shots, queries, rotations=rotations, device=device, groups=groups
    )


# mamlkit.rl's environments, each with its own settings (which build its environment) and
# builders named by import path: imported when built (the half-cheetahs need MuJoCo). Their
# learners are MAML-TRPO and TRPO on all tasks, once named maml and pretrained.
for _name, _settings, _plots in [
    ("nav2d", "Nav2DSettings", "nav2d_run_plots"),  # the returns, and trajectories to goals
    ("cheetah_vel", "CheetahSettings", "rl_run_plots"),
    ("cheetah_dir", "CheetahSettings", "rl_run_plots"),
]:
    register_task(
        _name,
        metric="return",
        inputs="vector",
        batches="trajectories",
        algorithms=("maml_trpo", "trpo"),
        builder=f"mamlkit.rl.build:build_{_name}_tasks",
        plots=f"mamlkit.rl.plots:{_plots}",
        settings=f"mamlkit.rl.settings:{_settings}",
        algorithm_aliases={"maml": "maml_trpo", "pretrained": "trpo"},
    )
