"""Meta-learning algorithms on the shared engine (:mod:`mamlkit.functional`)."""

from mamlkit.algorithms.base import MetaLearner
from mamlkit.algorithms.maml import FOMAML, MAML
from mamlkit.algorithms.pretrained import PretrainedClassifier, PretrainedRegression
from mamlkit.algorithms.protonet import PrototypicalNetwork

__all__ = [
    "FOMAML",
    "MAML",
    "MetaLearner",
    "PretrainedClassifier",
    "PretrainedRegression",
    "PrototypicalNetwork",
]
