"""Plain ``nn.Module`` networks (MLP, Conv4, ResNet12). Each may offer
``batched_forward(params, x)``: a forward pass of T tasks with per-task weights, which the
engine prefers to ``vmap`` when present.
A config names one through :data:`MODELS` (see :func:`register_model`)."""

from mamlkit.models import builtin as _builtin  # noqa: F401  (registers mamlkit's own models)
from mamlkit.models.conv import Conv4
from mamlkit.models.mlp import MLP
from mamlkit.models.registry import MODELS, ModelSpec, model_spec, register_model
from mamlkit.models.resnet import ResNet12
from mamlkit.registry import import_modules

# any other module of this package registers its model when imported: a new model is its
# own file (and a preset), with no import to add here
import_modules(__name__, __path__)

__all__ = [
    "MLP",
    "MODELS",
    "Conv4",
    "ModelSpec",
    "ResNet12",
    "model_spec",
    "register_model",
]
