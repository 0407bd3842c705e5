import os

import pytest
import torch

# Small tensors everywhere: one intra-op thread is faster and keeps runs reproducible.
torch.set_num_threads(1)


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
