import os

import pytest
import torch

# Small tensors everywhere: one intra-op thread is faster and keeps runs reproducible.
torch.set_num_threads(1)

# Gradient tests run on every device this machine has: CI (CPU only) runs the "cpu" cases,
# and the same tests on a GPU machine add the "cuda" ones against the same CPU reference.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def data_root():
    """$MAMLKIT_DATA, or skip when it is unset (CI always sets it)."""
    root = os.environ.get("MAMLKIT_DATA")
    if not root:
        pytest.skip("MAMLKIT_DATA is not set")
    return root
