"""What ``mamlkit presets show`` prints: a resolved config, only the keys its components
(task, model, algorithm) read, each with a one-line meaning.

The meanings come from the comments beside and above the fields of the config dataclasses
(:mod:`mamlkit.config`'s ``train`` and ``eval``, and each component's settings class,
:mod:`mamlkit.settings`), so that the code and the help say the same; :data:`MEANINGS`
gives those the source leaves uncommented.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any

from mamlkit.config import Config

__all__ = ["MEANINGS", "config_lines", "key_meanings", "used_keys"]

#: meanings of the fields the dataclasses leave without a comment
MEANINGS: dict[str, str] = {
    "task.data_dir": "the data set's folder (default: $MAMLKIT_DATA/<dataset>, or the cache)",
    "task.split_seed": "seed of the class split into train/val/test",
    "task.image_size": "images are resized to this many pixels a side",
    "task.oracle": "RL: the oracle baseline sees the task's goal in its observation",
    "model.hidden": "mlp: the sizes of the hidden layers",
    "model.filters": "conv4: filters per convolution",
    "algorithm.inner_lr": "the inner loop's step size α (training)",
    "algorithm.inner_steps": "inner gradient steps per task in training",
    "algorithm.first_order": "drop the second-order terms of the meta-gradient",
    "algorithm.eval_inner_lr": "test-time step size (default: inner_lr)",
    "algorithm.discount": "RL: discount factor γ of returns",
    "algorithm.gae_lambda": "RL: λ of generalised advantage estimation",
    "algorithm.max_kl": "TRPO: the KL trust region of an outer step",
    "algorithm.cg_iterations": "TRPO: conjugate-gradient iterations",
    "algorithm.cg_damping": "TRPO: damping added to the Fisher-vector products",
    "algorithm.backtrack_ratio": "TRPO: line-search shrink factor",
    "algorithm.max_backtracks": "TRPO: line-search steps at most",
    "train.iterations": "meta-training iterations (outer steps)",
    "train.meta_batch": "tasks per outer step",
    "train.outer_lr": "the outer optimiser's learning rate β",
    "train.min_lr": "cosine schedule: the learning rate it ends at",
    "train.log_every": "a metrics.jsonl record (and log line) every n iterations",
    "train.val_tasks": "validation tasks per validation",
    "train.checkpoint_every": "a checkpoint every n iterations",
    "train.keep_checkpoints": "checkpoints kept (the newest)",
    "train.seed": "seed of initialisation and task sampling",
    "train.device": "cpu or cuda[:n]",
    "train.tensorboard": "also write TensorBoard events",
    "eval.tasks": "test tasks of `mamlkit eval`",
    "eval.steps": "test-time adaptation steps",
    "eval.seed": "seed of the test tasks (the same tasks for every method)",
    "eval.split": "the split `mamlkit eval` scores: train, val or test",
}


def _task(config: Config) -> Any:
    from mamlkit.tasks.registry import task_spec

    return task_spec(config.task.name)


def _image(c: Config) -> bool:
    return _task(c).inputs == "image"


def _rl(c: Config) -> bool:
    return _task(c).rl


def _trains_on_examples(c: Config) -> bool:
    """Whether its learner trains on class minibatches (``task.batch_size``), not tasks."""
    from mamlkit.algorithms.registry import learner_class

    return learner_class(c).trains_on == "examples"


def _adapts(c: Config) -> bool:
    return c.algorithm.name not in ("protonet",)


#: keys of a component shown only where the config's other components read them (others:
#: always; a component's section holds only its own keys)
_USED_WHEN: dict[str, Callable[[Config], bool]] = {
    "task.train_ways": lambda c: c.algorithm.other_train_episodes,
    "task.train_queries": lambda c: c.algorithm.other_train_episodes,
    "task.split": lambda c: c.task.name == "omniglot",
    "task.within_alphabet": lambda c: _task(c).alphabets,
    "task.batch_size": lambda c: not _rl(c) and _trains_on_examples(c),
    "model.target": lambda c: c.model.target is not None,
    "model.kwargs": lambda c: c.model.target is not None,
    "algorithm.inner_lr": _adapts,
    "algorithm.inner_steps": _adapts,
    "algorithm.first_order": lambda c: c.algorithm.name
    in ("maml", "metasgd", "anil", "maml_trpo"),
    "algorithm.impl": lambda c: c.algorithm.name not in ("protonet", "pretrained") and not _rl(c),
    "algorithm.eval_inner_lr": _adapts,
    "train.lr_halve_every": lambda c: c.train.lr_schedule == "constant",
    "train.min_lr": lambda c: c.train.lr_schedule == "cosine",
    "train.val_tasks": lambda c: bool(c.train.val_every),
}

_FIELD = re.compile(r"^    (\w+): [^#]*?(?:#\s*(.*))?$")


def _first_sentence(text: str) -> str:
    """The text up to its first full stop (or semicolon), without a dangling comma."""
    text = " ".join(text.split())
    cut = re.search(r"(?<=[a-z0-9)])\.(\s|$)", text)
    return (text[: cut.start()] if cut else text).rstrip(" ,")


@functools.cache
def _class_meanings(cls: type) -> dict[str, str]:
    """field name -> meaning, from the comments of ``cls``'s own source."""
    try:
        source = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (a frozen build): the dict alone
        source = []
    out: dict[str, str] = {}
    # a comment block describes the fields below it, up to the next comment or gap
    above: list[str] = []
    fields_since = False
    for line in source[1:]:
        stripped = line.strip()
        if stripped.startswith("#:"):  # a class attribute's documentation, not a field's
            continue
        if stripped.startswith("#"):
            above = [] if fields_since else above
            above.append(stripped.lstrip("# "))
            fields_since = False
            continue
        match = _FIELD.match(line)
        if match:
            fields_since = True
            meaning = match.group(2) or " ".join(above)
            if meaning:
                out[match.group(1)] = _first_sentence(meaning)
        elif not stripped:
            above = []
    return out


def _section_classes() -> dict[str, list[type]]:
    """Every settings class a config section may hold: its base, each registered
    component's (mamlkit's RL learners and tasks included)."""
    import mamlkit.rl  # noqa: F401  (registers the RL learners)
    from mamlkit.algorithms import ALGORITHMS
    from mamlkit.config import EvalConfig, TrainConfig
    from mamlkit.models import MODELS
    from mamlkit.tasks import TASKS

    return {
        "task": [spec.settings_class for spec in TASKS.values()],
        "model": [spec.settings_class for spec in MODELS.values()],
        "algorithm": [getattr(cls, "settings_class", None) for cls, _ in ALGORITHMS.values()],
        "train": [TrainConfig],
        "eval": [EvalConfig],
    }


def key_meanings(config: Config | None = None) -> dict[str, str]:
    """``section.key`` -> its one-line meaning: the field's trailing comment, else the
    comment lines above it (in the settings class that declares it), else
    :data:`MEANINGS` (the dict wins where both exist). With ``config``: the keys of its
    components; without: of every registered component."""
    if config is not None:
        classes = {f.name: [type(getattr(config, f.name))] for f in dataclasses.fields(config)}
    else:
        classes = _section_classes()
    out: dict[str, str] = {}
    for section, found in classes.items():
        for cls in found:
            for base in reversed(getattr(cls, "__mro__", ())):
                if dataclasses.is_dataclass(base):
                    for name, meaning in _class_meanings(base).items():
                        out.setdefault(f"{section}.{name}", meaning)
    out.update(MEANINGS)
    return out


def used_keys(config: Config) -> list[str]:
    """The keys of ``config`` its task, model and algorithm read, in the config's order."""
    keys = []
    for section in dataclasses.fields(config):
        for f in dataclasses.fields(getattr(config, section.name)):
            key = f"{section.name}.{f.name}"
            when = _USED_WHEN.get(key)
            if when is None or when(config):
                keys.append(key)
    return keys


def config_lines(config: Config, width: int = 100) -> list[str]:
    """The config as YAML-like lines, ``key: value  # meaning``, one section per block."""
    import yaml

    meanings = key_meanings(config)
    keys = used_keys(config)
    lines: list[str] = []
    pad = max(len(k.split(".")[1]) for k in keys) + 2
    for section in dataclasses.fields(config):
        own = [k for k in keys if k.startswith(section.name + ".")]
        if not own:
            continue
        lines.append(f"{section.name}:")
        for key in own:
            name = key.split(".")[1]
            value = getattr(getattr(config, section.name), name)
            shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            shown = shown.removesuffix("\n...").removesuffix("...").strip()
            left = f"  {name + ':':<{pad}} {shown}"
            meaning = meanings.get(key, "")
            if meaning:
                room = max(20, width - len(left) - 4)
                left = f"{left:<{pad + 14}}  # {textwrap.shorten(meaning, room, placeholder=' …')}"
            lines.append(left.rstrip())
    return lines
