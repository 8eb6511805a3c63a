"""Every test uses one torch thread (and so do the processes tests start): on a 2-core CI
machine two threads per test fight the other processes for the cores."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """The digits benchmark's data (scikit-learn's, offline), loaded once per session."""
    from crkd import load_data, preset
    return load_data(preset("digits").data)
