"""Meta-learning algorithms on the shared engine (:mod:`mamlkit.functional`)."""

from mamlkit.algorithms.anil import ANIL
from mamlkit.algorithms.base import MetaLearner
from mamlkit.algorithms.maml import FOMAML, MAML
from mamlkit.algorithms.metasgd import MetaSGD
from mamlkit.algorithms.pretrained import PretrainedClassifier, PretrainedRegression
from mamlkit.algorithms.protonet import PrototypicalNetwork

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "MetaLearner",
    "MetaSGD",
    "PretrainedClassifier",
    "PretrainedRegression",
    "PrototypicalNetwork",
]
