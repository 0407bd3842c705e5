"""The time split of one MAML-TRPO meta-iteration (:func:`meta_iteration_split`) and the
bare MuJoCo physics floor (:func:`physics_floor`), for ``benchmarks/rl_rollout.py``.

The split wraps the learner's pieces while one ``outer_step`` runs (nothing in the library
changes): each second is counted once, in the innermost timed phase that is open (a
baseline fit inside the inner step counts as a baseline fit), except that the line search
and the Fisher-vector products own everything they call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from unittest import mock

PHASES = (
    "pre_update_sampling",
    "inner_step",
    "post_update_sampling",
    "surrogate_and_gradient",
    "fisher_vector_products",
    "line_search",
    "baseline_fits",
    "other",
)


class _Clock:
    """Exclusive time per phase: a phase's time excludes the nested phases' time."""

    def __init__(self):
        self.total = dict.fromkeys(PHASES, 0.0)
        self.count = dict.fromkeys(PHASES, 0)
        self.stack: list[list] = []  # [phase, start, nested seconds]
        self.owner: str | None = None  # a phase that owns everything below it

    @contextmanager
    def phase(self, name: str, owns: bool = False):
        if self.owner is not None:  # inside the line search or a product: theirs
            yield
            return
        start = time.perf_counter()
        self.stack.append([name, start, 0.0])
        if owns:
            self.owner = name
        try:
            yield
        finally:
            if owns:
                self.owner = None
            _, start, nested = self.stack.pop()
            spent = time.perf_counter() - start
            self.total[name] += spent - nested
            self.count[name] += 1
            if self.stack:
                self.stack[-1][2] += spent

    def wrap(self, fn: Callable, name, owns: bool = False) -> Callable:
        def timed(*args, **kwargs):
            phase = name() if callable(name) else name
            with self.phase(phase, owns):
                return fn(*args, **kwargs)

        return timed


def meta_iteration_split(learner, batch) -> dict:
    """Seconds per phase of ``learner.outer_step(batch)`` (one MAMLTRPO meta-iteration)."""
    import mamlkit.rl.learner as learner_module
    import mamlkit.rl.returns as returns_module
    from mamlkit.rl.fisher_rop import RopGaussNewton

    clock = _Clock()
    samplings = [0]

    def sampling_phase() -> str:
        samplings[0] += 1
        return "pre_update_sampling" if samplings[0] == 1 else "post_update_sampling"

    trpo_step = learner_module.trpo_step

    def timed_trpo_step(params, loss, kl, evaluate, fisher_vector=None, **kwargs):
        evaluate = clock.wrap(evaluate, "line_search", owns=True)
        fisher_vector = clock.wrap(fisher_vector, "fisher_vector_products", owns=True)
        with clock.phase("surrogate_and_gradient"):
            return trpo_step(params, loss, kl, evaluate, fisher_vector=fisher_vector, **kwargs)

    def timed_fvp_builder(*args, **kwargs):  # building the products' graph
        with clock.phase("fisher_vector_products"):
            return build(*args, **kwargs)

    build = learner.fisher_vector_product
    patches = [
        mock.patch.object(learner, "sample", clock.wrap(learner.sample, sampling_phase)),
        mock.patch.object(learner, "adapt_on", clock.wrap(learner.adapt_on, "inner_step")),
        mock.patch.object(learner, "fisher_vector_product", timed_fvp_builder),
        mock.patch.object(learner_module, "trpo_step", timed_trpo_step),
        mock.patch.object(
            learner_module,
            "surrogate_and_kl",
            clock.wrap(learner_module.surrogate_and_kl, "surrogate_and_gradient"),
        ),
        mock.patch.object(  # fisher="rop": the surrogate and its gradient by hand
            RopGaussNewton,
            "surrogate",
            clock.wrap(RopGaussNewton.surrogate, "surrogate_and_gradient"),
        ),
        mock.patch.object(
            returns_module,
            "fit_linear_baseline",
            clock.wrap(returns_module.fit_linear_baseline, "baseline_fits"),
        ),
    ]
    with ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        start = time.perf_counter()
        with clock.phase("other"):
            learner.outer_step(batch, None, 0)
        total = time.perf_counter() - start
    seconds = {k: round(v, 4) for k, v in clock.total.items()}
    return {
        "total_s": round(total, 4),
        "seconds": seconds,
        "fisher_vector_products": clock.count["fisher_vector_products"] - 1,  # less the build
        "line_search_evaluations": clock.count["line_search"],
    }


def physics_floor(simulations: int, horizon: int, frame_skip: int, threads: int) -> float:
    """Environment steps/s of bare ``mujoco.rollout`` on half-cheetah: ``simulations``
    cheetahs, each environment step ``frame_skip`` physics steps with one fixed random
    action, stepped ``horizon`` times (one call per step, as the environment does, with
    its states copied in and out by the call and nothing else, on the simulator's kept
    thread pool)."""
    import numpy as np

    from mamlkit.rl.cheetah import _Simulator

    sim = _Simulator(threads)
    rng = np.random.default_rng(0)
    control = np.repeat(rng.uniform(-1, 1, (simulations, 1, 6)), frame_skip, axis=1)
    state = np.tile(sim.full_state(sim.init_qpos[None], sim.init_qvel[None]), (simulations, 1))
    start = time.perf_counter()
    for _ in range(horizon):
        state = sim.rollout(state, control, frame_skip)[:, -1]
    return simulations * horizon / (time.perf_counter() - start)


__all__ = ["PHASES", "meta_iteration_split", "physics_floor"]
