"""Omniglot's meta-train / validation / test splits of character indices: MAML's (Finn
et al., 2017) and Lake et al.'s (2015)."""

from __future__ import annotations

import numpy as np

from mamlkit.data.errors import DataError
from mamlkit.data.omniglot_data import OmniglotData

__all__ = ["MAML_N_TRAIN", "omniglot_splits"]


#: Number of characters MAML (Finn et al., 2017) uses for meta-training; the rest is test.
MAML_N_TRAIN = 1200


def _carve_val(pool: np.ndarray, n_val: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Shuffle ``pool`` and move its last ``n_val`` entries to validation."""
    shuffled = rng.permutation(pool)
    cut = len(shuffled) - n_val
    return shuffled[:cut], shuffled[cut:]


def omniglot_splits(
    data: OmniglotData, scheme: str = "maml", seed: int = 0, n_val: int = 0
) -> dict[str, np.ndarray]:
    """Split character indices into ``"train"``, ``"val"`` (maybe empty) and ``"test"``.

    Schemes:

    * ``"maml"`` (Finn et al., 2017): shuffle all characters with
      ``np.random.default_rng(seed)``; the first 1200 are meta-train, the remaining 423 are
      test. The last ``n_val`` of the 1200 move to ``"val"``.
    * ``"lake"`` (Lake et al., 2015): train = background characters, test = evaluation
      characters; ``n_val`` background characters move to ``"val"`` by the same seeded rule.

    Each array is sorted int64, and the three are disjoint and cover every character.
    """
    n = len(data.characters)
    if isinstance(n_val, bool) or not isinstance(n_val, int | np.integer) or n_val < 0:
        raise DataError(f"n_val must be a non-negative integer, got {n_val!r}")
    rng = np.random.default_rng(seed)
    if scheme == "maml":
        if n <= MAML_N_TRAIN:
            raise DataError(
                f"the maml split needs more than {MAML_N_TRAIN} characters, the data has {n}"
            )
        perm = rng.permutation(n)
        pool, test = perm[:MAML_N_TRAIN], perm[MAML_N_TRAIN:]
        if n_val >= len(pool):
            raise DataError(
                f"n_val={n_val} must be below the {len(pool)} meta-train characters of the "
                "maml split"
            )
        cut = len(pool) - n_val
        train, val = pool[:cut], pool[cut:]
    elif scheme == "lake":
        indices = np.arange(n)
        pool, test = indices[data.background], indices[~data.background]
        if n_val >= len(pool):
            raise DataError(
                f"n_val={n_val} must be below the {len(pool)} background characters of the "
                "lake split"
            )
        train, val = _carve_val(pool, n_val, rng)
    else:
        raise DataError(f"unknown Omniglot split scheme {scheme!r}; use 'maml' or 'lake'")
    return {
        name: np.sort(np.asarray(part, dtype=np.int64))
        for name, part in (("train", train), ("val", val), ("test", test))
    }
