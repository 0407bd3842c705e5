"""Time one full second-order MAML meta-iteration (inner loop, query loss, outer backward,
Adam step) after warm-up. Prints one JSON line.

    python benchmarks/meta_iteration.py \
        --workload sine|omniglot-5w1s|omniglot-20w1s|miniimagenet-5w1s|omniglot-5w1s-resnet12 \
        [--impl auto|batched|vmap|loop|learn2learn-loop] [--iters N] [--threads N] [--first-order]
        [--algorithm maml|metasgd|anil|mamlpp|reptile]
    python benchmarks/meta_iteration.py --workload protonet-omniglot-60w1s[-resnet12] \
        [--no-channels-last]

``protonet-omniglot-60w1s`` times a Prototypical Networks training iteration instead (one
60-way episode, 1 shot + 5 queries per class, Conv4 with max-pooling, as the ProtoNets
5-way 1-shot preset trains).

The ``*-resnet12`` workloads run ResNet-12 (``mamlkit.models.ResNet12``, channels
64-160-320-640 unless ``--channels`` gives four others, e.g. ``--channels 8,8,8,8`` for a
smoke run) instead of Conv4 on the same episodes; ``omniglot-5w1s-resnet12`` takes 8 tasks
per meta-batch, not 32 (a full-width ResNet-12 is ~100× Conv4's work per image).

``--paired-unfolded`` (Conv4 workloads) times the same learner with Conv4's BatchNorm
folding (the default) and without (``fold_batch_norm=False``), alternating iteration by
iteration in one process, and adds both times and their paired difference: on a noisy
machine that difference is steadier than two separate runs.

``--cuda-graphs`` (CUDA) times the training step as ``mamlkit train`` runs it on a GPU: the
whole iteration captured once as a CUDA graph and replayed (mamlkit.device_step), the task
batch copied into its input buffers each iteration. ``--precision tf32`` lets CUDA
convolutions and matmuls use TensorFloat-32 (default: full float32).

``learn2learn-loop`` is not mamlkit's engine but the usual hand-written baseline: one task at
a time, adapt with ``autograd.grad(create_graph=True)``, backward the task's query loss
(accumulating into ``.grad``), as learn2learn's MAML examples do.

Random inputs: timing does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mamlkit import MAML  # noqa: E402
from mamlkit.algorithms import ALGORITHMS  # noqa: E402
from mamlkit.algorithms.protonet import PrototypicalNetwork  # noqa: E402
from mamlkit.device_step import DeviceStep  # noqa: E402
from mamlkit.models import MLP, Conv4, ResNet12  # noqa: E402
from mamlkit.precision import cuda_precision  # noqa: E402
from mamlkit.system import tune_allocator  # noqa: E402
from mamlkit.tasks.base import TaskBatch  # noqa: E402

WORKLOADS = {
    # name: (model, loss, tasks, support, query, input shape, classes, inner steps, α)
    "sine": dict(tasks=25, support=10, query=10, steps=1, lr=0.01),
    "omniglot-5w1s": dict(tasks=32, ways=5, shots=1, queries=1, steps=1, lr=0.4),
    "omniglot-20w1s": dict(tasks=16, ways=20, shots=1, queries=1, steps=5, lr=0.1),
    # the paper's MiniImagenet 5-way 1-shot: 4 tasks, 15 queries per class, 5 steps, 32
    # filters, max-pooling, 84×84 colour images
    "miniimagenet-5w1s": dict(tasks=4, ways=5, shots=1, queries=15, steps=5, lr=0.01),
    "protonet-omniglot-60w1s": dict(tasks=1, ways=60, shots=1, queries=5),
    "omniglot-5w1s-resnet12": dict(tasks=8, ways=5, shots=1, queries=1, steps=1, lr=0.4),
    "protonet-omniglot-60w1s-resnet12": dict(tasks=1, ways=60, shots=1, queries=5),
}
RESNET12_CHANNELS = (64, 160, 320, 640)


def image_model(workload: str, out_features: int, channels, size: int, resnet_channels):
    """The workload's network: ResNet-12 for ``*-resnet12``, else Conv4 (max-pooling for
    MiniImagenet and ProtoNets, stride-2 convolutions for MAML's Omniglot)."""
    if workload.endswith("-resnet12"):
        return ResNet12(
            out_features,
            channels,
            resnet_channels,
            bn_running_stats=workload.startswith("protonet"),
        )
    if workload.startswith("miniimagenet"):
        return Conv4(out_features, channels, filters=32, image_size=size, pooling="max")
    if workload.startswith("protonet"):
        return Conv4(out_features, filters=64, pooling="max", bn_running_stats=True)
    return Conv4(out_features, filters=64, image_size=size, pooling="stride")


def make_protonet(
    workload: str, channels_last: bool, device: str, resnet_channels=RESNET12_CHANNELS
):
    w = WORKLOADS[workload]
    gen = torch.Generator(device=device).manual_seed(0)
    model = image_model(workload, 0, 1, 28, resnet_channels)
    learner = PrototypicalNetwork(model.to(device), channels_last=channels_last)
    xs = torch.rand(1, w["ways"] * w["shots"], 1, 28, 28, generator=gen, device=device)
    xq = torch.rand(1, w["ways"] * w["queries"], 1, 28, 28, generator=gen, device=device)
    ys = torch.arange(w["ways"], device=device).repeat_interleave(w["shots"]).unsqueeze(0)
    yq = torch.arange(w["ways"], device=device).repeat_interleave(w["queries"]).unsqueeze(0)
    opt = torch.optim.Adam(learner.parameters(), 1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        learner.meta_loss(xs, ys, xq, yq).backward()
        opt.step()

    return learner, step


def make(
    workload: str,
    impl: str,
    first_order: bool,
    device: str,
    cuda_graphs: bool = False,
    algorithm: str = "maml",
    resnet_channels=RESNET12_CHANNELS,
):
    w = WORKLOADS[workload]
    gen = torch.Generator(device=device).manual_seed(0)
    if workload == "sine":
        model = MLP((1, 40, 40, 1))
        xs = torch.rand(w["tasks"], w["support"], 1, generator=gen, device=device) * 10 - 5
        xq = torch.rand(w["tasks"], w["query"], 1, generator=gen, device=device) * 10 - 5
        ys, yq = torch.sin(xs), torch.sin(xq)
        loss = F.mse_loss
    else:
        channels, size = (3, 84) if workload.startswith("miniimagenet") else (1, 28)
        model = image_model(workload, w["ways"], channels, size, resnet_channels)
        n_s, n_q = w["ways"] * w["shots"], w["ways"] * w["queries"]
        xs = torch.rand(w["tasks"], n_s, channels, size, size, generator=gen, device=device)
        xq = torch.rand(w["tasks"], n_q, channels, size, size, generator=gen, device=device)
        ys = (
            torch.arange(w["ways"], device=device)
            .repeat_interleave(w["shots"])
            .expand(w["tasks"], -1)
        )
        yq = (
            torch.arange(w["ways"], device=device)
            .repeat_interleave(w["queries"])
            .expand(w["tasks"], -1)
        )
        loss = F.cross_entropy
    cls = ALGORITHMS[algorithm].cls if impl != "learn2learn-loop" else MAML
    learner = cls(
        model.to(device),
        loss,
        w["lr"],
        w["steps"],
        first_order=first_order,
        impl="loop" if impl == "learn2learn-loop" else impl,
    )
    try:
        opt = torch.optim.Adam(learner.parameters(), 1e-3, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(learner.parameters(), 1e-3, foreach=True)

    def step():
        opt.zero_grad(set_to_none=True)
        learner.meta_loss(xs, ys, xq, yq).backward()
        opt.step()

    def own_outer_step():  # Reptile: the learner's own update, no optimiser
        learner.outer_step(TaskBatch(xs, ys, xq, yq), opt, 0)

    def learn2learn_step():
        opt.zero_grad(set_to_none=True)
        theta = dict(model.named_parameters())
        for t in range(xs.shape[0]):
            phi = theta
            for _ in range(w["steps"]):
                support = loss(functional_call(model, phi, (xs[t],)), ys[t])
                grads = torch.autograd.grad(
                    support, list(phi.values()), create_graph=not first_order
                )
                phi = {n: p - w["lr"] * g for (n, p), g in zip(phi.items(), grads)}
            (loss(functional_call(model, phi, (xq[t],)), yq[t]) / xs.shape[0]).backward()
        opt.step()

    if impl == "learn2learn-loop":
        return learner, learn2learn_step
    if algorithm == "reptile":
        return learner, own_outer_step
    if cuda_graphs:
        captured = DeviceStep(learner, opt, None, capture=True)
        batch = TaskBatch(xs, ys, xq, yq)
        return learner, lambda: captured(batch)
    return learner, step


def _ms(times: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(times) * 1e3, 3),
        "p10": round(sorted(times)[len(times) // 10] * 1e3, 3),
    }


def _paired_unfolded(model, step, sync, warmup: int, iters: int):
    """Alternate folded/unfolded iterations (the order flips every pair)."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(warmup + iters):
        for fold in (True, False) if i % 2 == 0 else (False, True):
            model.fold_batch_norm = fold
            t0 = time.perf_counter()
            step()
            sync()
            if i >= warmup:
                times[fold].append(time.perf_counter() - t0)
    model.fold_batch_norm = True
    diff = [u - f for f, u in zip(times[True], times[False], strict=True)]
    unfolded, saved = _ms(times[False]), _ms(diff)
    return times[True], {
        "unfolded_ms_per_iter_median": unfolded["median"],
        "unfolded_ms_per_iter_p10": unfolded["p10"],
        "unfolded_minus_folded_ms_median": saved["median"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="sine")
    p.add_argument(
        "--impl", choices=["auto", "batched", "vmap", "loop", "learn2learn-loop"], default="auto"
    )
    p.add_argument("--iters", type=int, default=None, help="timed iterations")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--first-order", action="store_true")
    p.add_argument(
        "--cuda-graphs", action="store_true", help="MAML workloads on CUDA: the captured step"
    )
    p.add_argument("--precision", choices=["fp32", "tf32"], default="fp32")
    p.add_argument(
        "--algorithm",
        choices=["maml", "metasgd", "anil", "mamlpp", "reptile"],
        default="maml",
        help="MAML-family workloads: which algorithm's meta-iteration (default maml)",
    )
    p.add_argument(
        "--no-channels-last",
        action="store_true",
        help="protonet workload: keep the convolution weights in the default layout",
    )
    p.add_argument(
        "--paired-unfolded",
        action="store_true",
        help="Conv4 workloads: alternate with Conv4(fold_batch_norm=False), report both",
    )
    p.add_argument(
        "--channels",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=RESNET12_CHANNELS,
        help="*-resnet12 workloads: the four blocks' channels (default 64,160,320,640)",
    )
    p.add_argument(
        "--no-tune-allocator",
        action="store_true",
        help="leave glibc's malloc thresholds at their defaults",
    )
    args = p.parse_args()
    allocator_tuned = False if args.no_tune_allocator else tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    iters = args.iters or (2000 if args.workload == "sine" else 30)
    warmup = args.warmup if args.warmup is not None else max(5, iters // 10)
    protonet = args.workload.startswith("protonet")
    if len(args.channels) != 4 or min(args.channels) < 1:
        p.error(f"--channels needs four positive channel counts, got {args.channels}")
    if args.cuda_graphs and (protonet or not args.device.startswith("cuda")):
        p.error("--cuda-graphs needs --device cuda and a MAML workload")
    if protonet:
        learner, step = make_protonet(
            args.workload, not args.no_channels_last, args.device, args.channels
        )
    else:
        learner, step = make(
            args.workload,
            args.impl,
            args.first_order,
            args.device,
            args.cuda_graphs,
            args.algorithm,
            args.channels,
        )
    with cuda_precision(args.precision):
        times, paired = _time(args, p, learner, step, warmup, iters)
    print(
        json.dumps(
            {
                "workload": args.workload,
                "impl": "protonet"
                if protonet
                else "learn2learn-loop"
                if args.impl == "learn2learn-loop"
                else learner.impl,
                "algorithm": "protonet" if protonet else args.algorithm,
                "first_order": args.first_order,
                "cuda_graphs": args.cuda_graphs,
                "precision": args.precision,
                "channels_last": protonet and not args.no_channels_last,
                "model": type(learner.model).__name__,
                "resnet12_channels": list(args.channels)
                if args.workload.endswith("-resnet12")
                else None,
                "ms_per_iter_median": round(statistics.median(times) * 1e3, 3),
                "ms_per_iter_p10": round(sorted(times)[len(times) // 10] * 1e3, 3),
                "iters": iters,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if args.device.startswith("cuda")
                else None,
                **paired,
                "threads": torch.get_num_threads(),
                "allocator_tuned": allocator_tuned,
                "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "cpu": platform.processor() or platform.machine(),
            }
        )
    )


def _time(args, p, learner, step, warmup: int, iters: int):
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    paired = {}
    if args.paired_unfolded:
        if not hasattr(learner.model, "fold_batch_norm"):
            p.error("--paired-unfolded needs a Conv4 workload (omniglot-*, miniimagenet-*)")
        times, paired = _paired_unfolded(learner.model, step, sync, warmup, iters)
    else:
        for _ in range(warmup):
            step()
        sync()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        # as training runs: no sync between iterations, so the host queues the next one
        # while the device works (the median above waits for each iteration)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        paired["ms_per_iter_unsynced"] = round((time.perf_counter() - t0) / iters * 1e3, 3)
    return times, paired


if __name__ == "__main__":
    main()
