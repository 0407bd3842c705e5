"""Meta-learning algorithms on the shared engine (:mod:`mamlkit.functional`)."""

from mamlkit.algorithms.anil import ANIL
from mamlkit.algorithms.base import ALGORITHMS, MetaLearner, MetaOutput, register
from mamlkit.algorithms.gradient import GradientLearner
from mamlkit.algorithms.inner_adam import InnerAdam
from mamlkit.algorithms.maml import FOMAML, MAML
from mamlkit.algorithms.mamlpp import MAMLPlusPlus
from mamlkit.algorithms.metasgd import MetaSGD
from mamlkit.algorithms.pretrained import PretrainedClassifier, PretrainedRegression
from mamlkit.algorithms.protonet import PrototypicalNetwork
from mamlkit.algorithms.registry import AlgorithmSpec, learner_class
from mamlkit.algorithms.reptile import Reptile
from mamlkit.registry import import_modules

# mamlkit.rl's learners by import path (imported when built, so that validating a config
# imports no mamlkit.rl): MAML-TRPO, and TRPO on all tasks (the pretrained/oracle baseline)
register("maml_trpo", builder="mamlkit.rl.learner:MAMLTRPO")
register("trpo", builder="mamlkit.rl.learner:MAMLTRPO", pretrain=True)

# any other module of this package registers its learner when imported: a new algorithm is
# its own file (and a preset), with no import to add here
import_modules(__name__, __path__)

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "AlgorithmSpec",
    "FOMAML",
    "GradientLearner",
    "InnerAdam",
    "MAML",
    "MAMLPlusPlus",
    "MetaLearner",
    "MetaOutput",
    "MetaSGD",
    "PretrainedClassifier",
    "PretrainedRegression",
    "PrototypicalNetwork",
    "Reptile",
    "learner_class",
    "register",
]
