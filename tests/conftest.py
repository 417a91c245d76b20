"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # The test models are tiny: intra-op threads only add contention on a small shared machine
    # (measured: a 0.13 s EP call took 10 s with two threads competing with other processes).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
