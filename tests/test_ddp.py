"""Multi-process training: N ranks of B streams must train exactly the model one process trains with N * B streams.

The CPU tests run gloo ranks in float64: ``ddp_spawn`` runs (which record every rank's state) and one
``train.py --trainer.strategy ddp`` subprocess that resumes a spawn run's mid-way checkpoint. The device tests run
on the CPU too, and on CUDA when there is a GPU.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from charrnn import checkpoint, network
from charrnn.callbacks import AtomicCheckpointIO, LastCheckpoint
from charrnn.data import CharDataModule
from charrnn.distributed import mean_over_ranks
from charrnn.module import CharRNN
from charrnn.sampling import generate
from charrnn.text import pydoc_text
from tests.train_helpers import ROOT, quiet_trainer, run_train_py

STREAMS, T, H, STEPS, MID = 4, 8, 16, 24, 12  # 17 windows per epoch: both runs cross an epoch boundary
TOL = 1e-9


def write_text(directory) -> str:
    path = os.path.join(directory, "text.txt")
    with open(path, "w") as f:
        f.write(pydoc_text()[:800])
    return path


def data_and_model(path, batch_size, **model):
    """``model``: CharRNN's other arguments (cell, num_layers, dropout)."""
    data = CharDataModule(path, seq_length=T, batch_size=batch_size, val_fraction=0.3)
    torch.manual_seed(0)
    return data, CharRNN(data.vocab_size, H, vocab=data.chars, **model)


class Record(L.Callback):
    """Saves each rank's final state (and a copy of the mid-way last.ckpt) where the test can read it."""

    def __init__(self, out):
        self.out = out

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == MID and trainer.is_global_zero:
            last = os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")
            shutil.copy(last, os.path.join(self.out, "mid.ckpt"))

    def on_train_end(self, trainer, module):
        state = {
            "params": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
            "h": module.h.cpu(),
            "val_loss": float(trainer.callback_metrics["val/loss"]),
            "val_count": int(module._val_count),
        }
        torch.save(state, os.path.join(self.out, f"rank{trainer.global_rank}.pt"))


def fit(out, batch_size, accelerator="cpu", devices=1, steps=STEPS, val_every=1000, callbacks=(), **model):
    """Train; with devices > 1 as ddp_spawn ranks, whose collectives time out rather than hang on a mismatch."""
    os.makedirs(out, exist_ok=True)
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60)) if devices > 1 else "auto"
    data, model = data_and_model(write_text(out), batch_size, **model)
    trainer = quiet_trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision="64-true",
        max_steps=steps,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=val_every,
        plugins=[AtomicCheckpointIO()],
        callbacks=[LastCheckpoint(MID), Record(str(out)), *callbacks],
        default_root_dir=str(out),
    )
    trainer.fit(model, datamodule=data)
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(devices)]


def assert_close(a: dict, b: dict, tol=TOL):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=tol), (name, (a[name] - b[name]).abs().max())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return fit(tmp_path_factory.mktemp("single"), STREAMS)[0]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return out, fit(out, STREAMS // 2, devices=2)


def test_two_ranks_train_exactly_as_one_process_with_twice_the_streams(single, two_ranks):
    _, (rank0, rank1) = two_ranks
    init = data_and_model(write_text(two_ranks[0]), STREAMS)[1].state_dict()
    assert (rank0["params"]["Whh"] - init["Whh"].double()).abs().max() > 1e-2  # it really trained
    for name in rank0["params"]:
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
    assert_close(rank0["params"], single["params"])  # smooth_loss included: the logged loss is averaged too
    assert rank0["h"].shape == (STREAMS // 2, 1, H)
    # Rank r carried streams r*B .. r*B+B-1 of the one-process layout.
    assert torch.allclose(torch.cat([rank0["h"], rank1["h"]]), single["h"], rtol=0, atol=TOL)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_every_cell_with_dropout_trains_on_two_ranks_as_one_process(tmp_path, cell):
    """Two layers, dropout 0.2: each rank draws the masks of its own global streams, so 2 ranks x 2 streams train
    what 1 process x 4 streams trains. Compared after 4 steps to 1e-12: Adagrad amplifies a rounding difference
    about 10x a step, so two correct summation orders of the averaged gradient part later."""
    model = {"cell": cell, "num_layers": 2, "dropout": 0.2}
    single = fit(tmp_path / "one", STREAMS, steps=4, val_every=2, **model)[0]
    rank0, rank1 = fit(tmp_path / "two", STREAMS // 2, devices=2, steps=4, val_every=2, **model)
    init = data_and_model(write_text(tmp_path), STREAMS, **model)[1].state_dict()
    assert (rank0["params"]["Whh_1"] - init["Whh_1"].double()).abs().max() > 1e-3  # it really trained
    for name in rank0["params"]:
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
    assert_close(rank0["params"], single["params"], tol=1e-12)
    assert torch.allclose(torch.cat([rank0["h"], rank1["h"]]), single["h"], rtol=0, atol=1e-12)
    assert rank0["val_loss"] == pytest.approx(single["val_loss"], rel=1e-6)


def test_validation_under_ddp_is_the_loss_over_the_whole_validation_text(single, two_ranks):
    out, ranks = two_ranks
    data, _ = data_and_model(write_text(out), STREAMS)
    ids = data.val_ids.long()
    assert [r["val_count"] for r in ranks] == [len(ids) - 1] * 2  # as reduced over the ranks: every character once
    for r in ranks:
        assert r["val_loss"] == pytest.approx(single["val_loss"], rel=1e-6)  # logged as float32


def test_ddp_checkpoint_holds_every_rank_and_loads_in_one_cpu_process(single, two_ranks):
    out, (rank0, rank1) = two_ranks
    saved = checkpoint.load(str(out))
    assert saved["global_step"] == STEPS
    assert saved["charrnn"]["hidden_state"].shape == (STREAMS, 1, H)  # the one-process format, all ranks' rows
    assert torch.equal(saved["charrnn"]["hidden_state"], torch.cat([rank0["h"], rank1["h"]]))
    assert_close(saved["state_dict"], rank0["params"])
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["last.ckpt"]


def test_resumed_ddp_run_continues_exactly(single, two_ranks, tmp_path):
    """``train.py --trainer.strategy ddp`` (which re-executes the command line per rank) resumes at step MID."""
    out, _ = two_ranks
    args = [
        "--data.path", os.path.join(out, "text.txt"),
        "--data.batch_size", str(STREAMS // 2), "--data.seq_length", str(T), "--data.val_fraction", "0.3",
        "--model.hidden_size", str(H), "--model.learning_rate", "0.1",  # CharRNN's default, as the runs above
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.precision", "64-true", "--trainer.max_steps", str(STEPS), "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", os.path.join(out, "mid.ckpt"),
    ]  # fmt: skip
    code, out, err = run_train_py(args)
    assert code == 0, err[-3000:]
    assert out.count(f"finished at step {STEPS}") == 1  # reported (and written) by rank 0 only
    saved = checkpoint.load(str(tmp_path))
    assert_close(saved["state_dict"], single["params"])
    assert torch.allclose(saved["charrnn"]["hidden_state"], single["h"], rtol=0, atol=TOL)


class SignalRank1(L.Callback):
    """SIGTERM to rank 1 alone, during the validation after step 4; records where each rank stopped and why."""

    def __init__(self, out):
        self.out = out

    def on_validation_start(self, trainer, module):
        if trainer.global_rank == 1 and trainer.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, trainer, module):
        last = next(c for c in trainer.callbacks if isinstance(c, LastCheckpoint))
        torch.save((trainer.global_step, last.stop_signal), os.path.join(self.out, f"stop{trainer.global_rank}.pt"))


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    fit(tmp_path, STREAMS // 2, devices=2, val_every=4, callbacks=[SignalRank1(str(tmp_path))])
    assert torch.load(tmp_path / "stop0.pt") == (5, "a signal to another process")
    assert torch.load(tmp_path / "stop1.pt") == (5, "SIGTERM")
    assert checkpoint.load(str(tmp_path))["global_step"] == 5


def test_two_rank_checkpoint_resumes_on_one_process_with_all_the_streams(single, two_ranks, tmp_path):
    """The checkpoint describes N * B streams in stream order, so any N with the same total continues it exactly."""
    out, _ = two_ranks
    data, model = data_and_model(os.path.join(out, "text.txt"), STREAMS)
    trainer = quiet_trainer(
        accelerator="cpu", devices=1, precision="64-true", max_steps=STEPS, num_sanity_val_steps=0,
        check_val_every_n_epoch=None, val_check_interval=1000, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=os.path.join(out, "mid.ckpt"), weights_only=True)
    assert_close({k: v.cpu() for k, v in model.state_dict().items()}, single["params"])
    assert torch.allclose(model.h, single["h"], rtol=0, atol=TOL)


@pytest.mark.parametrize("to", ["rank 0", "every rank"])
def test_ctrl_c_while_ranks_start_is_one_line_and_exit_130_for_every_rank(tmp_path, to):
    """Ctrl-C right after "Initializing distributed", to rank 0 alone or, as a terminal sends it, to the process
    group: rank 0 says one line and exits 130; the rank it started neither prints (a traceback when rank 0's sockets
    close) nor outlives it, nor exits first (Lightning would kill rank 0: "Forcefully terminating", exit 137)."""
    args = [
        "--data.path",
        write_text(tmp_path),
        "--data.batch_size",
        2,
        "--data.seq_length",
        T,
        "--model.hidden_size",
        H,
        "--trainer.max_steps",
        100000,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.devices",
        2,
        "--trainer.strategy",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--trainer.default_root_dir",
        tmp_path / "runs",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # its own group, as a terminal's job
    try:
        out = b""
        while b"Initializing distributed" not in out:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, proc.communicate()
            out += chunk
        if to == "rank 0":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        rest, err = proc.communicate(timeout=60)  # a started rank holding the pipes open would time out here
    finally:
        leftover = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in leftover:
            os.kill(int(pid), signal.SIGKILL)
        proc.kill()
    assert proc.returncode == 130, err
    assert len(err.decode().splitlines()) == 1 and err.decode().startswith("interrupted by SIGINT"), err.decode()
    assert b"Forcefully terminating" not in out + rest
    assert not leftover


def _train_briefly_and_exit(rank, port):
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    for _ in range(50):
        mean_over_ranks([torch.ones(8)])
    CharRNN(4, 4).teardown("fit")  # what Lightning calls last on every rank


def test_ranks_exit_cleanly_once_training_is_over():
    """Left alive until interpreter exit, a gloo group aborts about half of such runs (its worker thread frees the last
    collective's tensors when the GIL is gone); the module's teardown shuts the group down first."""
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(_train_briefly_and_exit, args=(port,), nprocs=2)  # raises if a rank aborts


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_gets_its_own_contiguous_streams_and_a_share_of_validation(tmp_path, world):
    B = 2
    one, _ = data_and_model(write_text(tmp_path), world * B)
    whole = next(iter(one.train_dataloader()))[0]
    val_count = 0
    for rank in range(world):
        data, _ = data_and_model(write_text(tmp_path), B)
        data.trainer = SimpleNamespace(global_rank=rank, world_size=world, global_step=0)
        data.setup("fit")
        train = data.train_dataloader()
        assert len(train) == len(one.train_dataloader())  # no rank runs out of batches before another
        assert torch.equal(next(iter(train))[0], whole[:, rank * B : (rank + 1) * B])  # (windows, streams, T)
        assert train.state_dict()["streams"] == world * B
        val = data.val_dataloader()
        assert len(val) == len(one.val_dataloader())
        val_count += sum(int(mask.sum()) for _, _, mask, _ in val)
    assert val_count == len(one.val_ids) - 1


# The device tests: every line runs on the CPU as well, so only what needs CUDA itself is left to a GPU machine.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_device_gradients_equal_cpu_gradients(device):
    generator, arch = torch.Generator().manual_seed(0), network.Architecture(65, 64)
    params = {k: v * 10 for k, v in arch.init_params(generator, torch.float64).items()}
    inputs, targets = torch.randint(65, (2, 8, 25), generator=generator)
    h0 = torch.randn(8, 1, 64, generator=generator, dtype=torch.float64)
    loss, grads, h = network.loss_and_grads(arch, params, inputs, targets, h0)
    to = {k: v.to(device) for k, v in params.items()}
    on_device = network.loss_and_grads(arch, to, inputs.to(device), targets.to(device), h0.to(device))
    assert torch.allclose(on_device[0].cpu(), loss, rtol=1e-12)
    assert_close({k: v.cpu() for k, v in on_device[1].items()}, grads)
    assert torch.allclose(on_device[2].cpu(), h, rtol=0, atol=1e-12)


class NoHostSync(L.Callback):
    """Turns every implicit device-to-host synchronisation into an error during the steady-state training steps."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 2:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step >= trainer.max_steps:  # before LastCheckpoint copies the final state to the host
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
def test_device_training_has_no_host_sync_per_step(tmp_path, device):
    data, model = data_and_model(write_text(tmp_path), STREAMS)
    data.windows_per_batch = 1  # a batch per step, so the steps after the first two are watched one by one
    watch = [NoHostSync()] if device == "cuda" else []  # CUDA's sync debug mode: the CPU has no host to sync with
    trainer = quiet_trainer(
        accelerator=device, devices=1, max_steps=20, log_every_n_steps=5, enable_progress_bar=True,
        enable_checkpointing=True, num_sanity_val_steps=0, check_val_every_n_epoch=None, val_check_interval=1000,
        callbacks=[*watch, LastCheckpoint(1000)], default_root_dir=str(tmp_path),
    )  # fmt: skip
    try:
        trainer.fit(model, datamodule=data)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert trainer.global_step == 20 and model.h.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_device_run_resumes_on_device_equals_cpu_and_samples_on_cpu(single, tmp_path, device):
    """Train to MID on the device, resume there to STEPS; equals the CPU run, and its checkpoint samples on a CPU."""
    first = fit(tmp_path / "a", STREAMS, accelerator=device, steps=MID)[0]
    assert first["params"]["Whh"].dtype == torch.float64
    data, model = data_and_model(write_text(tmp_path / "a"), STREAMS)
    trainer = quiet_trainer(
        accelerator=device, devices=1, precision="64-true", max_steps=STEPS, enable_model_summary=True,
        enable_checkpointing=True, num_sanity_val_steps=0, check_val_every_n_epoch=None, val_check_interval=1000,
        plugins=[AtomicCheckpointIO()], callbacks=[LastCheckpoint(1000)], default_root_dir=str(tmp_path / "b"),
    )  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=str(tmp_path / "a" / "checkpoints" / "last.ckpt"), weights_only=True)
    saved = checkpoint.load(str(tmp_path / "b"))
    assert all(not v.is_cuda for v in saved["state_dict"].values())
    assert_close(saved["state_dict"], single["params"])
    assert torch.allclose(saved["charrnn"]["hidden_state"], single["h"], rtol=0, atol=TOL)
    params = {k: saved["state_dict"][k] for k in network.Architecture(*saved["state_dict"]["Why"].shape).param_shapes()}
    ids = list(generate("rnn", params, 50, saved["charrnn"]["hidden_state"][0], seed=0))
    # the CPU run's own weights and state draw the same text (they agree to 1e-9, far inside any draw's margin)
    cpu_params = {k: single["params"][k] for k in params}
    assert ids == list(generate("rnn", cpu_params, 50, single["h"][0], seed=0))
    assert len(set(ids)) > 5  # a trained model's text, not one character repeated


TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
TWO_DEVICES = ["cpu", pytest.param("cuda", marks=TWO_GPUS)]


@pytest.mark.parametrize("device", TWO_DEVICES)
def test_two_devices_train_exactly_as_one_process_with_twice_the_streams(single, tmp_path, device):
    rank0, rank1 = fit(tmp_path, STREAMS // 2, accelerator=device, devices=2)
    assert_close(rank0["params"], single["params"])
    assert_close(rank1["params"], single["params"])
