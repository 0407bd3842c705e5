"""Moved to :mod:`mamlkit.rundir.identity`; this old path is that very module (an alias, so that
``import mamlkit.run_identity`` and patches of its names keep working)."""

import sys

import mamlkit.rundir.identity as _moved

sys.modules[__name__] = _moved
