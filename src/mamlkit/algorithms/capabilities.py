"""What the trainer may do with a learner, read from the hooks its class defines.

A capability is derived from the hook it is about, never from a class attribute that a
subclass inherits while it replaces the hook (Reptile once inherited MAML's
``capturable = True`` while its update was its own ``outer_step``, and trained as
first-order MAML on a GPU):

- a learner *owns its outer step* where its class overrides
  :meth:`~mamlkit.algorithms.base.MetaLearner.outer_step`;
- its ``meta_forward`` *can be captured* as a CUDA graph where that very method is marked
  :func:`capturable` (it never reads a value back to the host); a subclass that overrides
  ``meta_forward`` is not capturable until it marks its own;
- its own outer step *runs under torchrun* where that very method is marked
  :func:`averages_over_ranks` (it averages each per-task mean through
  :meth:`~mamlkit.algorithms.base.MetaLearner.mean_over_ranks`).

Examples:
    >>> import torch.nn.functional as F
    >>> from mamlkit import MAML
    >>> from mamlkit.models import MLP
    >>> class Traced(MAML):
    ...     def meta_forward(self, batch, iteration=0):
    ...         print("host sync")  # whatever it does, nobody said it is capturable
    ...         return super().meta_forward(batch, iteration)
    >>> learner = Traced(MLP((1, 8, 1)), F.mse_loss, inner_lr=0.01)
    >>> is_capturable(MAML(MLP((1, 8, 1)), F.mse_loss, 0.01)), is_capturable(learner)
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "averages_over_ranks",
    "capturable",
    "capture_key",
    "is_capturable",
    "outer_step_distributes",
    "owns_outer_step",
]

F = TypeVar("F", bound=Callable[..., Any])
#: ``key(learner, iteration)``, or the name of a method ``learner.key(iteration)``
KeyFn = Callable[[Any, int], Hashable] | str

_CAPTURABLE = "__mamlkit_capturable__"
_DISTRIBUTES = "__mamlkit_averages_over_ranks__"


@dataclass(frozen=True)
class _Capture:
    """The mark :func:`capturable` leaves on a ``meta_forward``: what of the iteration the
    objective depends on (``key(learner, iteration)``; None: nothing)."""

    key: KeyFn | None = None


def capturable(method: F | None = None, *, key: KeyFn | None = None) -> Any:
    """Mark a ``meta_forward`` that never reads a value back to the host, so that a whole
    training iteration can be captured as a CUDA graph (:mod:`mamlkit.device_step`).

    ``key(learner, iteration)`` (or the name of a method of the learner, called with
    ``iteration``): what of ``iteration`` the objective depends on (MAML++'s annealing
    epochs); the step is captured again whenever it changes. Use as ``@capturable``
    or ``@capturable(key=...)``. The mark belongs to the method: a subclass that overrides
    ``meta_forward`` without marking it is trained eagerly."""

    def mark(fn: F) -> F:
        setattr(fn, _CAPTURABLE, _Capture(key))
        return fn

    return mark(method) if method is not None else mark


def averages_over_ranks(method: F) -> F:
    """Mark an ``outer_step`` that averages every per-task mean its update is made of
    through ``self.mean_over_ranks`` (Reptile's mean adapted weights; TRPO's gradient,
    Fisher-vector products and line-search losses), so that it may run under ``torchrun``:
    every rank then makes the same update. The trainer refuses an own outer step without
    it in a distributed job (its ranks would drift apart)."""
    setattr(method, _DISTRIBUTES, True)
    return method


def _hook(learner: Any, name: str) -> tuple[type, Callable[..., Any]]:
    """The class whose body defines hook ``name`` for ``learner`` (an instance or a class),
    and the function it defines."""
    cls = learner if isinstance(learner, type) else type(learner)
    for owner in cls.__mro__:
        if name in vars(owner):
            return owner, vars(owner)[name]
    raise AttributeError(f"{cls.__name__} has no {name}")


def owns_outer_step(learner: Any) -> bool:
    """Whether ``learner``'s class replaces the usual outer update ("backward the
    meta-loss, then ``optimizer.step()``") with an ``outer_step`` of its own."""
    from mamlkit.algorithms.base import MetaLearner

    cls = learner if isinstance(learner, type) else type(learner)
    return cls.outer_step is not MetaLearner.outer_step


def _capture(learner: Any) -> _Capture | None:
    owner, fn = _hook(learner, "meta_forward")
    mark = getattr(fn, _CAPTURABLE, None)
    if mark is not None:
        return mark
    # the spelling before the marks: a class attribute, honoured only beside the very
    # meta_forward it describes (a subclass's own meta_forward does not inherit it)
    if vars(owner).get("capturable") is True:
        return _Capture("capture_key" if "capture_key" in vars(owner) else None)
    return None


def is_capturable(learner: Any) -> bool:
    """Whether ``learner``'s ``meta_forward`` (the one its class uses) is marked
    :func:`capturable`."""
    return _capture(learner) is not None


def capture_key(learner: Any, iteration: int) -> Hashable:
    """What of ``iteration`` a capture of ``learner``'s ``meta_forward`` depends on (None
    for a learner that is not capturable or whose objective ignores the iteration)."""
    mark = _capture(learner)
    if mark is None or mark.key is None:
        return None
    if isinstance(mark.key, str):
        return getattr(learner, mark.key)(iteration)
    return mark.key(learner, iteration)


def outer_step_distributes(learner: Any) -> bool:
    """Whether ``learner``'s own ``outer_step`` is marked :func:`averages_over_ranks` (False
    for a learner without one: it needs no mark, the trainer averages its gradients)."""
    if not owns_outer_step(learner):
        return False
    owner, fn = _hook(learner, "outer_step")
    return (
        bool(getattr(fn, _DISTRIBUTES, False)) or vars(owner).get("outer_step_distributes") is True
    )
