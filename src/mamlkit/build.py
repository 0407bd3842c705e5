"""Turn a validated :class:`Config` into the objects a run needs (model, learner, tasks).

Everything that can be refused (missing data, impossible episodes) is refused here, before
a run directory is written."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mamlkit.algorithms import (
    ALGORITHMS,
    MetaLearner,
    PretrainedClassifier,
)
from mamlkit.config import RL_TASKS, Config
from mamlkit.errors import ConfigError, UserError
from mamlkit.models import MLP, Conv4
from mamlkit.models.target import build_target_model, is_builtin_target
from mamlkit.tasks import ClassBatches, EpisodeTasks, SineTasks, TaskDistribution


def check_device(c: Config) -> None:
    """Refuse a CUDA config on a machine without CUDA (also for resumed and evaluated runs)."""
    if c.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'train.device': {c.train.device!r} but CUDA is not "
            "available here; use --set train.device=cpu"
        )


def metric_for(c: Config) -> str:
    if c.task.name in RL_TASKS:
        return "return"
    return "mse" if c.task.name == "sine" else "accuracy"


def check_code_trust(c: Config, source: Path, trust_code: bool) -> None:
    """Refuse to import a model target from outside mamlkit that ``source`` (a run
    directory's config) names, unless the user said they trust it: importing runs code."""
    target = c.model.target
    if target and not is_builtin_target(target) and not trust_code:
        raise UserError(
            f"{source} builds its model by importing {target!r}, which runs that code; "
            "pass --trust-code (trust_code=True) if you trust where this run came from"
        )


def image_channels(c: Config) -> int:
    """Channels of the images of an image task: 1 (grey) or 3 (RGB)."""
    if c.task.channels is not None:
        return c.task.channels
    return 1 if c.task.name == "omniglot" else 3


def build_model(c: Config, out_features: int | None = None) -> nn.Module:
    if c.model.target is not None:
        return build_target_model(c.model.target, c.model.kwargs)
    if c.model.name == "mlp":
        if c.task.name != "sine":
            raise ConfigError("config key 'model.name': image tasks need model.name=conv4")
        return MLP((1, *c.model.hidden, 1), init=c.model.init)
    if c.task.name == "sine":
        raise ConfigError("config key 'model.name': sine regression needs model.name=mlp")
    return Conv4(
        out_features=c.task.ways if out_features is None else out_features,
        in_channels=image_channels(c),
        filters=c.model.filters,
        image_size=c.task.image_size,
        pooling=c.model.pooling,
        global_pool=c.model.global_pool,
        bn_running_stats=c.model.bn_running_stats,
    )


def build_learner(c: Config, num_train_classes: int | None = None) -> MetaLearner:
    """The learner ``algorithm.name`` names (see :func:`mamlkit.algorithms.register`); an
    RL task's learner comes from :mod:`mamlkit.rl` (its algorithm names the variant)."""
    if c.task.name in RL_TASKS:
        from mamlkit.rl.build import build_rl_learner

        return build_rl_learner(c)
    cls, overrides = ALGORITHMS[c.algorithm.name]
    loss = F.mse_loss if metric_for(c) == "mse" else F.cross_entropy

    def train_classes() -> int:
        if num_train_classes is not None:
            return num_train_classes
        return build_tasks(c, "train").num_classes

    return cls.from_config(
        c, functools.partial(build_model, c), loss, train_classes, **overrides
    )


def check_config_describes(c: Config, learner: MetaLearner) -> None:
    """Refuse a config that would not rebuild ``learner`` (another algorithm, another
    network): a run directory's config.yaml must rebuild the model its weights belong to,
    or ``mamlkit eval``/``adapt`` cannot load them."""
    classes = None
    if isinstance(learner, PretrainedClassifier):
        classes = learner.model.head.out_features
    with torch.random.fork_rng(devices=[]):  # building initialises: keep the global RNG
        try:
            reference = build_learner(c, num_train_classes=classes)
        except UserError as exc:
            problem = f"it cannot build a learner ({exc})"
        else:
            ours = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
            if not isinstance(learner, type(reference)):
                problem = (
                    f"it builds a {type(reference).__name__}, the learner is a "
                    f"{type(learner).__name__}"
                )
            elif ours != theirs:
                diff = sorted(set(ours.items()) ^ set(theirs.items()))[:2]
                problem = f"its model has other parameters ({diff} ...)"
            else:
                return
    raise UserError(
        f"the config does not describe the learner being trained: {problem}; set "
        "algorithm.name and model.target='package.module:ClassName' with model.kwargs so "
        "that the run's config.yaml rebuilds this model (or train without a run directory)"
    )


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


def _class_images(c: Config, split: str) -> np.ndarray:
    t = c.task
    if t.name == "omniglot":
        images = _omniglot_split_images(
            t.data_dir, t.image_size, t.split, t.split_seed, t.val_classes
        )[split]
    elif t.name == "imagefolder":
        images = _image_folder_split_images(
            t.data_dir, t.image_size, image_channels(c), tuple(t.split_fractions), t.split_seed
        )[split]
    else:
        from mamlkit.data import find_miniimagenet_dir, load_miniimagenet

        root = find_miniimagenet_dir(t.data_dir)
        images = load_miniimagenet(root, split, image_size=t.image_size).images
    if len(images) == 0 and t.name == "imagefolder":
        raise ConfigError(
            f"config key 'task.split_fractions': the {split!r} split of {t.data_dir} has no "
            "classes; add class folders, change the fractions, or set train.val_every=0"
        )
    if len(images) == 0:
        raise ConfigError(
            f"config key 'task.val_classes': the {split!r} split is empty; "
            "set task.val_classes > 0 or train.val_every=0"
        )
    return images


def build_tasks(c: Config, split: str = "train") -> TaskDistribution:
    """The task distribution of ``split`` (train / val / test) on ``train.device``."""
    t = c.task
    if t.name in RL_TASKS:
        from mamlkit.rl.build import build_rl_tasks

        return build_rl_tasks(c, split)
    if t.name == "sine":
        if split == "train":
            return SineTasks(t.k_support, t.k_query)
        # evaluation: MSE over a grid across the whole input range
        return SineTasks(t.k_support, t.k_query, query_grid=100)
    images = torch.from_numpy(_class_images(c, split))
    rotate = t.name == "omniglot" if t.rotations is None else t.rotations
    rotations = rotate and t.name in ("omniglot", "imagefolder") and split == "train"
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
        if t.name != "omniglot":
            raise ConfigError("config key 'task.within_alphabet': only Omniglot has alphabets")
        groups = torch.from_numpy(
            _omniglot_split_alphabets(
                t.data_dir, t.image_size, t.split, t.split_seed, t.val_classes
            )[split]
        )
        largest = int(torch.bincount(groups).max())
        if ways > largest:
            raise ConfigError(
                f"config key 'task.ways': {ways}-way episodes within one alphabet need an "
                f"alphabet with {ways} characters; the {split!r} split's largest has {largest}"
            )
    return EpisodeTasks(
        images, ways, t.shots, queries, rotations=rotations, device=device, groups=groups
    )
