"""Run directories: everything mamlkit reads from and writes to a run's folder.

One module per concern; open the one you need:

- :mod:`mamlkit.rundir.directory`: :class:`RunDirectory`, the one object through which the
  trainer writes a run (config, environment, status, metrics, checkpoints, weights);
- :mod:`mamlkit.rundir.ownership`: which folders are runs, which files in them are
  mamlkit's (``--force`` removes only those), the run's lock, the checks before writing;
- :mod:`mamlkit.rundir.files`: preparing a folder, ``env.json``'s environment record,
  ``status.json``, finding and choosing checkpoints, cutting ``metrics.jsonl`` back;
- :mod:`mamlkit.rundir.records`: the JSON files (strict JSON, appends that never tear);
- :mod:`mamlkit.rundir.checkpoint`: safetensors files, atomic writes, optimiser and RNG state;
- :mod:`mamlkit.rundir.identity`: which run a folder and its files belong to;
- :mod:`mamlkit.rundir.data`: ``data.json`` and the rules that hold later commands to it;
- :mod:`mamlkit.rundir.resume`: what ``train --resume`` checks and repairs;
- :mod:`mamlkit.rundir.listing`: ``mamlkit runs``.

The old module paths (``mamlkit.run_files``, ``mamlkit.records``, ``mamlkit.checkpoint``,
``mamlkit.run_identity``, ``mamlkit.run_data``, ``mamlkit.run_resume``, ``mamlkit.run_list``)
are these modules under their old names; ``mamlkit.rundir``'s own old names (``lock_run_dir``,
``CHECKPOINT_DIR``, …) are :mod:`mamlkit.rundir.ownership`'s, and still import from here.

The names resolve lazily (PEP 562), so that importing one module of the package imports
no other: the package has no import circle with the modules that use it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RunDirectory"]


def __getattr__(name: str) -> Any:
    """``RunDirectory``, and the names ``mamlkit.rundir`` had as a module (ownership's)."""
    if name == "RunDirectory":
        return importlib.import_module("mamlkit.rundir.directory").RunDirectory
    if name.startswith("__"):
        raise AttributeError(name)
    ownership = importlib.import_module("mamlkit.rundir.ownership")
    try:
        return getattr(ownership, name)
    except AttributeError:
        raise AttributeError(f"module 'mamlkit.rundir' has no attribute {name!r}") from None
