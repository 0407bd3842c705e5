"""One meta-training iteration on fixed device buffers, replayable as a CUDA graph.

An eager meta-iteration is hundreds of small kernels launched one by one from Python, plus
a copy of the loss back to the host every iteration (a GPU sync) to check that training is
healthy. On a GPU that launch overhead, not arithmetic, is the time: an Omniglot 5-way
1-shot iteration is ~10 GFLOP, a few percent of the card for a few milliseconds.

:class:`DeviceStep` keeps the whole iteration on the device instead:

- the sampled task batch is copied into input buffers that never move;
- the loss and metric are summed into device-side accumulators, and the health check
  (NaN/Inf in the loss or the meta-gradient) sets a device-side flag that makes fused
  Adam skip its update (its ``found_inf`` argument, as ``GradScaler`` uses it) from then
  on, so the weights stay those of the last healthy iteration and the host learns of it
  at its next read;
- on CUDA the iteration — inner loop, query loss, outer backward, health check, gradient
  clipping, optimiser step — is captured once as a CUDA graph (after a few eager warm-up
  iterations on a side stream, as graph capture requires) and replayed every iteration.

The host reads the accumulators and the health flag only when it logs, validates or
checkpoints (:attr:`DeviceStep.window`, :meth:`DeviceStep.health`). Without capture (the
CPU, or ``capture=False``) the same code runs eagerly and computes exactly what the eager
training loop computes, which the tests check number for number; the CUDA tests check
captured against eager.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamlkit.algorithms.base import MetaLearner
from mamlkit.algorithms.capabilities import capture_key, is_capturable, owns_outer_step
from mamlkit.iteration import Health, MetricFn, apply_update, divergence_error, meta_gradient
from mamlkit.tasks.base import ExampleBatch, TaskBatch

__all__ = ["CaptureUnsupported", "DeviceStep", "Health", "check_capturable"]


class CaptureUnsupported(Exception):
    """This learner, optimiser or device cannot run as a captured step."""


def check_capturable(learner: MetaLearner, optimizer: torch.optim.Optimizer) -> None:
    """Raise :class:`CaptureUnsupported` (with the reason) unless a :class:`DeviceStep` can
    run this learner and optimiser."""
    if owns_outer_step(learner):
        # derived from the hook, never from a flag a subclass may inherit (Reptile is a MAML
        # whose update is its own outer_step: a device step would skip it)
        raise CaptureUnsupported(
            f"{type(learner).__name__} makes its own outer update (outer_step), which the "
            "device step does not run"
        )
    if not is_capturable(learner):
        raise CaptureUnsupported(
            f"{type(learner).__name__} reads values back to the host inside its iteration "
            "(its meta_forward is not marked @capturable)"
        )
    if not all(group.get("fused") for group in optimizer.param_groups):
        raise CaptureUnsupported(
            "the optimiser is not fused Adam (its found_inf skip is what keeps a non-finite "
            "step out of the weights without a host sync)"
        )


class DeviceStep:
    """Runs meta-training iterations of ``learner`` with ``optimizer`` on device buffers.

    Args:
        learner: a :class:`MetaLearner` whose ``meta_forward`` needs no host sync (it is
            marked :func:`~mamlkit.algorithms.capabilities.capturable`).
        optimizer: fused ``torch.optim.Adam`` over ``learner``'s parameters.
        metric_fn: ``(predictions, query_y) -> [T]`` per-task metric, or None.
        grad_clip: clip meta-gradient values to ``[-c, c]`` (None: no clipping).
        capture: capture and replay a CUDA graph (CUDA only).
        warmup: eager iterations before capture (CUDA needs a few on a side stream to
            initialise cuDNN, autograd and the optimiser state outside the graph).
        start: the training iteration the step starts at (:class:`Health` counts from it).
        window: a float64 ``[3]`` device tensor that every iteration adds
            ``[loss, metric, 1]`` to (the trainer's logging window; one is made if None).
        fallback: if the capture fails, run eagerly from then on (and say why in
            ``capture_error``) instead of raising.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from mamlkit import MAML, SineTasks
        >>> from mamlkit.models import MLP
        >>> learner = MAML(MLP((1, 8, 1)), F.mse_loss, inner_lr=0.01)
        >>> opt = torch.optim.Adam(learner.parameters(), 1e-3, fused=True)
        >>> step = DeviceStep(learner, opt, metric_fn=None, capture=False)
        >>> tasks, gen = SineTasks(5, 5), torch.Generator().manual_seed(0)
        >>> for _ in range(3):
        ...     step(tasks.sample(4, gen))
        >>> step.window.tolist()[2], step.health().first_nonfinite
        (3.0, 0)
    """

    def __init__(
        self,
        learner: MetaLearner,
        optimizer: torch.optim.Optimizer,
        metric_fn: MetricFn | None,
        grad_clip: float | None = None,
        capture: bool = False,
        warmup: int = 3,
        start: int = 0,
        window: Tensor | None = None,
        fallback: bool = False,
    ):
        check_capturable(learner, optimizer)
        self.device = next(learner.parameters()).device
        if capture and self.device.type != "cuda":
            raise CaptureUnsupported(f"CUDA graphs need a CUDA device, not {self.device}")
        self.learner, self.optimizer = learner, optimizer
        self.metric_fn, self.grad_clip = metric_fn, grad_clip
        self.capture, self.warmup, self.fallback = capture, warmup, fallback
        self.capture_error: str | None = None
        self.params = [p for p in learner.parameters() if p.requires_grad]
        device = self.device
        if window is None:
            window = torch.zeros(3, dtype=torch.float64, device=device)
        if window.device != device or window.dtype != torch.float64 or window.shape != (3,):
            raise ValueError("window must be a float64 [3] tensor on the learner's device")
        self.window = window
        self.iteration = torch.full((), start, dtype=torch.int64, device=device)
        # [first non-finite iteration (0: none), 1 if the loss itself was non-finite]
        self.nonfinite = torch.zeros(2, dtype=torch.int64, device=device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        optimizer.found_inf = self.found_inf
        if capture:
            for group in optimizer.param_groups:
                group["capturable"] = True
        self.inputs: TaskBatch | ExampleBatch | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._graph_key: tuple | None = None
        self._at = start
        self._eager_runs = 0

    # ---- the iteration ------------------------------------------------------------------
    def _iteration(self) -> None:
        """One iteration on ``self.inputs`` (:func:`mamlkit.iteration.meta_gradient`, then
        the update); everything stays on the device."""
        value, metric, health = meta_gradient(
            self.learner, self.inputs, self._at, self.params, self.metric_fn
        )
        with torch.no_grad():
            bad = ~torch.isfinite(health)
            first = self.nonfinite[0] == 0
            # no update from the first non-finite iteration on: the weights stay those of the
            # last healthy iteration until the host stops the run
            self.found_inf.copy_(bad | ~first)
            self.iteration.add_(1)
            self.nonfinite.copy_(
                torch.where(
                    bad & first,
                    torch.stack([self.iteration, (~torch.isfinite(value)).long()]),
                    self.nonfinite,
                )
            )
            one = torch.ones((), dtype=torch.float64, device=value.device)
            self.window.add_(torch.stack([value.double(), metric.double(), one]))
        apply_update(self.params, self.optimizer, self.grad_clip)

    def _load(self, batch: TaskBatch | ExampleBatch) -> None:
        if self.inputs is None:
            self.inputs = batch.map(torch.clone)
            return
        for static, new in zip(self.inputs, batch, strict=True):
            if static.shape != new.shape:
                raise ValueError(
                    f"a DeviceStep runs one batch shape; got {list(new.shape)} after "
                    f"{list(static.shape)}"
                )
            static.copy_(new)

    def __call__(self, batch: TaskBatch | ExampleBatch, iteration: int = 0) -> None:
        """Run training iteration ``iteration`` on ``batch`` (copied into the step's input
        buffers)."""
        self._load(batch)
        self._at = iteration
        # a captured step bakes in the learning rates and whatever of the iteration the
        # learner's objective depends on: capture again when either changes
        key = (
            [group["lr"] for group in self.optimizer.param_groups],
            capture_key(self.learner, iteration),
        )
        if self.graph is not None and key != self._graph_key:
            self.graph = None
        if self.graph is not None:
            self.graph.replay()
            return
        if not self.capture:
            self.optimizer.zero_grad(set_to_none=True)
            self._iteration()
            return
        if self._eager_runs < self.warmup:
            self._eager_runs += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                self._iteration()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        # gradients allocated inside the capture live in the graph's pool and are
        # overwritten (not accumulated) by every replay
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._iteration()
        except Exception as exc:
            # nothing recorded in a capture has run: weights and optimiser state are as
            # they were, so this iteration can still run eagerly
            if not self.fallback:
                raise
            self.capture, self.capture_error = False, f"{type(exc).__name__}: {exc}"
            del graph
            self.optimizer.zero_grad(set_to_none=True)
            self._iteration()
            return
        self.graph, self._graph_key = graph, key
        graph.replay()  # capturing records the iteration; replaying runs it

    # ---- the host's view ------------------------------------------------------------------
    def health(self) -> Health:
        """Whether any iteration so far was non-finite (one device-to-host copy)."""
        first, loss_bad = self.nonfinite.tolist()
        return Health(int(first), bool(loss_bad))

    def check(self) -> None:
        """Raise the divergence error if any iteration so far was non-finite (a host read:
        the trainer calls it only where it logs, validates or checkpoints)."""
        health = self.health()
        if health.first_nonfinite:
            raise divergence_error(health, updates_skipped=True)

    @property
    def name(self) -> str:
        """How the iterations run: ``cuda-graph`` (captured and replayed) or
        ``device-eager`` (the same code uncaptured: no capture asked for, or it failed)."""
        return "cuda-graph" if self.capture else "device-eager"
