"""A trained meta-learner as a directory: ``config.yaml`` (what rebuilds the model) plus
``model.safetensors`` (its weights). A run directory of ``mamlkit train`` is one, and
:func:`save_pretrained` writes one for a learner trained any other way."""

from __future__ import annotations

from pathlib import Path

import yaml

from mamlkit.algorithms.base import MetaLearner
from mamlkit.build import check_config_describes
from mamlkit.config import Config
from mamlkit.errors import UserError
from mamlkit.rundir.checkpoint import atomic_write_text, save_checkpoint
from mamlkit.runner import load_run


def from_run(
    run_dir: str | Path,
    checkpoint: str | None = None,
    trust_code: bool = False,
    device: str | None = None,
) -> MetaLearner:
    """The trained learner of a run directory (final weights, or ``checkpoint``: a step
    or ``"latest"``), in eval mode, with its :class:`Config` as ``learner.config``, on
    ``device`` (default: the run's ``train.device``). A ``model.target`` that is not a
    model class of mamlkit is imported only with ``trust_code=True``.

    Examples:
        >>> import mamlkit, torch
        >>> learner = mamlkit.from_run("runs/sine/maml")  # doctest: +SKIP
        >>> xs = torch.linspace(-4, 4, 5).unsqueeze(1)  # doctest: +SKIP
        >>> learner.predict_task(xs, torch.sin(xs), torch.zeros(1, 1), steps=10)  # doctest: +SKIP
    """
    config, learner, _step = load_run(
        Path(run_dir), checkpoint=checkpoint, trust_code=trust_code, device=device
    )
    learner.config = config
    return learner


def from_pretrained(
    directory: str | Path, trust_code: bool = False, device: str | None = None
) -> MetaLearner:
    """A learner saved by :func:`save_pretrained` (or any finished run directory)."""
    return from_run(directory, trust_code=trust_code, device=device)


def save_pretrained(
    learner: MetaLearner, directory: str | Path, config: Config | None = None
) -> Path:
    """Write ``config.yaml`` and ``model.safetensors`` to ``directory`` so that
    :func:`from_pretrained`, ``mamlkit adapt`` and ``mamlkit eval`` rebuild ``learner``.
    ``config`` (default: ``learner.config``, set by :func:`from_run`) must describe the
    learner; for a model of your own, name it with ``model.target`` / ``model.kwargs``.
    An existing run directory is never overwritten.

    Examples:
        >>> import tempfile, torch.nn.functional as F, mamlkit
        >>> from mamlkit.build import build_learner
        >>> config = mamlkit.load_config("sine_maml")
        >>> out = tempfile.mkdtemp() + "/sine"
        >>> _ = mamlkit.save_pretrained(build_learner(config), out, config)
        >>> type(mamlkit.from_pretrained(out)).__name__
        'MAML'
    """
    directory = Path(directory)
    config = config if config is not None else getattr(learner, "config", None)
    if config is None:
        raise UserError(
            "save_pretrained: no config for this learner; pass config=, the Config that "
            "builds it (e.g. mamlkit.load_config(...))"
        )
    check_config_describes(config, learner)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(
            f"save_pretrained: {directory} exists and is not empty; choose a new directory"
        )
    atomic_write_text(directory / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    save_checkpoint(
        directory / "model.safetensors", learner.state_dict(), {"step": None, "kind": "weights"}
    )
    return directory
