"""The ``task:`` section of the few-shot image tasks (Omniglot, MiniImagenet, a folder of
class folders): N-way K-shot episodes, the data set's split and its images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mamlkit.settings import TaskSettings, require, require_at_least

if TYPE_CHECKING:
    from mamlkit.config import Config

__all__ = ["EpisodeSettings", "ImageFolderSettings"]


@dataclass
class EpisodeSettings(TaskSettings):
    """``task.name: omniglot`` or ``miniimagenet``: few-shot classification episodes."""

    name: str = "omniglot"
    # few-shot episodes: N-way, K-shot, Q queries per class
    ways: int = 5
    shots: int = 1
    queries: int = 1
    train_ways: int | None = None  # ProtoNets train with more ways (e.g. 60)
    train_queries: int | None = None
    data_dir: str | None = None
    split: str = "maml"  # Omniglot: maml (1200/423 random) | lake (background/evaluation)
    split_seed: int = 0
    val_classes: int = 0  # taken out of the training classes for validation
    # 0/90/180/270° as new classes (training only); default: on for Omniglot only
    rotations: bool | None = None
    image_size: int = 28
    # Omniglot: test episodes take their N characters from one alphabet
    # (Lake et al. 2015's within-alphabet one-shot protocol; train episodes stay any-alphabet)
    within_alphabet: bool = False
    channels: int | None = None  # 1 grey, 3 RGB; default: the task's (omniglot 1, others 3)
    batch_size: int = 64  # pretrained classifier: images per ordinary minibatch

    def validate(self, config: Config) -> None:
        require(self.channels in (None, 1, 3), "task.channels", "must be 1 (grey) or 3 (RGB)")
        for key in ("train_ways", "train_queries"):
            require(
                getattr(self, key) is None or config.algorithm.other_train_episodes,
                f"task.{key}",
                f"only Prototypical Networks train with other episodes than they test on; "
                f"remove it for algorithm {config.algorithm.name!r}",
            )
        require_at_least(1, "task", self, "ways", "shots", "queries", "image_size", "batch_size")
        require_at_least(1, "task", self, "train_ways", "train_queries")
        require(self.ways >= 2, "task.ways", f"must be >= 2, got {self.ways}")
        require_at_least(0, "task", self, "val_classes")

    def batch_examples(self, config: Config) -> tuple[int, int, str]:
        """Images of one batch: an episode per task, or the pretrained baseline's
        minibatch of ``batch_size`` images."""
        per_task = (self.train_ways or self.ways) * (
            self.shots + (self.train_queries or self.queries)
        )
        from mamlkit.algorithms.registry import learner_class  # it says what it trains on

        examples = learner_class(config).trains_on == "examples"  # class minibatches
        images = self.batch_size if examples else config.train.meta_batch * per_task
        channels = self.channels or 1
        keys = "train.meta_batch, task.ways/shots/queries, task.image_size"
        return images, channels * self.image_size**2, keys


@dataclass
class ImageFolderSettings(EpisodeSettings):
    """``task.name: imagefolder``: episodes from a folder of class folders."""

    name: str = "imagefolder"
    # imagefolder without train/ val/ test/ folders: class proportions of the seeded split
    split_fractions: list[float] = field(default_factory=lambda: [0.64, 0.16, 0.2])

    def validate(self, config: Config) -> None:
        super().validate(config)
        require(
            bool(self.data_dir),
            "task.data_dir",
            "task.name=imagefolder needs the folder of class folders (or --data-dir)",
        )
        fractions = self.split_fractions
        require(
            len(fractions) == 3 and min(fractions) >= 0 and fractions[0] > 0 and fractions[2] > 0,
            "task.split_fractions",
            f"needs three fractions (train, val, test), train and test > 0; got {fractions}",
        )
