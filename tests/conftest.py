"""Fixtures shared by the test files (the helpers they import are in train_helpers.py)."""

import pytest

from charrnn.cells import native, parallel
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


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of each native.c function that charrnn looks up through ``native.kernel``: called directly,
    or given as the parts of a run (``parallel.run_parts``, counted by its parts, ``<name>_part``)."""
    calls, real, real_run_parts = {}, native.kernel, parallel.run_parts

    def counting(name):
        function = real(name)
        if function is None or name.endswith("_part"):
            return function  # counted below: a C run takes it without Python

        def call(*args):
            calls[name] = calls.get(name, 0) + 1
            return function(*args)

        return call

    def counting_parts(part, args_of, parts, rowwise=False):
        calls[part.__name__] = calls.get(part.__name__, 0) + len(parts)
        return real_run_parts(part, args_of, parts, rowwise)

    monkeypatch.setattr(native, "kernel", counting)
    monkeypatch.setattr(parallel, "run_parts", counting_parts)
    return calls
