"""How far a float32 meta-gradient is from the float64 one, for the batched Conv4 path with
BatchNorm folding (``Conv4(fold_batch_norm=True)``, the default) and without. Prints one JSON
line.

    python benchmarks/float32_error.py [--tasks 32] [--ways 5] [--seed 0]

Inputs are uniform in [0, 1], like Omniglot pixels (all positive). The float32 error varies
with the seed by orders of magnitude (docs/results.md); ``rel_diff_float64_folded_unfolded``
compares the two paths in float64, where only rounding separates them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mamlkit import MAML  # noqa: E402
from mamlkit.models import Conv4  # noqa: E402


def meta_gradient(model, xs, ys, xq, yq, dtype, fold: bool) -> torch.Tensor:
    model = model.to(dtype)
    model.fold_batch_norm = fold
    learner = MAML(model, F.cross_entropy, 0.4, inner_steps=1, impl="batched")
    model.zero_grad(set_to_none=True)
    learner.meta_loss(xs.to(dtype), ys, xq.to(dtype), yq).backward()
    return torch.cat([p.grad.double().flatten() for p in model.parameters()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    model = Conv4(out_features=args.ways, filters=64, image_size=28)
    xs = torch.rand(args.tasks, args.ways, 1, 28, 28)
    xq = torch.rand(args.tasks, args.ways, 1, 28, 28)
    ys = torch.arange(args.ways).expand(args.tasks, -1)
    reference = meta_gradient(model, xs, ys, xq, ys, torch.float64, fold=False)

    def rel(g):
        return float((g - reference).norm() / reference.norm())

    folded64 = meta_gradient(model, xs, ys, xq, ys, torch.float64, fold=True)
    out = {
        "tasks": args.tasks,
        "ways": args.ways,
        "seed": args.seed,
        "rel_error_folded": rel(meta_gradient(model, xs, ys, xq, ys, torch.float32, fold=True)),
        "rel_error_unfolded": rel(meta_gradient(model, xs, ys, xq, ys, torch.float32, fold=False)),
        "rel_diff_float64_folded_unfolded": rel(folded64),
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
