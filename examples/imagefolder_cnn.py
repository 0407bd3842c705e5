"""Meta-train your own CNN (with BatchNorm) on your own folder of class folders.

    python examples/imagefolder_cnn.py --data /path/to/classes --out runs/mine
    mamlkit eval runs/mine --trust-code            # run from examples/ (imports my_models)

Without --data a small synthetic folder is written first (coloured shapes), so the script
runs anywhere. The config names the network by import path, so the run's config.yaml
rebuilds it for ``mamlkit eval`` and ``mamlkit adapt``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from mamlkit import load_config
from mamlkit.runner import eval_run, train_run


def write_shapes(root: Path, classes: int = 25, per_class: int = 6, size: int = 32) -> Path:
    """Class c: a square of colour c at position c; a little noise per image."""
    for c in range(classes):
        folder = root / f"shape_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([(c * 53) % 256, (c * 97) % 256, (c * 151) % 256], dtype=np.uint8)
        for j in range(per_class):
            rng = np.random.default_rng(100 * c + j)
            pixels = rng.integers(0, 50, (size, size, 3), dtype=np.uint8)
            r, k = divmod(c % 9, 3)
            s = size // 3
            pixels[r * s : (r + 1) * s, k * s : (k + 1) * s] = colour
            Image.fromarray(pixels).save(folder / f"{j}.png")
    return root


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="Folder of class folders.")
    parser.add_argument("--out", type=Path, default=Path("runs/imagefolder_cnn"))
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=28)
    args = parser.parse_args(argv)
    data = args.data or write_shapes(Path(tempfile.mkdtemp()) / "shapes")
    config = load_config(
        {
            "task": {
                "name": "imagefolder",
                "data_dir": str(data),
                "ways": 5,
                "shots": 1,
                "queries": 1,
                "image_size": args.image_size,
                "channels": 3,
            },
            "model": {
                "target": "my_models:SmallCNN",
                "kwargs": {"ways": 5, "channels": 3, "image_size": args.image_size},
            },
            "algorithm": {"name": "maml", "inner_lr": 0.4, "inner_steps": 1},
            "train": {
                "iterations": args.iterations,
                "meta_batch": 4,
                "log_every": 50,
                "checkpoint_every": max(1, args.iterations),
                "tensorboard": False,
            },
            "eval": {"tasks": 20, "steps": 3},
        }
    )
    summary = train_run(config, args.out, progress=False)
    print(f"trained: {json.dumps(summary)}")
    result = eval_run(args.out, trust_code=True)  # my_models is our own code
    print(f"test tasks: accuracy {result['accuracy']:.1f}% ± {result['ci95']:.1f}")
    return result


if __name__ == "__main__":
    main()
