"""Moved to :mod:`mamlkit.rundir.records`; this old path is that very module (an alias, so that
``import mamlkit.records`` and patches of its names keep working)."""

import sys

import mamlkit.rundir.records as _moved

sys.modules[__name__] = _moved
