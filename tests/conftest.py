"""Fixtures shared by the test files (the helpers they import are in train_helpers.py)."""

import pytest

from charrnn.cells import native
from tests.train_helpers import corpus


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A small English text file (train_helpers.corpus) for train.py runs."""
    path = tmp_path_factory.mktemp("data") / "input.txt"
    path.write_text(corpus())
    return path


@pytest.fixture
def without_native(monkeypatch):
    """charrnn without its CPU fast paths (``CHARRNN_NATIVE=0``): the LSTM trains with its torch loop, products are
    torch's own, and the LSTM samples in NumPy."""
    monkeypatch.setenv("CHARRNN_NATIVE", "0")
    native._library.cache_clear()
    yield
    native._library.cache_clear()
