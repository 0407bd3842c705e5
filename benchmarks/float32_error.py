"""How far a float32 meta-gradient is from the float64 one, for the batched Conv4 path with
the first convolution and its BatchNorm folded (images as input, the default) and with the
plain layers (the same images marked as needing a gradient). Prints one JSON line.

    python benchmarks/float32_error.py [--tasks 32] [--ways 5] [--seed 0]

Inputs are uniform in [0, 1], like Omniglot pixels (all positive). The error varies with the
seed: besides rounding, a ReLU input close to 0 can land on different sides in the two
dtypes, which changes the gradient by more than rounding would (docs/results.md).
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


def meta_gradient(model, xs, ys, xq, yq, dtype, input_grad: bool) -> torch.Tensor:
    model = model.to(dtype)
    xs, xq = xs.to(dtype), xq.to(dtype)
    if input_grad:
        xs, xq = xs.requires_grad_(), xq.requires_grad_()
    learner = MAML(model, F.cross_entropy, 0.4, inner_steps=1, impl="batched")
    model.zero_grad(set_to_none=True)
    learner.meta_loss(xs, ys, xq, yq).backward()
    # the first convolution's bias has an exactly zero gradient (BatchNorm follows it)
    return torch.cat(
        [p.grad.double().flatten() for n, p in model.named_parameters() if n != "features.0.bias"]
    )


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
    reference = meta_gradient(model, xs, ys, xq, ys, torch.float64, input_grad=False)

    def rel(g):
        return float((g - reference).norm() / reference.norm())

    out = {
        "tasks": args.tasks,
        "ways": args.ways,
        "seed": args.seed,
        "rel_error_folded_first_layer": rel(
            meta_gradient(model, xs, ys, xq, ys, torch.float32, input_grad=False)
        ),
        "rel_error_plain_layers": rel(
            meta_gradient(model, xs, ys, xq, ys, torch.float32, input_grad=True)
        ),
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
