"""The autograd twin the benchmarks time against charrnn (bench/baselines.py's TorchRNN): it holds charrnn's weights,
computes charrnn's function with them, and trains as train.py trains a preset, step for step."""

import lightning as L
import pytest
import torch

from bench.baselines import TorchRNN, preset_twin, twin_trainer
from charrnn import network
from charrnn.data import CharDataModule

F64 = torch.float64


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_charrnn_weights_go_in_and_come_back_and_give_charrnn_function(cell):
    V, H, B, T = 7, 5, 3, 6
    arch = network.Architecture(V, H, cell, num_layers=2)
    g = torch.Generator().manual_seed(0)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=F64)  # every bias, bhn too, off zero
              for k, v in arch.init_params(g, F64).items()}  # fmt: skip
    inputs = torch.randint(V, (B, T), generator=g)
    twin = TorchRNN(V, H, cell, num_layers=2).double()
    twin.load_charrnn(params)

    back = twin.charrnn_params()
    assert back.keys() == params.keys()
    for name, p in params.items():
        torch.testing.assert_close(back[name], p, rtol=0, atol=1e-15)
    expected, _ = network.logits(arch, params, inputs, arch.zero_state(B, F64))
    out, _ = twin.rnn(torch.nn.functional.one_hot(inputs, V).double())
    torch.testing.assert_close(twin.head(out), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.filterwarnings("ignore:You passed in a .val_dataloader. but have no .validation_step.")
def test_preset_twin_trains_as_train_py_trains_the_preset(cell, text, tmp_path):
    """Three optimizer steps with the preset's optimizer and a schedule that halves the rate every step: the twin's
    weights end where charrnn's training step puts them, from the same initial weights, with the clip engaged."""
    config = {
        "seed_everything": 3,
        "data": {"seq_length": 50, "batch_size": 2, "val_fraction": 0.1},
        "model": {"cell": cell, "hidden_size": 8, "num_layers": 1, "dropout": 0.0},
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}},
        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}},
        "trainer": {"max_steps": 3, "log_every_n_steps": 1},
    }
    data = CharDataModule(str(text), 50, 2, 0.1)
    data.windows_per_batch = 1
    twin = preset_twin(config, data.vocab_size)
    trainer = twin_trainer(config, str(tmp_path), [], logger=False, enable_checkpointing=False,
                           enable_progress_bar=False)  # fmt: skip
    trainer.fit(twin, datamodule=data)

    L.seed_everything(3, verbose=False)
    arch = network.Architecture(data.vocab_size, 8, cell)
    params = arch.init_params()
    optimizer = torch.optim.SGD(params.values(), lr=0.5)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    state, clipped = arch.zero_state(2), False
    for step in range(3):
        inputs, targets = (x[:, step * 50 : (step + 1) * 50].long() for x in (data.train_inputs, data.train_targets))
        _, state = network.train_step(arch, params, optimizer, inputs, targets, state, clip=5.0)
        schedule.step()
        clipped |= any(bool((p.grad.abs() == 5.0).any()) for p in params.values())
    assert clipped
    assert trainer.global_step == 3
    for name, p in twin.charrnn_params().items():
        torch.testing.assert_close(p, params[name], rtol=1e-4, atol=1e-5)
