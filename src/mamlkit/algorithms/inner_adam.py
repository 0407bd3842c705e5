"""Adam as an inner-loop update rule whose moment estimates outlive the inner loop: Reptile's
inner optimiser (Nichol et al. 2018 adapt with Adam, β₁ = 0, its state kept across tasks)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mamlkit.functional import (
    InnerUpdate,
    Params,
    _key,  # buffer names cannot hold dots
)

__all__ = ["InnerAdam"]


class InnerAdam(InnerUpdate):
    """φ ← φ − lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ) · m / (√v + ε), with m ← β₁ m + (1 − β₁) g and
    v ← β₂ v + (1 − β₂) g² at every inner step (Adam as TensorFlow's ``AdamOptimizer``
    writes it, which openai/supervised-reptile trains with; ε outside the bias correction).

    The state (``v``, ``m`` where β₁ > 0, and the step count t) is a set of buffers of this
    module, so it is saved with the learner. Every inner loop starts each task from the
    stored state and leaves it unchanged; :meth:`keep` stores the mean over the tasks of
    the last loop's final state (Reptile calls it after each meta-iteration's inner loops,
    so that the state carries on from one meta-iteration to the next as the paper's does,
    and test-time adaptation starts from what training left). In the paper the tasks of a
    meta-batch run one after another, each from the state the one before left; here they
    run side by side from the same state, and t advances by one loop's steps.

    Examples:
        >>> import torch
        >>> theta = {"w": torch.zeros(2)}
        >>> rule = InnerAdam(theta, lr=0.1)
        >>> phi = rule({"w": torch.zeros(3, 2)}, [torch.tensor([[1.0, -2.0]] * 3)], 0)
        >>> phi["w"][0]                    # first step from a fresh state: -lr · sign(g)
        tensor([-0.1000,  0.1000])
        >>> rule.keep(); int(rule.t)
        1
    """

    per_parameter = True

    def __init__(
        self,
        params: Mapping[str, Tensor],
        lr: float | Sequence[float],
        betas: Sequence[float] = (0.0, 0.999),
        eps: float = 1e-8,
        *,
        state: InnerAdam | None = None,
    ):
        super().__init__()
        lrs = [float(lr)] if isinstance(lr, (int, float)) else [float(a) for a in lr]
        if not lrs:
            raise ValueError("inner learning rate sequence is empty")
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0) or eps <= 0:
            raise ValueError(f"Adam needs 0 <= betas < 1 and eps > 0, got {betas}, {eps}")
        self.lrs, self.beta1, self.beta2, self.eps = lrs, beta1, beta2, float(eps)
        # the inner loop under way: each parameter's (m, v), the stored t and the steps taken
        self._run: dict[str, tuple[Tensor | None, Tensor]] = {}
        self._run_t = self._steps_run = 0
        if state is not None:  # a view of another rule's state (another step size)
            self.names, self._state = state.names, state
            return
        self._state = None
        self.names = list(params)
        self.register_buffer("t", torch.zeros((), dtype=torch.int64))
        for name, p in params.items():
            self.register_buffer(f"v_{_key(name)}", torch.zeros_like(p.detach()))
            if beta1 > 0:
                self.register_buffer(f"m_{_key(name)}", torch.zeros_like(p.detach()))

    @property
    def owner(self) -> InnerAdam:
        """The rule that holds the state buffers."""
        return self if self._state is None else self._state

    def moments(self, name: str) -> tuple[Tensor | None, Tensor]:
        """The stored (m, v) of parameter ``name`` (m is None where β₁ = 0)."""
        owner = self.owner
        return getattr(owner, f"m_{_key(name)}", None), getattr(owner, f"v_{_key(name)}")

    def step_size(self, name: str, step: int) -> float:
        return self.lrs[min(step, len(self.lrs) - 1)]

    def with_step_sizes(self, lr: float | Sequence[float]) -> InnerUpdate:
        return InnerAdam({}, lr, (self.beta1, self.beta2), self.eps, state=self.owner)

    def forward(self, params: Params, grads: Sequence[Tensor | None], step: int) -> Params:
        if step == 0:  # a new inner loop: every task starts from the stored state
            self._run = {n: self.moments(n) for n in params}
            self._run_t = int(self.owner.t)
        self._steps_run = step + 1
        t = self._run_t + step + 1
        scale = self.step_size("", step) * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        out = {}
        for (name, p), g in zip(params.items(), grads, strict=True):
            if g is None:
                out[name] = p
                continue
            m, v = self._run[name]
            v = torch.addcmul(v * self.beta2, g, g, value=1 - self.beta2)
            m = g if self.beta1 == 0 else torch.add(m * self.beta1, g, alpha=1 - self.beta1)
            self._run[name] = (None if self.beta1 == 0 else m, v)
            out[name] = torch.addcdiv(p, m, v.sqrt().add_(self.eps), value=-scale)
        return out

    def final_state(self) -> list[Tensor]:
        """The last inner loop's final state, averaged over its tasks: v (then m, where
        β₁ > 0) of every parameter in :attr:`names` order (what :meth:`keep` stores)."""
        out = []
        for name in self.names:
            stored = self.moments(name)
            for kept, now in zip(stored[::-1], self._run.get(name, stored)[::-1]):
                if kept is not None:  # a task axis once a step has run
                    now = now.detach()
                    out.append(now.mean(0) if now.dim() > kept.dim() else now)
        return out

    def keep(self, state: list[Tensor] | None = None) -> None:
        """Store ``state`` (default: :meth:`final_state`) as the state the next inner loop
        starts from, and advance t by the last loop's steps."""
        state = self.final_state() if state is None else state
        stored = [k for n in self.names for k in self.moments(n)[::-1] if k is not None]
        if len(state) != len(stored):
            raise ValueError(f"InnerAdam.keep: {len(stored)} state tensors, got {len(state)}")
        with torch.no_grad():
            for kept, value in zip(stored, state):
                kept.copy_(value)
            self.owner.t += self._steps_run
        self._steps_run = 0

    def extra_repr(self) -> str:
        return f"lrs={self.lrs}, betas=({self.beta1}, {self.beta2}), eps={self.eps}"
