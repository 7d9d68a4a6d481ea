"""train.py runs single-threaded unless OMP_NUM_THREADS asks otherwise (see cli._default_threads)."""

import pytest
import torch

from charrnn import cli


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_one_thread_by_default(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    cli._default_threads()
    assert torch.get_num_threads() == 1


def test_omp_num_threads_is_respected(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    cli._default_threads()
    assert torch.get_num_threads() == 2
