"""Moved to :mod:`mamlkit.rundir.checkpoint`; this old path is that very module (an alias, so that
``import mamlkit.checkpoint`` and patches of its names keep working)."""

import sys

import mamlkit.rundir.checkpoint as _moved

sys.modules[__name__] = _moved
