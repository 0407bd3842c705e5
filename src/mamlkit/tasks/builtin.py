"""mamlkit's own tasks, registered by name: sine regression, few-shot image episodes
(Omniglot, MiniImagenet, a folder of class folders) and :mod:`mamlkit.rl`'s environments.

Everything a config can get wrong about the data (an empty split, impossible episodes) is
refused here, before a run directory is written."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from mamlkit.errors import ConfigError
from mamlkit.tasks.base import TaskDistribution
from mamlkit.tasks.episodes import ClassBatches, EpisodeTasks
from mamlkit.tasks.registry import TASKS, register_task
from mamlkit.tasks.sine import SineTasks

if TYPE_CHECKING:
    from mamlkit.config import Config


@register_task("sine", metric="mse", inputs="vector")
def build_sine_tasks(c: Config, split: str) -> TaskDistribution:
    if split == "train":
        return SineTasks(c.task.k_support, c.task.k_query)
    # evaluation: MSE over a grid across the whole input range
    return SineTasks(c.task.k_support, c.task.k_query, query_grid=100)


@functools.lru_cache(maxsize=4)
def _omniglot_split_images(
    data_dir: str | None, image_size: int, scheme: str, seed: int, n_val: int
) -> dict[str, np.ndarray]:
    from mamlkit.data import load_omniglot, omniglot_splits

    data = load_omniglot(data_dir, image_size=image_size)
    splits = omniglot_splits(data, scheme=scheme, seed=seed, n_val=n_val)
    return {name: data.images[idx] for name, idx in splits.items()}


@functools.lru_cache(maxsize=4)
def _omniglot_split_alphabets(
    data_dir: str | None, image_size: int, scheme: str, seed: int, n_val: int
) -> dict[str, np.ndarray]:
    """The alphabet (an integer id) of every character of each split."""
    from mamlkit.data import load_omniglot, omniglot_splits

    data = load_omniglot(data_dir, image_size=image_size)
    names = sorted(set(data.alphabets))
    ids = np.array([names.index(a) for a in data.alphabets], dtype=np.int64)
    splits = omniglot_splits(data, scheme=scheme, seed=seed, n_val=n_val)
    return {name: ids[idx] for name, idx in splits.items()}


@functools.lru_cache(maxsize=4)
def _image_folder_split_images(
    data_dir: str, image_size: int, channels: int, fractions: tuple[float, ...], seed: int
) -> dict[str, np.ndarray]:
    from mamlkit.data.imagefolder import load_image_folder

    splits = load_image_folder(data_dir, image_size, channels, fractions, seed)
    return {name: images for name, (images, _classes) in splits.items()}


@register_task(
    "omniglot", metric="accuracy", inputs="image", channels=1, inverted=True, alphabets=True
)
def build_omniglot_tasks(c: Config, split: str) -> TaskDistribution:
    t = c.task
    key = (t.data_dir, t.image_size, t.split, t.split_seed, t.val_classes)
    images = _omniglot_split_images(*key)[split]

    def alphabets() -> np.ndarray:
        return _omniglot_split_alphabets(*key)[split]

    return episodes(c, split, images, default_rotations=True, alphabets=alphabets)


@register_task("miniimagenet", metric="accuracy", inputs="image", channels=3)
def build_miniimagenet_tasks(c: Config, split: str) -> TaskDistribution:
    from mamlkit.data import find_miniimagenet_dir, load_miniimagenet

    root = find_miniimagenet_dir(c.task.data_dir)
    images = load_miniimagenet(root, split, image_size=c.task.image_size).images
    return episodes(c, split, images, default_rotations=False, can_rotate=False)


@register_task("imagefolder", metric="accuracy", inputs="image", channels=3)
def build_image_folder_tasks(c: Config, split: str) -> TaskDistribution:
    t = c.task
    channels = TASKS[t.name].image_channels(t)  # also under a name of its own
    images = _image_folder_split_images(
        t.data_dir, t.image_size, channels, tuple(t.split_fractions), t.split_seed
    )[split]
    if len(images) == 0:
        raise ConfigError(
            f"config key 'task.split_fractions': the {split!r} split of {t.data_dir} has no "
            "classes; add class folders, change the fractions, or set train.val_every=0"
        )
    return episodes(c, split, images, default_rotations=False)


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
    if split == "train" and c.algorithm.name == "pretrained":
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


# mamlkit.rl's environments: imported when built (the half-cheetahs need MuJoCo)
for _name in ("nav2d", "cheetah_vel", "cheetah_dir"):
    register_task(
        _name,
        metric="return",
        inputs="vector",
        rl=True,
        algorithms=("maml", "pretrained"),  # MAML-TRPO, and TRPO on all tasks
        builder="mamlkit.rl.build:build_rl_tasks",
    )
