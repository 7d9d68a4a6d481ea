"""What charrnn is measured against besides Karpathy's NumPy min-char-rnn (bench/min_char_rnn.py): the model a
PyTorch user would write (``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` + ``nn.Linear`` + autograd + a ``torch.optim``
optimizer in a LightningModule with automatic optimization).
"""

import functools

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import instantiate_class

from charrnn import stack
from charrnn.cells import lstm
from charrnn.module import CharRNN
from charrnn.network import Architecture


def validation_loss(params: dict, datamodule, cell: str = "rnn") -> float:
    """``val/loss`` of weights in charrnn's layout (name -> NumPy array or tensor, as ``Architecture.init_params``),
    computed by charrnn's own validation.

    It runs a Trainer of its own, which takes ``datamodule`` over: inside another run, pass a datamodule of its own.
    """
    model = CharRNN(vocab_size=datamodule.vocab_size, hidden_size=params["Whh"].shape[1], cell=cell,
                    num_layers=stack.num_layers(params))  # fmt: skip
    with torch.no_grad():
        for name, p in model.params.items():
            p.copy_(torch.as_tensor(params[name]))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    return float(trainer.callback_metrics["val/loss"])


TORCH_CELLS = {"rnn": functools.partial(torch.nn.RNN, nonlinearity="tanh"), "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
# The gates of PyTorch's weight rows, as charrnn's gate numbers: nn.LSTM's (i, f, g, o), charrnn's (o, i, f, g).
TORCH_GATES = {"rnn": [0], "lstm": [lstm.I, lstm.F, lstm.G, lstm.O], "gru": [0, 1, 2]}


class TorchRNN(L.LightningModule):
    """The same network as a PyTorch user would write it: ``nn.RNN`` (tanh), ``nn.LSTM`` or ``nn.GRU`` of
    ``num_layers`` over one-hot inputs, ``nn.Linear`` output, autograd and Lightning's automatic optimization
    (clipping via the Trainer).

    The loss it minimises is charrnn's: cross-entropy summed over the window and averaged over streams, so its
    gradient is charrnn's and the Trainer's value clip at 5 is charrnn's clip. ``optimizer`` and ``lr_scheduler`` make
    them from the parameters and from the optimizer (e.g. ``functools.partial(torch.optim.Adam, lr=1e-2)``); the
    schedule steps after every optimizer step, as charrnn's. The default is ``torch.optim.Adagrad`` with lr 0.1.
    """

    def __init__(self, vocab_size: int, hidden_size: int, cell="rnn", num_layers=1, optimizer=None, lr_scheduler=None):
        super().__init__()
        self.vocab_size, self.cell = vocab_size, cell
        self.make_optimizer = optimizer or functools.partial(torch.optim.Adagrad, lr=0.1)
        self.make_scheduler = lr_scheduler
        self.rnn = TORCH_CELLS[cell](vocab_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, vocab_size)
        self.h = None

    def training_step(self, batch, batch_idx):
        inputs, targets, (window,) = batch  # one window per batch (CharDataModule's default): (1, B, T)
        inputs, targets = inputs[0], targets[0]
        if window == 0 or self.h is None:
            zeros = inputs.new_zeros((self.rnn.num_layers, inputs.shape[0], self.rnn.hidden_size), dtype=self.dtype)
            self.h = (zeros, zeros.clone()) if isinstance(self.rnn, torch.nn.LSTM) else zeros
        out, h = self.rnn(F.one_hot(inputs, self.vocab_size).to(self.dtype), self.h)
        self.h = tuple(x.detach() for x in h) if isinstance(h, tuple) else h.detach()
        loss = F.cross_entropy(self.head(out).reshape(-1, self.vocab_size), targets.reshape(-1), reduction="sum")
        self.log("train/loss", loss / targets.numel(), prog_bar=True)  # per character
        return loss / inputs.shape[0]

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return optimizer
        schedule = {"scheduler": self.make_scheduler(optimizer), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def _torch_param(self, name: str, layer: int) -> torch.nn.Parameter:
        return getattr(self.rnn, f"{name}_l{layer}")

    def _gate_rows(self) -> torch.Tensor:
        """Row r of a PyTorch weight is row ``rows[r]`` of charrnn's."""
        H = self.rnn.hidden_size
        return torch.cat([torch.arange(k * H, (k + 1) * H) for k in TORCH_GATES[self.cell]])

    def load_charrnn(self, params: dict) -> None:
        """Take charrnn's weights (its layout, e.g. ``Architecture.init_params``) and train charrnn's parameters.

        charrnn has one bias per gate, PyTorch two: charrnn's is PyTorch's input bias, and the recurrent bias of the
        RNN and LSTM is held at zero (not trained), so those train exactly charrnn's math. The GRU's recurrent bias
        holds charrnn's ``bhn`` (inside the reset) and trains, so its redundant reset and update parts train too."""
        rows, H = self._gate_rows(), self.rnn.hidden_size
        with torch.no_grad():
            for layer in range(self.rnn.num_layers):
                p = stack.layer_params(params, layer)
                self._torch_param("weight_ih", layer).copy_(p["Wxh"][rows])
                self._torch_param("weight_hh", layer).copy_(p["Whh"][rows])
                self._torch_param("bias_ih", layer).copy_(p["bh"].view(-1)[rows])
                self._torch_param("bias_hh", layer).zero_().requires_grad_(self.cell == "gru")
                if "bhn" in p:
                    self._torch_param("bias_hh", layer)[2 * H :] = p["bhn"].view(-1)
            self.head.weight.copy_(params["Why"])
            self.head.bias.copy_(params["by"].view(-1))

    def charrnn_params(self) -> dict:
        """The weights in charrnn's layout (``load_charrnn``'s inverse), e.g. for ``validation_loss``."""
        back, H = self._gate_rows().argsort(), self.rnn.hidden_size
        params = {}
        for layer in range(self.rnn.num_layers):
            ours = lambda name: self._torch_param(name, layer).detach()  # noqa: E731
            p = {"Wxh": ours("weight_ih")[back], "Whh": ours("weight_hh")[back]}
            bias_hh = ours("bias_hh").clone()
            if self.cell == "gru":  # b_hn is multiplied by the reset gate: it stays apart
                p["bhn"] = bias_hh[2 * H :].unsqueeze(1).clone()
                bias_hh[2 * H :] = 0
            p["bh"] = (ours("bias_ih") + bias_hh)[back].unsqueeze(1)
            params.update({stack.param_name(name, layer): value for name, value in p.items()})
        params["Why"] = self.head.weight.detach().clone()
        params["by"] = self.head.bias.detach().unsqueeze(1).clone()
        return params


def preset_twin(config: dict, vocab_size: int) -> TorchRNN:
    """A preset's network (``config``: its YAML file, read) as ``TorchRNN``, with the preset's optimizer and schedule,
    starting from the weights train.py starts the preset from (its seed, then charrnn's initialisation)."""
    model = config["model"]
    if model.get("dropout"):
        raise ValueError("TorchRNN has no dropout: a preset with dropout has no twin")
    arch = Architecture(vocab_size, model["hidden_size"], model.get("cell", "rnn"), model.get("num_layers", 1))
    L.seed_everything(config["seed_everything"], verbose=False)
    init = arch.init_params()  # first after the seed, as in train.py
    twin = TorchRNN(vocab_size, arch.hidden_size, arch.cell, arch.num_layers,
                    optimizer=functools.partial(instantiate_class, init=config["optimizer"]),
                    lr_scheduler=functools.partial(instantiate_class, init=config["lr_scheduler"]))  # fmt: skip
    twin.load_charrnn(init)
    return twin


def twin_trainer(config: dict, root: str, callbacks: list, **kwargs) -> L.Trainer:
    """The Trainer a PyTorch user gives the twin: the preset's step budget and logging interval, value clipping at
    the preset's clip (charrnn's 5), Lightning's default checkpoints and progress bar."""
    trainer = config["trainer"]
    return L.Trainer(max_steps=trainer["max_steps"], max_epochs=-1, log_every_n_steps=trainer["log_every_n_steps"],
                     gradient_clip_val=config["model"].get("clip", 5.0), gradient_clip_algorithm="value",
                     limit_val_batches=0, default_root_dir=root, enable_model_summary=False, callbacks=callbacks,
                     **kwargs)  # fmt: skip
