"""Fixtures shared by the test files (the helpers they import are in train_helpers.py)."""

import pytest

from tests.train_helpers import corpus


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """A small English text file (train_helpers.corpus) for train.py runs."""
    path = tmp_path_factory.mktemp("data") / "input.txt"
    path.write_text(corpus())
    return path
