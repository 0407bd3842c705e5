"""MAML's inner loop as a pure function of a parameter dict, for T tasks at once.

The parameters of T tasks are one dict whose tensors have a leading task axis
(``θ.expand(T, ...)`` at the start). Every task's loss depends only on its own slice, so
the gradient of ``Σᵢ Lᵢ(φᵢ)`` with respect to the stacked tensor holds each task's own
gradient ``∇Lᵢ(φᵢ)`` in slice i: one ``autograd.grad`` call adapts all tasks. Whether the
forward pass runs the tasks through ``torch.func.vmap``, a model's own batched kernel, or a
Python loop is a separate choice (:func:`task_forward`); differentiation is always ordinary
autograd outside any transform, which keeps second-order gradients exact even through
affine BatchNorm (``vmap`` over ``torch.func.grad`` is not, see docs/design.md).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

Params = dict[str, Tensor]
TaskForward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

IMPLS = ("auto", "batched", "vmap", "loop")

logger = logging.getLogger(__name__)


Selection = Callable[[str], bool]


def select(names: str | Sequence[str] | Selection | None) -> Selection | None:
    """A parameter selection from a name prefix, a list of prefixes or a predicate (None:
    every parameter). ``"head"`` selects ``head.weight`` and ``head.bias``."""
    if names is None or callable(names):
        return names
    prefixes = (names,) if isinstance(names, str) else tuple(names)
    if not prefixes:
        raise ValueError("an empty selection adapts nothing; pass None to adapt everything")
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


def adaptable_params(model: nn.Module, adapt: Selection | None = None) -> Params:
    """The parameters the inner loop adapts: those that require grad and that ``adapt``
    selects (all of them when it is None). Which are adapted is separate from which are
    meta-learned: a selected-out parameter is still trained by the outer loop (ANIL's body),
    a frozen one (``requires_grad=False``) by neither."""
    return {
        name: p
        for name, p in model.named_parameters()
        if p.requires_grad and (adapt is None or adapt(name))
    }


def stack_params(params: Mapping[str, Tensor], tasks: int) -> Params:
    """θ -> θ with a leading task axis of size T (a view; its backward sums over tasks)."""
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


def _vmap_unsupported(model: nn.Module) -> str | None:
    """Why ``vmap`` cannot run ``model`` (None if nothing known stands in its way):
    BatchNorm that updates running statistics writes in place, and recurrent layers have
    no batching rule (``aten::lstm`` and friends)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            return f"{type(m).__name__} tracks running statistics"
        if isinstance(m, nn.RNNBase):
            return f"{type(m).__name__} has no vmap batching rule"
    return None


def _defining_class(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def has_batched_forward(model: nn.Module) -> bool:
    """Whether ``model.batched_forward`` computes the same function as its ``forward``: a
    subclass that overrides ``forward`` but not ``batched_forward`` inherits a kernel of
    its parent's network, which would silently compute something else."""
    if "batched_forward" in vars(model):
        return True
    batched = _defining_class(type(model), "batched_forward")
    forward = _defining_class(type(model), "forward")
    return batched is not None and forward is not None and issubclass(batched, forward)


def task_forward(
    model: nn.Module, impl: str = "auto", adapt: Selection | None = None
) -> tuple[PerTaskForward, str]:
    """A function ``(params [T, ...], x [T, N, ...]) -> out [T, N, ...]`` running each task
    with its own parameters, and the name of the implementation chosen.

    ``batched``: the model's own ``batched_forward`` (fastest where a model has one);
    ``vmap``: ``torch.func.vmap`` over ``functional_call``, each task with its own random
    numbers (dropout masks); most layers, but not recurrent ones or BatchNorm that tracks
    running statistics;
    ``loop``: one ``functional_call`` per task (any module; the reference).
    ``auto`` picks ``batched`` if the model defines ``batched_forward`` for its own
    ``forward`` (:func:`has_batched_forward`), ``loop`` for models vmap cannot run, else
    ``vmap`` -- and falls back to ``loop`` with a warning if the first vmapped call fails;
    the returned callable's ``impl`` attribute then says ``loop``.
    Parameters outside ``params`` (frozen ones, and those ``adapt`` leaves out) are shared
    by all tasks and keep their autograd history, so the outer loss still reaches the
    meta-learned ones among them. Which parameters are frozen is read when the function is
    made: make it again after changing ``requires_grad``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    obstacle = _vmap_unsupported(model)
    fallback = False
    if impl == "auto":
        if has_batched_forward(model):
            impl = "batched"
        elif obstacle is not None:
            impl = "loop"
            logger.info("impl='auto' runs %s as a loop: %s", type(model).__name__, obstacle)
        else:
            impl, fallback = "vmap", True
    problem = impl_problem(model, impl)
    if problem is not None:
        raise ValueError(problem)
    return PerTaskForward(model, impl, adapt, fallback), impl


def impl_problem(model: nn.Module, impl: str) -> str | None:
    """Why ``impl`` cannot run ``model`` (None where it can; ``auto`` and ``loop`` always
    can): ``batched`` needs the model's own kernel, ``vmap`` a model it can batch."""
    name = type(model).__name__
    if impl == "batched":
        if not hasattr(model, "batched_forward"):
            return f"{name} has no batched_forward; use impl auto, vmap or loop"
        if not has_batched_forward(model):
            return (
                f"{name} overrides forward but inherits batched_forward from its parent, "
                "which computes the parent's network; use impl='vmap' or 'loop', or define "
                "batched_forward for it"
            )
    obstacle = _vmap_unsupported(model) if impl == "vmap" else None
    if obstacle is not None:
        return f"impl='vmap' cannot run {name}: {obstacle}; use impl auto or loop"
    return None


class PerTaskForward:
    """``(params [T, ...], x [T, N, ...]) -> out [T, N, ...]`` through ``model`` by ``impl``
    (see :func:`task_forward`). An object rather than a closure, so that a deep copy of a
    learner runs the copied model, not the original. With ``fallback`` (``impl="auto"``
    that chose vmap), a first vmapped call that fails while a loop succeeds switches to
    the loop for good, with a warning; ``impl`` then says ``loop``."""

    def __init__(
        self, model: nn.Module, impl: str, adapt: Selection | None = None, fallback: bool = False
    ):
        self.model, self.impl, self.adapt = model, impl, adapt
        self.fallback = fallback
        # Buffers and shared parameters: most models have none; skip the module-tree walk
        # per call then (it costs ~10% of a sine meta-iteration).
        self.has_fixed = any(True for _ in model.buffers()) or any(
            self._shared(n, p) for n, p in model.named_parameters()
        )

    def _shared(self, name: str, p: Tensor) -> bool:
        return not p.requires_grad or (self.adapt is not None and not self.adapt(name))

    def fixed(self) -> dict[str, Tensor]:
        if not self.has_fixed:
            return {}
        # read at call time, so that model.to(device) is seen
        out = dict(self.model.named_buffers())
        out.update({n: p for n, p in self.model.named_parameters() if self._shared(n, p)})
        return out

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        if self.impl == "batched":
            # batched kernels index every tensor by task: shared ones get the task axis too
            shared = {n: v.expand(x.shape[0], *v.shape) for n, v in self.fixed().items()}
            return self.model.batched_forward({**shared, **params}, x)
        if self.impl == "loop":
            return self._loop(params, x)
        if not self.fallback:
            return self._vmap(params, x)
        try:
            out = self._vmap(params, x)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            out = self._loop(params, x)  # a genuine mistake fails here too, with its error
            self.impl = "loop"
            reason = str(exc).splitlines()[0][:200]
            warnings.warn(
                f"impl='auto': {type(self.model).__name__} does not run under torch.func.vmap "
                f"({reason}); running the tasks in a loop instead (pass impl='loop' to "
                "silence this)",
                stacklevel=3,
            )
        self.fallback = False
        return out

    def _vmap(self, params: Params, x: Tensor) -> Tensor:
        model, shared = self.model, self.fixed()
        # "different": each task draws its own random numbers (e.g. its own dropout mask)
        return vmap(
            lambda p, xi: functional_call(model, {**shared, **p}, (xi,)), randomness="different"
        )(params, x)

    def _loop(self, params: Params, x: Tensor) -> Tensor:
        shared = self.fixed()
        return torch.stack(
            [
                functional_call(
                    self.model, {**shared, **{n: p[t] for n, p in params.items()}}, (xt,)
                )
                for t, xt in enumerate(x)
            ]
        )


def task_mean_loss(loss_fn: LossFn, pred: Tensor, target: Tensor) -> Tensor:
    """``mean over tasks i of loss_fn(pred[i], target[i])`` for any per-task loss.

    MSE and cross-entropy with mean reduction take one fused call (all tasks hold equally
    many examples, so the mean of per-task means is the global mean); any other callable
    is vmapped over the task axis.
    """
    if loss_fn is F.mse_loss or (isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction == "mean"):
        return F.mse_loss(pred, target)
    if loss_fn is F.cross_entropy or (
        type(loss_fn) is nn.CrossEntropyLoss
        and loss_fn.reduction == "mean"
        and loss_fn.weight is None
        and loss_fn.label_smoothing == 0.0
        and target.dtype == torch.long
    ):
        return F.cross_entropy(pred.flatten(0, 1), target.flatten())
    return vmap(loss_fn)(pred, target).mean()


class InnerUpdate(nn.Module):
    """The inner loop's update rule, φ ← φ − α ⊙ ∇L(φ), written once for every variant.

    Subclasses say only what the step size α of parameter ``name`` at inner step ``step``
    is (:meth:`step_size`): a Python float (fixed, outside the graph) or a tensor (learned:
    an ``nn.Parameter`` of the update module, meta-learned with θ because the update keeps
    it in the graph). Called as ``update(params, grads, step)`` on task-stacked parameters.
    """

    #: False where every parameter shares the step's α (it is then looked up once per step)
    per_parameter: bool = True

    def step_size(self, name: str, step: int) -> float | Tensor:
        raise NotImplementedError

    def with_step_sizes(self, lr: float | Sequence[float]) -> InnerUpdate:
        """This rule with fixed step sizes ``lr`` in place of its own (a test-time step size
        given by the caller); what else the rule does stays."""
        return FixedStepSize(lr)

    def forward(self, params: Params, grads: Sequence[Tensor | None], step: int) -> Params:
        out = {}
        shared = None if self.per_parameter else self.step_size("", step)
        for (name, p), g in zip(params.items(), grads, strict=True):
            if g is None:
                out[name] = p
                continue
            alpha = self.step_size(name, step) if shared is None else shared
            # p + (−α)·g as one op: its backward is a single scaling of the incoming
            # gradient, where ``p - lr * g`` costs a negation and a multiplication per weight
            if isinstance(alpha, Tensor):
                out[name] = torch.addcmul(p, alpha, g, value=-1.0)
            else:
                out[name] = torch.add(p, g, alpha=-alpha)
        return out


class FixedStepSize(InnerUpdate):
    """α fixed: one value, or one per inner step (the last repeats when there are more
    steps than values, e.g. test-time adaptation past the training horizon). MAML's rule."""

    per_parameter = False

    def __init__(self, lr: float | Sequence[float]):
        super().__init__()
        lrs = [float(lr)] if isinstance(lr, (int, float)) else [float(a) for a in lr]
        if not lrs:
            raise ValueError("inner learning rate sequence is empty")
        self.lrs = lrs

    def step_size(self, name: str, step: int) -> float:
        return self.lrs[min(step, len(self.lrs) - 1)]

    def extra_repr(self) -> str:
        return f"lrs={self.lrs}"


def _key(name: str) -> str:
    return name.replace(".", "-")  # module attribute names cannot hold dots


class PerParameterStepSize(InnerUpdate):
    """Meta-SGD (Li et al. 2017): a learned step size for every element of every adapted
    parameter, initialised to ``init``; ``alpha[name]`` has the parameter's shape."""

    def __init__(self, params: Mapping[str, Tensor], init: float):
        super().__init__()
        self.alpha = nn.ParameterDict(
            {
                _key(n): nn.Parameter(torch.full_like(p.detach(), float(init)))
                for n, p in params.items()
            }
        )

    def step_size(self, name: str, step: int) -> Tensor:
        return self.alpha[_key(name)]


class PerLayerStepSchedule(InnerUpdate):
    """MAML++'s LSLR (Antoniou et al. 2019): a learned schedule of step sizes for each
    parameter tensor ("layer"), one per inner step, initialised to ``init``; steps past
    ``steps`` use the last one. (Its old name ``PerLayerPerStepStepSize`` is an alias.)"""

    def __init__(self, params: Mapping[str, Tensor], steps: int, init: float):
        super().__init__()
        if steps < 1:
            raise ValueError(f"per-step step sizes need steps >= 1, got {steps}")
        self.alpha = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full((steps,), float(init))) for n in params}
        )

    def step_size(self, name: str, step: int) -> Tensor:
        alpha = self.alpha[_key(name)]
        return alpha[min(step, alpha.shape[0] - 1)]


#: The old name of :class:`PerLayerStepSchedule`, kept so that code using it still runs.
PerLayerPerStepStepSize = PerLayerStepSchedule


class PerStepParameters(InnerUpdate):
    """Parameters the inner loop does not adapt by gradient but sets, after every step, to
    a meta-learned value for that step; the others are adapted by ``update``. MAML++'s
    per-step BatchNorm weights and biases (Antoniou et al. 2019) are this with
    :func:`batch_norm_params`.

    The network at adaptation state s (after s steps) normalises with set s, in its
    support loss at step s+1 and in its query loss: set 0 is the model's own parameter,
    ``values[name][s-1]`` (``steps`` sets, initialised from the model's) belongs to state
    s, and states past ``steps`` keep the last set. (MAML++'s code indexes by inner step
    instead, so that the query loss after step s shares the set of step s's support loss.)
    """

    def __init__(
        self,
        update: InnerUpdate,
        params: Mapping[str, Tensor] | None = None,
        steps: int = 1,
        *,
        values: nn.ParameterDict | None = None,
    ):
        super().__init__()
        if values is None:
            if steps < 1:
                raise ValueError(f"per-step parameters need steps >= 1, got {steps}")
            values = nn.ParameterDict(
                {
                    _key(n): nn.Parameter(p.detach().unsqueeze(0).repeat(steps, *[1] * p.dim()))
                    for n, p in (params or {}).items()
                }
            )
        self.update = update
        self.values = values

    def with_step_sizes(self, lr: float | Sequence[float]) -> InnerUpdate:
        return PerStepParameters(self.update.with_step_sizes(lr), values=self.values)

    def forward(self, params: Params, grads: Sequence[Tensor | None], step: int) -> Params:
        adapted = [(n, p, g) for (n, p), g in zip(params.items(), grads, strict=True)]
        adapted = [(n, p, g) for n, p, g in adapted if _key(n) not in self.values]
        out = self.update({n: p for n, p, _ in adapted}, [g for *_, g in adapted], step)
        for name, p in params.items():
            if name not in out:
                table = self.values[_key(name)]
                out[name] = table[min(step, table.shape[0] - 1)].expand(p.shape)
        return {name: out[name] for name in params}


def batch_norm_params(model: nn.Module) -> dict[str, Tensor]:
    """The affine weights and biases of every BatchNorm layer of ``model``, by name."""
    out = {}
    for prefix, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            dot = f"{prefix}." if prefix else ""
            out[f"{dot}weight"], out[f"{dot}bias"] = m.weight, m.bias
    return out


def supervised_support_loss(
    forward: TaskForward, x: Tensor, y: Tensor, loss_fn: LossFn
) -> Callable[[Params], Tensor]:
    """``params -> Σᵢ Lᵢ(φᵢ)`` on T tasks' support sets: its gradient with respect to the
    stacked φ holds task i's own gradient ∇Lᵢ(φᵢ) in slice i."""
    tasks = x.shape[0]

    def support_loss(params: Params) -> Tensor:
        return task_mean_loss(loss_fn, forward(params, x), y) * tasks

    return support_loss


def inner_loop(
    params: Params,
    support_loss: Callable[[Params], Tensor],
    update: InnerUpdate,
    steps: int,
    first_order: bool = False,
    on_step: Callable[[int, Params], None] | None = None,
    keep_graph: bool = True,
) -> Params:
    """Adapt T tasks' parameters by ``steps`` applications of ``update`` to the gradient of
    ``support_loss`` (any scalar function of the task-stacked parameters whose gradient in
    slice i is task i's: a supervised loss summed over tasks, a policy-gradient surrogate).

    Finn et al. (2017), Eq. 1, per task i and step s:  φᵢ ← φᵢ − α_s ∇_φᵢ L(φᵢ, Dᵢᵗʳ).
    Second order by default: the gradient is itself differentiable (``create_graph``), so
    an outer loss differentiated through φᵢ includes the Hessian terms. ``first_order``
    treats ∇L as a constant, which is exactly first-order MAML (learned step sizes still
    get their gradient through the update). ``on_step(s, φ)`` sees the parameters after
    every step (``s = 0`` before any). ``keep_graph=False`` (test time) cuts the history
    after every step, so memory does not grow with the number of steps.
    """
    if on_step is not None:
        on_step(0, params)
    for s in range(steps):
        grads = torch.autograd.grad(
            support_loss(params),
            tuple(params.values()),
            create_graph=not first_order,
            allow_unused=True,
        )
        # .forward, not the module call: the hot path skips nn.Module's hook dispatch
        params = update.forward(params, grads, s)
        if not keep_graph:
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
        if on_step is not None:
            on_step(s + 1, params)
    return params
