"""Meta-learn your own regression tasks with your own network, then adapt to a new task.

    python examples/custom_regression.py [--iterations 2000]

The tasks are quadratics y = a·x² + b·x + c with random coefficients; the network is a
small MLP written here. Any ``nn.Module`` and any task sampler that returns a
:class:`mamlkit.TaskBatch` ([tasks, examples, ...] tensors) work the same way.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from mamlkit import MAML, TaskBatch


class QuadraticTasks:
    """Each task: y = a·x² + b·x + c, a, b, c ~ U[-1, 1], x ~ U[-2, 2]."""

    def __init__(self, k_support: int = 10, k_query: int = 10):
        self.k_support, self.k_query = k_support, k_query

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        coef = torch.rand(tasks, 1, 3, generator=generator) * 2 - 1
        x = torch.rand(tasks, self.k_support + self.k_query, 1, generator=generator) * 4 - 2
        y = coef[..., :1] * x**2 + coef[..., 1:2] * x + coef[..., 2:]
        k = self.k_support
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], info={"coef": coef})


class SmallMLP(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    learner = MAML(SmallMLP(), F.mse_loss, inner_lr=0.05, inner_steps=1)
    print(f"tasks run through the model with impl={learner.impl}")
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    tasks, generator = QuadraticTasks(), torch.Generator().manual_seed(0)
    for step in range(1, args.iterations + 1):
        optimizer.zero_grad()
        loss = learner.meta_loss(*tasks.sample(16, generator))
        loss.backward()
        optimizer.step()
        if step % 500 == 0 or step == args.iterations:
            print(f"iteration {step}: query MSE after one step {loss.item():.4f}")

    # A new task, without the task axis: 10 points of y = 0.5x² - x + 0.2.
    xs = torch.linspace(-2, 2, 10).unsqueeze(1)
    ys = 0.5 * xs**2 - xs + 0.2
    xq = torch.linspace(-2, 2, 50).unsqueeze(1)
    with torch.no_grad():
        before = F.mse_loss(learner.predict_task(xs, ys, xq, steps=0), 0.5 * xq**2 - xq + 0.2)
        after = F.mse_loss(learner.predict_task(xs, ys, xq, steps=5), 0.5 * xq**2 - xq + 0.2)
    print(f"new task: MSE {before.item():.4f} before, {after.item():.4f} after 5 steps")
    return after.item()


if __name__ == "__main__":
    main()
