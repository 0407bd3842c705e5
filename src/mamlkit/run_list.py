"""Moved to :mod:`mamlkit.rundir.listing`; this old path is that very module (an alias, so that
``import mamlkit.run_list`` and patches of its names keep working)."""

import sys

import mamlkit.rundir.listing as _moved

sys.modules[__name__] = _moved
