"""Moved to :mod:`mamlkit.rundir.resume`; this old path is that very module (an alias, so that
``import mamlkit.run_resume`` and patches of its names keep working)."""

import sys

import mamlkit.rundir.resume as _moved

sys.modules[__name__] = _moved
