"""Moved to :mod:`mamlkit.rundir.data`; this old path is that very module (an alias, so that
``import mamlkit.run_data`` and patches of its names keep working)."""

import sys

import mamlkit.rundir.data as _moved

sys.modules[__name__] = _moved
