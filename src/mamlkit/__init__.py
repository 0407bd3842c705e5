"""mamlkit: model-agnostic meta-learning on torch.func — exact meta-gradients, fast.

Examples:
    >>> import torch, torch.nn.functional as F
    >>> from mamlkit import MAML, SineTasks
    >>> from mamlkit.models import MLP
    >>> learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01)
    >>> batch = SineTasks().sample(25, torch.Generator().manual_seed(0))
    >>> learner.meta_loss(*batch).backward()
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Lazy exports: `import mamlkit.data` must not pay for importing torch.
_EXPORTS = {
    "MAML": "mamlkit.algorithms",
    "FOMAML": "mamlkit.algorithms",
    "MetaSGD": "mamlkit.algorithms",
    "MAMLPlusPlus": "mamlkit.algorithms",
    "Reptile": "mamlkit.algorithms",
    "ANIL": "mamlkit.algorithms",
    "MetaLearner": "mamlkit.algorithms",
    "PretrainedRegression": "mamlkit.algorithms",
    "PrototypicalNetwork": "mamlkit.algorithms",
    "PretrainedClassifier": "mamlkit.algorithms",
    "SineTasks": "mamlkit.tasks",
    "TaskBatch": "mamlkit.tasks",
    "ExampleBatch": "mamlkit.tasks",
    "load_config": "mamlkit.config",
    "Trainer": "mamlkit.training",
    "evaluate": "mamlkit.evaluation",
    "load_run": "mamlkit.runner",
    "from_run": "mamlkit.saving",
    "from_pretrained": "mamlkit.saving",
    "save_pretrained": "mamlkit.saving",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mamlkit' has no attribute {name!r}")
