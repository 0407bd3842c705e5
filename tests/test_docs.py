"""The Examples in public docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = [
    "mamlkit",
    "mamlkit.algorithms.maml",
    "mamlkit.algorithms.metasgd",
    "mamlkit.algorithms.anil",
    "mamlkit.algorithms.mamlpp",
    "mamlkit.algorithms.reptile",
    "mamlkit.device_step",
    "mamlkit.models.pool",
    "mamlkit.ensemble",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    torch.manual_seed(0)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
