"""How many threads train.py trains on (cli._default_threads): every available core by default, ``--threads N`` (or
``threads:`` in a config) when given, torch's own threads as OMP_NUM_THREADS says when only that is set; and the
start-up summary's ``compute:`` line says it."""

import os

import pytest
import torch

from charrnn import cli
from charrnn import cores as machine_cores
from charrnn.cells import fast, gru, parallel
from tests.train_helpers import assert_one_line_error, corpus, tiny_args, train


@pytest.fixture
def restore_threads():
    threads, own = torch.get_num_threads(), parallel.threads()
    yield
    torch.set_num_threads(threads)
    parallel.set_threads(own)


@pytest.fixture
def cores(monkeypatch):
    """A machine of 6 cores with no CPU quota, whatever this one is."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(
        machine_cores, "CPU_QUOTA", ("/nonexistent/cpu.max", "/nonexistent/quota", "/nonexistent/period")
    )
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_every_available_core_by_default(cores, restore_threads):
    torch.set_num_threads(2)
    cli._default_threads(None)
    assert (parallel.threads(), torch.get_num_threads()) == (6, 1)
    cli._default_threads(None, processes=4)  # a multi-process run shares the cores: 6 // 4 each
    assert (parallel.threads(), torch.get_num_threads()) == (1, 1)


def test_threads_flag_wins(cores, monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    cli._default_threads(3)
    assert (parallel.threads(), torch.get_num_threads()) == (3, 1)


def test_omp_num_threads_alone_sets_torch_threads(cores, monkeypatch, restore_threads):
    """As before charrnn had threads of its own: torch sized its pool from OMP_NUM_THREADS, and keeps it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    cli._default_threads(None)
    assert (parallel.threads(), torch.get_num_threads()) == (1, 2)


@pytest.mark.parametrize("v2, v1, expected", [
    (None, None, 6), ("max 100000\n", None, 6), ("150000 100000\n", None, 1), ("400000 100000\n", None, 4),
    ("2000000 100000\n", None, 6), ("50000 100000\n", None, 1), (None, ("300000", "100000"), 3),
    (None, ("-1", "100000"), 6), ("garbage\n", None, 6),
])  # fmt: skip
def test_available_cores_are_the_affinity_capped_by_the_cgroup_quota(cores, monkeypatch, tmp_path, v2, v1, expected):
    files = (tmp_path / "cpu.max", tmp_path / "cfs_quota_us", tmp_path / "cfs_period_us")
    for path, text in zip(files, (v2, *(v1 or (None, None)))):
        if text is not None:
            path.write_text(text)
    monkeypatch.setattr(machine_cores, "CPU_QUOTA", tuple(map(str, files)))
    assert machine_cores.available() == expected


@pytest.mark.parametrize("how", ["flag", "config", "default"])
def test_compute_line_says_the_threads(how, tmp_path, capsys, monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    text = tmp_path / "input.txt"
    text.write_text(corpus())
    config = tmp_path / "threads.yaml"
    config.write_text("threads: 1\n")
    given = {"flag": ["--threads", 1], "config": ["--config", config], "default": []}[how]
    assert train(tiny_args(text, tmp_path, "--model.cell", "gru", *given, steps=2)) == 0
    threads = 1 if how != "default" else machine_cores.available()
    compute = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("compute: "))
    assert parallel.threads() == threads and torch.get_num_threads() == 1
    chosen = fast.path(gru, torch.float32)  # the window loops on AVX-512 CPUs, else torch's loop on one thread
    assert compute == f"compute: {chosen}" and chosen.threads == (threads if chosen.name == "C window loops" else 1)
    assert f" {threads} thread" in compute or f"large products on {threads}" in compute


@pytest.mark.parametrize("value, message", [(0, "--threads must be a positive integer, got 0"),
                                            (-2, "--threads must be a positive integer, got -2"),
                                            ("two", "--threads")])  # fmt: skip
def test_bad_threads_are_one_line_errors(value, message, tmp_path, capsys):
    text = tmp_path / "input.txt"
    text.write_text(corpus())
    assert train(tiny_args(text, tmp_path / "run", "--threads", value, steps=2)) == 2
    assert_one_line_error(capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()
