"""A run's record of its data set (``data.json``) and the rules that hold later commands to it.

``mamlkit train`` records the absolute folder it read the data from (also in
``config.yaml``'s ``task.data_dir``: where ``--data-dir`` or ``$MAMLKIT_DATA`` pointed,
resolved) and a fingerprint of every split it uses (class count, images per class, a hash
of the class names, the content hash of the cached array: :mod:`mamlkit.tasks.datasets`).
``eval`` and ``train --resume`` then use data only if its fingerprint matches:

* ``--data-dir`` given: that folder, if its data matches (resume records it as the run's
  new location);
* else the recorded folder, if it still exists (and matches);
* else (a run copied to another machine) where the data set is looked for by default
  (``$MAMLKIT_DATA``, the user cache), if it matches.

Anything else is one line naming both folders, exit code 2. Tasks without a data set, and
runs written before ``data.json`` existed, are used as before.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from mamlkit.callbacks import Callback
from mamlkit.config import Config
from mamlkit.data.errors import DataError
from mamlkit.errors import UserError
from mamlkit.rundir import records
from mamlkit.tasks.datasets import (
    dataset_of,
    fingerprint,
    has_default_location,
    load_split,
    locate,
)

__all__ = [
    "DATA_FILE",
    "RecordData",
    "checked_splits",
    "data_record",
    "read_data_record",
    "use_run_data",
]

DATA_FILE = "data.json"
_SCHEMA = "mamlkit-data/1"


def checked_splits(config: Config) -> list[str]:
    """The splits a run of ``config`` uses: train, val (when it validates), its evaluation
    split and test. ``train`` checks them all, so that none fails only at ``eval``."""
    out = ["train", "val"] if config.train.val_every else ["train"]
    return out + [s for s in dict.fromkeys((config.eval.split, "test")) if s not in out]


def data_record(config: Config, splits: list[str]) -> dict[str, Any]:
    """``data.json``'s content for the data set of ``config``: its folder and the
    fingerprint of each of ``splits``."""
    with warnings.catch_warnings():  # a reader's warnings: said when its tasks are built
        warnings.simplefilter("ignore")
        loaded = {s: load_split(config, s) for s in splits}
    return {
        "format": _SCHEMA,
        "task": config.task.name,
        "dataset": dataset_of(config),
        "data_dir": str(loaded[splits[0]].location),
        "splits": {s: fingerprint(d) for s, d in loaded.items()},
    }


def read_data_record(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``data.json``, or None if it has none (a run of a task without a data set,
    or one written before mamlkit recorded data); a damaged one is a :class:`UserError`."""
    path = run_dir / DATA_FILE
    if not path.is_file():
        return None
    record = records.read_json(path)
    if not (
        isinstance(record, dict)
        and record.get("format") == _SCHEMA
        and isinstance(record.get("splits"), dict)
        and all(isinstance(v, dict) for v in record["splits"].values())
    ):
        raise UserError(
            f"{path} is not a mamlkit data record (damaged or hand-edited); restore it from "
            "a backup, or delete it to use the run without checking its data"
        )
    return record


class RecordData(Callback):
    """Writes ``record`` to the run's ``data.json`` when training starts (after config.yaml,
    so that a run that fails to start leaves nothing behind)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_start(self, trainer: Any, resumed: bool) -> None:
        trainer.directory.write_text(DATA_FILE, json.dumps(self.record, indent=1) + "\n")


def _difference(recorded: dict[str, Any], found: dict[str, Any]) -> str | None:
    """How the fingerprints ``found`` (split -> fingerprint) differ from a run's record, in
    a few words, or None if they agree."""
    old_splits = recorded["splits"]
    by_source = {fp.get("source"): fp.get("sha256") for fp in old_splits.values()}
    for split, fp in found.items():
        old = old_splits.get(split)
        if old is None:
            if by_source.get(fp["source"], fp["sha256"]) != fp["sha256"]:
                return "other images"
            continue
        for key, what in (
            ("classes", "classes"),
            ("images_per_class", "images per class"),
            ("image_shape", "as image shape"),
        ):
            if old.get(key) != fp[key]:
                return f"its {split} split has {fp[key]} {what}, the run's had {old.get(key)}"
        if old.get("class_names_sha256") != fp["class_names_sha256"]:
            return f"other class names in its {split} split"
        if old.get("sha256") != fp["sha256"]:
            return f"other images in its {split} split (content hash {fp['sha256'][:12]}, " + (
                f"the run's {str(old.get('sha256'))[:12]})"
            )
    return None


def use_run_data(
    run_dir: Path, config: Config, data_dir: Path | None, splits: list[str]
) -> dict[str, Any] | None:
    """Point ``config.task.data_dir`` at the data ``eval`` or ``--resume`` of the run in
    ``run_dir`` may use (``data_dir``: the user's ``--data-dir``) and return its record (as
    :func:`data_record`, for ``splits``); a :class:`UserError` if the data found is not
    the data the run trained on. None for runs without a record (see the module)."""
    recorded = read_data_record(run_dir) if dataset_of(config) is not None else None
    if recorded is None:  # as before fingerprints: --data-dir simply replaces the folder
        if data_dir is not None:
            config.task.data_dir = str(data_dir)
        return None
    dataset = dataset_of(config)
    assert dataset is not None
    was = config.task.data_dir or recorded.get("data_dir")
    record_file = run_dir / DATA_FILE
    if data_dir is not None:
        config.task.data_dir = str(Path(data_dir).expanduser().resolve())
        where = f"--data-dir {data_dir}"
    elif was and Path(was).exists():
        config.task.data_dir = was
        where = str(was)
    elif has_default_location(dataset):  # moved to another machine: look where it looks
        config.task.data_dir = None
        try:
            locate(config)
        except DataError as exc:
            raise UserError(
                f"{run_dir} trained on the data in {was}, which is gone here; {exc}"
            ) from None
        where = None
    else:
        raise UserError(
            f"{run_dir} trained on the data in {was}, which is gone here; pass --data-dir "
            f"with that data (it must match the fingerprint in {record_file})"
        )
    found = data_record(config, splits)
    difference = _difference(recorded, found["splits"])
    if difference is not None:
        here = found["data_dir"]
        if where is None:
            env = os.environ.get("MAMLKIT_DATA")
            how = f" (found through $MAMLKIT_DATA={env})" if env else ""
            raise UserError(
                f"{run_dir} trained on the data in {was}, which is gone here; the data in "
                f"{here}{how} is not that data ({difference}); pass --data-dir with the data "
                "the run trained on"
            )
        if data_dir is not None:
            raise UserError(
                f"{where}: the data in {here} is not the data {run_dir} trained on (in {was}): "
                f"{difference}; pass the folder of that data"
            )
        raise UserError(
            f"{was}: the data there is no longer the data {run_dir} trained on "
            f"({difference}); restore it, or pass --data-dir with the data the run trained on"
        )
    config.task.data_dir = found["data_dir"]
    kept = {s: fp for s, fp in recorded["splits"].items() if s not in found["splits"]}
    found["splits"] = {**kept, **found["splits"]}
    return found
