"""What each hand-written derivative in ``mamlkit.models.ops`` saves: the second-order MAML
meta-iteration of benchmarks/meta_iteration.py, with one piece at a time replaced by the
plain PyTorch op and autograd's own derivatives. Prints one JSON line.

    python benchmarks/ops_ablation.py [--workload omniglot-5w1s|omniglot-20w1s] [--iters 15]
        [--warmup 2] [--threads 2] [--variants relu,batch_norm,...]

Variants (the swaps are monkeypatches of ``mamlkit.models.ops``, which ``Conv4`` looks up
at every call; the library itself is unchanged):

* ``relu``: ``ops.relu`` -> ``torch.relu``
* ``batch_norm``: ``ops.batch_norm`` -> ``F.batch_norm(x, None, None, w, b, training=True)``
* ``task_conv2d``: ``ops.task_conv2d`` -> ``F.conv2d(..., groups=T)`` with the weights
  reshaped (neither the shared-θ dense path nor the hand-written convolution derivatives)
* ``shared_off``: only the shared-θ dense path off (``_SharedConv``); grouped convolution
  with the hand-written derivatives
* ``conv_derivatives``: ``_Conv``/``_ConvInputGrad``/``_ConvWeightGrad`` -> ``F.conv2d`` and
  ``aten.convolution_backward`` with autograd's derivatives (the dense path stays, its
  per-task weight gradient becomes aten's)
* ``unfolded``: ``Conv4(fold_batch_norm=False)``: no first-layer conv+BatchNorm product
  (``image_patches``/``task_conv_batch_norm``), convolution biases not skipped
* ``pure_aten``: ``relu``, ``batch_norm``, ``task_conv2d`` and ``unfolded`` at once

Before timing, every variant's float64 meta-gradient (a small Conv4, two inner steps, so
both the shared and the per-task convolutions run) must equal the default's to a relative
1e-9, and each replacement must have been called; otherwise the script exits non-zero.

Timing: all variants in one process, one iteration each per round (the order reverses
every other round, so no variant always follows the same one); the paired difference to
the default is taken within each round, which on a shared machine is steadier than the
variants' own times. ``gain`` is (variant − default) / variant per round: the share of the
plain-op variant's time that the hand-written piece saves. Where other jobs keep the cores
busy, also run ``--threads 1``: two threads then spend most of their time waiting for each
other (docs/results.md, "Hand-written derivatives, one at a time").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from unittest import mock

import torch
import torch.nn.functional as F
from meta_iteration import WORKLOADS, make, tune_allocator

from mamlkit import MAML
from mamlkit.models import Conv4
from mamlkit.models import conv as conv_module

ops = conv_module.ops  # the module object conv.py reads its layers from at call time
CHECK_TOLERANCE = 1e-9


# ------------------------------------------------------------------ the plain equivalents


def _aten_batch_norm(x, weight, bias, eps=1e-5):
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)


def _aten_task_conv2d(x, weight, bias, stride=1, padding=0):
    tasks = weight.shape[0]
    flat_bias = None if bias is None else bias.reshape(-1)
    return F.conv2d(x, weight.reshape(-1, *weight.shape[2:]), flat_bias, stride, padding, 1, tasks)


def _grouped_task_conv2d(x, weight, bias, stride=1, padding=0):
    """``ops.task_conv2d`` without its shared-θ branch: always the grouped ``ops.conv2d``."""
    tasks = weight.shape[0]
    flat_bias = None if bias is None else bias.reshape(-1)
    return ops.conv2d(
        x, weight.reshape(-1, *weight.shape[2:]), flat_bias, stride, padding, groups=tasks
    )


class _AtenConv:
    """Stands in for ``ops._Conv``: the same call, autograd's derivatives."""

    @staticmethod
    def apply(x, w, b, stride, padding, groups):
        return F.conv2d(x, w, b, stride, padding, 1, groups)


class _AtenConvInputGrad:
    """Stands in for ``ops._ConvInputGrad``: ``aten.convolution_backward``, whose own
    derivative (``_convolution_double_backward``) autograd then uses."""

    @staticmethod
    def apply(g, w, x_shape, stride, padding, groups):
        return ops._conv_input_grad(g, w, x_shape, stride, padding, groups)


class _AtenConvWeightGrad:
    """Stands in for ``ops._ConvWeightGrad``, as :class:`_AtenConvInputGrad`."""

    @staticmethod
    def apply(x, g, w_shape, stride, padding, groups):
        return ops._conv_weight_grad(x, g, w_shape, stride, padding, groups)


@dataclass
class Variant:
    replaces: str
    patches: dict = field(default_factory=dict)  # name in ops -> replacement
    fold: bool = True
    unreached: tuple[str, ...] = ()  # patched names the check does not require to be called


_CONV_CLASSES = {
    "_Conv": _AtenConv,
    "_ConvInputGrad": _AtenConvInputGrad,
    "_ConvWeightGrad": _AtenConvWeightGrad,
}
def _plain_relu(x, slope=0.0):
    """``ops.relu``'s signature on torch's own ReLU / leaky ReLU (autograd's derivatives)."""
    return F.leaky_relu(x, slope) if slope else torch.relu(x)


VARIANTS = {
    "default": Variant("nothing (the library as it is)"),
    "relu": Variant("ops.relu -> torch.relu", {"relu": _plain_relu}),
    "batch_norm": Variant("ops.batch_norm -> F.batch_norm", {"batch_norm": _aten_batch_norm}),
    "task_conv2d": Variant(
        "ops.task_conv2d -> grouped F.conv2d", {"task_conv2d": _aten_task_conv2d}
    ),
    "shared_off": Variant(
        "_SharedConv off (grouped ops.conv2d, hand-written derivatives)",
        {"task_conv2d": _grouped_task_conv2d},
    ),
    "conv_derivatives": Variant(
        "_Conv/_ConvInputGrad/_ConvWeightGrad -> F.conv2d / aten.convolution_backward",
        _CONV_CLASSES,
        # only the backward of _Conv and _ConvWeightGrad calls it (the dense path has its own
        # input gradient), and both are replaced: patched so that nothing reaches the original
        unreached=("_ConvInputGrad",),
    ),
    "unfolded": Variant("fold_batch_norm=False", fold=False),
    "pure_aten": Variant(
        "relu + batch_norm + task_conv2d + unfolded",
        {"relu": _plain_relu, "batch_norm": _aten_batch_norm, "task_conv2d": _aten_task_conv2d},
        fold=False,
    ),
}


def _counted(obj, calls: collections.Counter, name: str):
    """``obj`` (a function, or a class used through ``apply``) that counts its calls."""
    fn = obj.apply if isinstance(obj, type) else obj

    def wrapper(*args, **kwargs):
        calls[name] += 1
        return fn(*args, **kwargs)

    return type(name, (), {"apply": staticmethod(wrapper)}) if isinstance(obj, type) else wrapper


@contextlib.contextmanager
def applied(variant: Variant, model: Conv4, calls: collections.Counter | None = None):
    with contextlib.ExitStack() as stack:
        for name, new in variant.patches.items():
            if calls is not None:
                new = _counted(new, calls, name)
            stack.enter_context(mock.patch.object(ops, name, new))
        if calls is not None and "task_conv_batch_norm" not in variant.patches:
            # to show that `unfolded` really leaves the folded first layer
            stack.enter_context(
                mock.patch.object(
                    ops,
                    "task_conv_batch_norm",
                    _counted(ops.task_conv_batch_norm, calls, "task_conv_batch_norm"),
                )
            )
        model.fold_batch_norm = variant.fold
        try:
            yield
        finally:
            model.fold_batch_norm = True


# ------------------------------------------------------------------------ the float64 check


def check_variants() -> dict:
    """Each variant's float64 meta-gradient against the default's; raises if one differs
    or a replacement was never called (a patch that did not take effect)."""
    tasks, ways, steps = 3, 5, 2
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Conv4(out_features=ways, filters=8, image_size=28, pooling="stride").double()
    xs = torch.rand(tasks, ways, 1, 28, 28, generator=gen, dtype=torch.float64)
    xq = torch.rand(tasks, ways, 1, 28, 28, generator=gen, dtype=torch.float64)
    ys = torch.arange(ways).expand(tasks, -1).contiguous()
    learner = MAML(model, F.cross_entropy, 0.4, inner_steps=steps, impl="batched")

    def meta_gradient(variant: Variant, calls):
        model.zero_grad(set_to_none=True)
        with applied(variant, model, calls):
            learner.meta_loss(xs, ys, xq, ys).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    reference = meta_gradient(VARIANTS["default"], None)
    errors, calls_per_variant = {}, {}
    for name, variant in VARIANTS.items():
        if name == "default":
            continue
        calls: collections.Counter = collections.Counter()
        grad = meta_gradient(variant, calls)
        errors[name] = float((grad - reference).norm() / reference.norm())
        calls_per_variant[name] = dict(calls)
        missing = [n for n in variant.patches if not calls[n] and n not in variant.unreached]
        folded_ran = calls["task_conv_batch_norm"] > 0
        if errors[name] > CHECK_TOLERANCE or missing or folded_ran != variant.fold:
            raise SystemExit(
                f"variant {name!r} failed the float64 check: rel. error {errors[name]:.3g}, "
                f"replacements never called {missing}, folded first layer ran {folded_ran}"
            )
    return {
        "passed": True,
        "dtype": "float64",
        "tasks": tasks,
        "inner_steps": steps,
        "filters": 8,
        "tolerance": CHECK_TOLERANCE,
        "rel_error": errors,
        "calls": calls_per_variant,
    }


# ----------------------------------------------------------------------------------- timing


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def time_variants(
    workload: str, names: list[str], warmup: int, iters: int
) -> dict[str, list[float]]:
    learner, step = make(workload, "auto", False, "cpu")
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + iters):
        for name in names if i % 2 == 0 else names[::-1]:
            with applied(VARIANTS[name], learner.model):
                t0 = time.perf_counter()
                step()
                elapsed = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(elapsed)
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    base = times["default"]
    out = {}
    for name, t in times.items():
        entry = {
            "replaces": VARIANTS[name].replaces,
            "ms_median": round(statistics.median(t) * 1e3, 2),
            "ms_p10": round(_pct(t, 0.1) * 1e3, 2),
        }
        if name != "default":
            diff = [(v - d) * 1e3 for v, d in zip(t, base, strict=True)]
            gain = [(v - d) / v for v, d in zip(t, base, strict=True)]
            entry |= {
                "diff_ms_median": round(statistics.median(diff), 2),
                "diff_ms_p10": round(_pct(diff, 0.1), 2),
                "diff_ms_p90": round(_pct(diff, 0.9), 2),
                "gain_median": round(statistics.median(gain), 3),
                "gain_p10": round(_pct(gain, 0.1), 3),
                "gain_p90": round(_pct(gain, 0.9), 3),
                # the hand-written piece is faster (slower) in at least 90% of the rounds
                "resolved": _pct(diff, 0.1) > 0 or _pct(diff, 0.9) < 0,
            }
        out[name] = entry
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workload", choices=["omniglot-5w1s", "omniglot-20w1s"], default="omniglot-5w1s"
    )
    p.add_argument("--iters", type=int, default=15, help="timed rounds (one iteration per variant)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated variants to time (default: all; the default is always timed, "
        "and the float64 check always covers all)",
    )
    args = p.parse_args()
    names = ["default"] + [n for n in args.variants.split(",") if n and n != "default"]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    allocator_tuned = tune_allocator()
    torch.set_num_threads(args.threads)
    check = check_variants()
    times = time_variants(args.workload, names, args.warmup, args.iters)
    print(
        json.dumps(
            {
                "benchmark": "ops_ablation",
                "workload": args.workload,
                "workload_config": WORKLOADS[args.workload],
                "second_order": True,
                "iters": args.iters,
                "warmup": args.warmup,
                "order": "round-robin, reversed every other round",
                "check": check,
                "variants": summarise(times),
                "threads": torch.get_num_threads(),
                "allocator_tuned": allocator_tuned,
                "torch": torch.__version__,
                "platform": platform.platform(),
                "cpu": platform.processor() or platform.machine(),
                "cpu_model": _cpu_model(),
            }
        )
    )


if __name__ == "__main__":
    main()
