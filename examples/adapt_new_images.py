"""Adapt a trained image run to new classes from a few images each, in Python.

    python examples/adapt_new_images.py RUN_DIR SUPPORT_DIR QUERY_IMAGE... [--trust-code]

SUPPORT_DIR holds one folder per class with K images each (any size and format). The same
as ``mamlkit adapt RUN_DIR --support SUPPORT_DIR --query QUERY_IMAGE...``, written out with
the Python API: ``mamlkit.from_run`` loads the trained learner, the images are preprocessed
exactly as its training data, and ``predict_task`` adapts and predicts one task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import mamlkit
from mamlkit.adaptation import (
    ImagePreprocessing,
    check_output_width,
    read_images,
    read_support_folder,
)


def main(argv=None) -> list[tuple[str, str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("support", type=Path)
    parser.add_argument("queries", type=Path, nargs="+")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--trust-code", action="store_true")
    args = parser.parse_args(argv)

    learner = mamlkit.from_run(args.run_dir, trust_code=args.trust_code)
    prepare = ImagePreprocessing(learner.config)
    support_x, support_y, classes = read_support_folder(args.support, prepare)
    query_x = read_images(args.queries, prepare)
    # a head of fixed width (MAML, Meta-SGD, ...) needs as many classes as it was trained on
    check_output_width(learner, support_x, support_y, classes, args.run_dir)
    steps = learner.config.eval.steps if args.steps is None else args.steps
    with torch.inference_mode():
        probabilities = learner.predict_task(support_x, support_y, query_x, steps).softmax(-1)
    rows = []
    for path, p in zip(args.queries, probabilities):
        best = int(p.argmax())
        rows.append((str(path), classes[best], float(p[best])))
        print(f"{path}: {classes[best]} ({float(p[best]):.0%})")
    return rows


if __name__ == "__main__":
    main()
