"""train.py runs single-threaded unless OMP_NUM_THREADS asks otherwise (see cli._default_threads): checked through
train.py's main, from a thread count that is neither, so the check fails if main stops setting it."""

import pytest
import torch

from tests.train_helpers import tiny_args, train


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_one_thread_by_default(monkeypatch, two_threads, text, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert train(tiny_args(text, tmp_path, steps=1)) == 0
    assert torch.get_num_threads() == 1


def test_omp_num_threads_is_respected(monkeypatch, two_threads, text, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert train(tiny_args(text, tmp_path, steps=1)) == 0
    assert torch.get_num_threads() == 2
