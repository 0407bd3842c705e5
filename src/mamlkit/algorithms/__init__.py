"""Meta-learning algorithms on the shared engine (:mod:`mamlkit.functional`)."""

from mamlkit.algorithms.base import MetaLearner
from mamlkit.algorithms.maml import FOMAML, MAML
from mamlkit.algorithms.pretrained import PretrainedRegression

__all__ = ["FOMAML", "MAML", "MetaLearner", "PretrainedRegression"]
