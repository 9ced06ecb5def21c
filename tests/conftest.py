"""Test tiers: CPU tests by default; tests marked `gpu` skip on CPU with a reason and run on
the lent H100 (see README, "Running on a GPU")."""

import kernels  # sets TRITON_INTERPRET before triton is imported
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run on the lent H100 (tools/gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def needs_triton():
    if not kernels.device.HAS_TRITON:
        pytest.skip("triton is not installed on this platform (no wheel)")
