"""Moved to :mod:`mamlkit.rundir.files`; this old path is that very module (an alias, so that
``import mamlkit.run_files`` and patches of its names keep working)."""

import sys

import mamlkit.rundir.files as _moved

sys.modules[__name__] = _moved
