"""N-way K-shot episodes drawn on the device from a cached image array (no DataLoader)."""

from __future__ import annotations

import torch
from torch import Tensor

from mamlkit.tasks.base import ExampleBatch, TaskBatch


class EpisodeTasks:
    """Few-shot classification episodes over a class-indexed image tensor.

    Args:
        images: uint8 ``[C, M, H, W]`` (grey) or ``[C, M, H, W, 3]`` (RGB): M images of
            each of C classes; moved to ``device`` once.
        ways: N, the classes per episode.
        shots: K, the support images per class.
        queries: Q, the query images per class.
        rotations: also use every class rotated by 90°, 180° and 270° as a new class (4·C
            classes; Omniglot meta-training).
        groups: a group id per class ``[C]`` (an Omniglot alphabet); with it every episode
            takes its N classes from one group, chosen uniformly among the groups that have
            at least N classes (Lake et al.'s within-alphabet one-shot test).

    ``sample(T, generator)`` returns support ``[T, N·K, ch, H, W]`` and query
    ``[T, N·Q, ch, H, W]`` float images in [0, 1], class-major, with labels 0..N−1. The N
    classes are distinct within an episode and come in random order, so which class gets
    which label is random per episode.
    """

    def __init__(
        self,
        images: Tensor,
        ways: int,
        shots: int,
        queries: int,
        rotations: bool = False,
        device: str | torch.device = "cpu",
        groups: Tensor | None = None,
    ):
        if images.dim() == 5:  # [C, M, H, W, 3] -> [C, M, 3, H, W]
            images = images.permute(0, 1, 4, 2, 3)
        elif images.dim() == 4:
            images = images.unsqueeze(2)
        else:
            raise ValueError(
                f"images must be [C, M, H, W] or [C, M, H, W, 3], got {list(images.shape)}"
            )
        self.images = images.to(device).contiguous()
        self.ways, self.shots, self.queries, self.rotations = ways, shots, queries, rotations
        self.num_classes = images.shape[0] * (4 if rotations else 1)
        per_class = images.shape[1]
        if ways > self.num_classes:
            raise ValueError(
                f"{ways}-way episodes need {ways} classes, only {self.num_classes} exist"
            )
        if shots + queries > per_class:
            raise ValueError(
                f"shots + queries = {shots + queries} exceeds the {per_class} images per class"
            )
        self.group_members: Tensor | None = None
        if groups is not None:
            if rotations or groups.shape != (images.shape[0],):
                raise ValueError("groups needs one id per class and no rotations")
            ids, groups = torch.unique(groups, return_inverse=True)
            members = torch.nn.functional.one_hot(groups, len(ids)).T.bool()  # [G, C]
            eligible = members.sum(1) >= ways
            if not eligible.any():
                raise ValueError(f"no group has the {ways} classes a {ways}-way episode needs")
            self.group_members = members[eligible].to(device)

    def images_of(self, classes: Tensor, picks: Tensor) -> Tensor:
        """Float images in [0, 1] of image ``picks`` of class ``classes`` (broadcast
        together); class c >= C is class c mod C rotated by (c div C)·90°."""
        base = self.images.shape[0]
        x = self.images[classes % base, picks]
        if self.rotations:
            # torch.where rather than boolean-mask assignment: a mask's size is data
            # dependent, so indexing with it waits for the device (a host sync per batch,
            # and no CUDA-graph replay can overlap with sampling then)
            rotation = (classes // base).expand(picks.shape)
            rotation = rotation.reshape(*rotation.shape, *[1] * (x.dim() - rotation.dim()))
            rotated = x
            for r in (1, 2, 3):
                rotated = torch.where(rotation == r, torch.rot90(x, r, dims=(-2, -1)), rotated)
            x = rotated
        return x.float().div_(255.0)

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        # the draws happen on the generator's device, the images are gathered where they
        # lie: evaluation draws with a CPU generator, so that every device scores the same
        # tasks; training draws where it trains (there both are one device: no copies)
        device, data = generator.device, self.images.device
        n, k, q = self.ways, self.shots, self.queries
        per_class = self.images.shape[1]
        # N distinct classes per episode, in random order (the order assigns the labels)
        scores = torch.rand(tasks, self.num_classes, generator=generator, device=device)
        if self.group_members is not None:
            # one group per episode; classes outside it score below every class inside
            members = self.group_members.to(device)
            pick = torch.randint(len(members), (tasks,), generator=generator, device=device)
            scores = torch.where(members[pick], scores, scores - 2.0)
        classes = scores.topk(n).indices
        # K + Q distinct images of each chosen class
        picks = (
            torch.rand(tasks, n, per_class, generator=generator, device=device).topk(k + q).indices
        )
        classes, picks = classes.to(data), picks.to(data)
        x = self.images_of(classes.unsqueeze(-1), picks)  # [T, N, K+Q, ch, H, W]
        labels = torch.arange(n, device=data).view(1, n, 1).expand(tasks, n, k + q)
        shape = x.shape[3:]
        return TaskBatch(
            x[:, :, :k].reshape(tasks, n * k, *shape),
            labels[:, :, :k].reshape(tasks, n * k),
            x[:, :, k:].reshape(tasks, n * q, *shape),
            labels[:, :, k:].reshape(tasks, n * q),
            info={"classes": classes},
        )


class ClassBatches:
    """Ordinary classification minibatches over all classes with global labels (the
    pretrained baseline's training data): ``sample(B, generator)`` draws an
    :class:`ExampleBatch` of B minibatches of ``batch_size`` images."""

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        rotations: bool = False,
        device: str | torch.device = "cpu",
    ):
        self.episodes = EpisodeTasks(images, 2, 0, 1, rotations, device)
        self.batch_size = batch_size
        self.num_classes = self.episodes.num_classes

    def sample(self, tasks: int, generator: torch.Generator) -> ExampleBatch:
        device = generator.device
        e = self.episodes
        per_class = e.images.shape[1]
        size = tasks * self.batch_size
        classes = torch.randint(self.num_classes, (size,), generator=generator, device=device)
        picks = torch.randint(per_class, (size,), generator=generator, device=device)
        x = e.images_of(classes, picks)
        x = x.view(tasks, self.batch_size, *x.shape[1:])
        y = classes.view(tasks, self.batch_size)
        return ExampleBatch(x, y)
