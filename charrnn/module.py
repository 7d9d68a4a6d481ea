"""The LightningModule: thin glue that feeds batches to the network (``network.py``) and steps the optimizer
(min-char-rnn's Adagrad, or train.py's ``--optimizer`` and ``--lr_scheduler``)."""

import math
import time
from typing import Literal

import lightning as L
import torch

from . import checkpoint, distributed, network
from .cells import CELLS
from .errors import Diverged, ScheduleFailed
from .optim import Adagrad, rate_problem
from .sampling import generate

SMOOTHING = 0.999  # min-char-rnn's smoothed loss: smooth = 0.999 * smooth + 0.001 * loss
# A loss above this many times ln(V), the loss of the uniform guess every run starts from, is exploding (char-rnn
# stops at 3 times its first loss). Judged on means over many characters: a logging interval's training loss and
# the validation loss, not one window, which may be hard text for a good model.
EXPLODED = 3
NO_STEP = 2**62  # first_bad_step while every loss has been finite


class CharRNN(L.LightningModule):
    """A character model of L layers of a tanh RNN, LSTM or GRU cell trained by hand-written BPTT with manual
    optimization; the default is min-char-rnn's one-layer tanh RNN.

    Args:
        vocab_size: number of distinct characters (linked from the data).
        hidden_size: hidden units (per layer).
        cell: the recurrent cell: ``rnn`` (min-char-rnn's tanh RNN), ``lstm`` or ``gru`` (PyTorch's form).
        num_layers: layers of the cell, each feeding the next.
        dropout: probability of dropping a unit in training (0 for none), on the input of every layer above the
            first and on the top layer's output; never on the recurrent connection, never in validation or sampling.
        learning_rate: the default optimizer's (min-char-rnn's Adagrad) learning rate; ``--optimizer`` has its own.
        initial_accumulator_value: where the default optimizer's sums of squared gradients start (min-char-rnn: 0,
            which makes the first step move every weight by about ``learning_rate``; see charrnn/optim.py).
        clip: gradients are clipped element-wise to [-clip, clip] (min-char-rnn: 5).
        sample_length: characters generated at each validation (TensorBoard text) and console sample.
        print_every: when > 0, print a sample and min-char-rnn's ``iter N, loss: X`` line every N steps.
        vocab: the characters, saved in every checkpoint so sampling needs nothing else.
    """

    def __init__(
        self,
        vocab_size: int = 65,
        hidden_size: int = 100,
        cell: Literal[tuple(CELLS)] = "rnn",
        num_layers: int = 1,
        dropout: float = 0.0,
        learning_rate: float = 0.1,
        initial_accumulator_value: float = 0.0,
        clip: float = 5.0,
        sample_length: int = 200,
        print_every: int = 0,
        vocab: list[str] | None = None,
    ):
        super().__init__()
        self.arch = network.Architecture(vocab_size, hidden_size, cell, num_layers, dropout)
        self.save_hyperparameters(ignore=["vocab"])
        self.automatic_optimization = False
        self.vocab = list(vocab) if vocab is not None else None
        for name, value in self.arch.init_params().items():
            self.register_parameter(name, torch.nn.Parameter(value))
        self.h = None  # hidden state of every stream, carried (detached) from one window to the next
        # The dropout masks' seed, drawn from the run's seeded generator after the weights (so a run without dropout
        # draws exactly what it always drew) and kept in the checkpoint: a resumed run draws the same masks.
        self.dropout_seed = int(torch.randint(2**62, ())) if dropout > 0 else None
        self.register_buffer("smooth_loss", torch.tensor(-math.log(1.0 / vocab_size), dtype=torch.float64))
        # The first step whose loss was not finite. Kept on the device and read only by check_finite, so watching
        # for divergence costs no host sync per step.
        self.register_buffer("first_bad_step", torch.tensor(NO_STEP), persistent=False)
        self._loss_sum = self._step_at_rate = self._time_at_rate = None  # see on_train_start

    @property
    def params(self) -> dict:
        return {name: getattr(self, name) for name in self.arch.param_shapes()}

    def configure_optimizers(self):
        return Adagrad(
            self.parameters(),
            lr=self.hparams.learning_rate,
            initial_accumulator_value=self.hparams.initial_accumulator_value,
        )

    def on_train_start(self):
        self._loss_sum = torch.zeros((), device=self.device)  # training loss summed since the last logging step
        self._step_at_rate, self._time_at_rate = self.global_step, time.perf_counter()
        # A checkpoint is restored before the strategy moves the module to its device and precision.
        if self.h is not None:
            self.h = self.h.to(device=self.device, dtype=self.dtype)
        # Stepped here after every optimizer step: charrnn counts steps, and manual optimization steps no schedule.
        self._schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]

    def training_step(self, batch, batch_idx):
        """One optimizer step per window of the batch (see data.TrainBatches), stopping exactly at max_steps."""
        max_steps = self.trainer.max_steps
        for inputs, targets, window in zip(*batch):
            if 0 <= max_steps <= self.global_step:
                break
            self._train_window(inputs, targets, window)

    def _train_window(self, inputs, targets, window):
        B, T = inputs.shape
        step = self.global_step
        printing = self.hparams.print_every and step % self.hparams.print_every == 0 and self.trainer.is_global_zero
        if printing or step % self.trainer.log_every_n_steps == 0:
            self.check_finite()  # a host sync once per interval; also keeps NaN out of the printed sample
        if window == 0 or self.h is None:
            self.h = self.arch.zero_state(B, self.dtype, self.device)
        if printing:
            # As min-char-rnn: a sample from the carried state, seeded with the window's first character.
            print(f"----\n {self.sample(self.h[0], int(inputs[0, 0]))} \n----")
        # This rank's streams are global streams rank * B ... rank * B + B - 1 (data.py's layout).
        masks = self.arch.dropout_masks(self.dropout_seed, step, self.global_rank * B, B, T, self.dtype, self.device)
        loss, self.h = network.train_step(
            self.arch, self.params, self.optimizers(), inputs, targets, self.h, self.hparams.clip,
            mean=distributed.mean_over_ranks if self.trainer.world_size > 1 else None, masks=masks,
        )  # fmt: skip
        self._step_schedules(step + 1)
        torch.minimum(self.first_bad_step, torch.where(loss.isfinite(), NO_STEP, step + 1), out=self.first_bad_step)

        self.smooth_loss.mul_(SMOOTHING).add_(loss, alpha=(1 - SMOOTHING) / (B * T))  # per character
        self._loss_sum += loss
        if self._logging_step(step + 1):
            self._log_interval(B * T)
        if printing:
            # min-char-rnn prints the smoothed loss summed over a window; nats/char follows in parentheses.
            print(f"iter {step}, loss: {float(self.smooth_loss) * T:f} ({float(self.smooth_loss):.4f} nats/char)")

    def _step_schedules(self, next_step: int):
        """Step the schedules after an optimizer step, and check the rate they set for ``next_step`` (Python floats:
        no host sync). train.py's dry run (checks.dry_run) checked the first steps of a fresh schedule; a longer run,
        or a resumed schedule, is checked here, before a bad rate trains a step."""
        if not self._schedulers:
            return
        try:
            for scheduler in self._schedulers:
                scheduler.step()
        except Exception as e:  # e.g. OneCycleLR stepped past its total_steps
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ScheduleFailed(next_step, f"the --lr_scheduler fails: {reason}") from None
        if 0 < self.trainer.max_steps <= next_step:
            return  # the rate after the last step trains nothing (a schedule may end below 0)
        for group in self.optimizers().param_groups:
            problem = rate_problem(group["lr"])
            if problem:
                raise ScheduleFailed(next_step, f"the --lr_scheduler sets the learning rate {group['lr']}, {problem}")

    def check_finite(self):
        """Raise Diverged if a loss so far was not finite, or the parameters no longer are (a NaN gradient: the
        clip keeps NaN, while it turns an infinite gradient into a finite one). One host sync; called at log
        intervals and before anything is saved or sampled, so no NaN reaches a checkpoint or a printed sample."""
        fine = torch.stack([self.first_bad_step == NO_STEP, *(p.isfinite().all() for p in self.parameters())])
        if not fine.all():
            raise Diverged(self.global_step if fine[0] else int(self.first_bad_step))

    def _logging_step(self, step: int) -> bool:
        """Whether to write the training metrics after ``step`` optimizer steps: every ``log_every_n_steps``, and at
        the last."""
        n = self.trainer.log_every_n_steps
        return n > 0 and (step % n == 0 or step == self.trainer.max_steps)

    def _log_interval(self, chars_per_step: int):
        """Write the mean loss and the speed since the previous logging step, against the optimizer step.

        Written to the loggers directly: ``self.log`` costs about as much as a whole training step of a small model,
        and Lightning would plot against its batch count, which is not the step count when a batch holds several
        windows. The loss is summed on the device in between (one host sync per interval), so the curve is the mean
        over every step, not a sample of one.
        """
        now, steps = time.perf_counter(), self.global_step - self._step_at_rate
        rate = steps * chars_per_step / (now - self._time_at_rate)
        self.check_finite()  # names the first step whose loss was not finite
        loss = float(self._loss_sum) / (steps * chars_per_step)
        self._check_not_exploding(loss, f"the training loss over the last {steps} steps")
        self._write_metrics(
            {
                "train/loss": loss,
                "train/smooth_loss": float(self.smooth_loss),
                "train/chars_per_sec": rate,
            }
        )
        self.log("train/chars_per_sec", rate, prog_bar=True, logger=False)
        self._loss_sum.zero_()
        self._step_at_rate, self._time_at_rate = self.global_step, now

    def _check_not_exploding(self, loss: float, what: str):
        limit = EXPLODED * math.log(self.hparams.vocab_size)
        if not loss <= limit:
            raise Diverged(
                self.global_step,
                f"{what} is {loss:.4g} nats per character, above {EXPLODED} x {limit / EXPLODED:.4g} (the loss it "
                "started from)",
            )

    def _write_metrics(self, metrics: dict):
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def sample(self, h=None, first_id=None, length=None, seed=None) -> str:
        """Text from the model; reproducible for a given step (the seed defaults to the step)."""
        prime = [first_id] if first_id is not None else []
        seed = self.global_step if seed is None else seed
        ids = generate(self.arch.cell, self.params, length or self.hparams.sample_length, h, prime, seed=seed)
        return "".join(self.vocab[i] for i in ids) if self.vocab else " ".join(map(str, ids))

    def on_validation_epoch_start(self):
        self.check_finite()
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        inputs, targets, mask, chunk = batch
        if chunk == 0:
            self._val_h = self.arch.zero_state(inputs.shape[0], self.dtype, self.device)
        log_probs, self._val_h = network.target_log_probs(self.arch, self.params, inputs, targets, self._val_h)
        self._val_sum -= torch.where(mask, log_probs, 0).sum(dtype=torch.float64)  # not nll[mask]: that syncs on GPU
        self._val_count += mask.sum()

    def on_validation_epoch_end(self):
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        val_loss = (total / count).float()
        metrics = {"val/loss": val_loss, "val/bpc": val_loss / math.log(2)}
        if not self.trainer.sanity_checking:
            self._check_not_exploding(float(val_loss), "the validation loss")
        # Already reduced and equal on every rank; sync_dist only spares Lightning's warning that it is not.
        self.log_dict(metrics, prog_bar=True, logger=False, sync_dist=True)
        if not self.trainer.sanity_checking:
            self._write_metrics({name: float(value) for name, value in metrics.items()})
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            text = self.sample()
            for logger in self.loggers:
                if hasattr(logger.experiment, "add_text"):
                    logger.experiment.add_text("sample", "    " + text.replace("\n", "\n    "), self.global_step)

    def on_save_checkpoint(self, ckpt):
        # Every rank's streams, in stream order, so a resume on any number of ranks gets its own rows back.
        h = None if self.h is None else distributed.gather_rows(self.h).cpu()
        checkpoint.write_metadata(ckpt, self.arch, self.vocab, h, self.dropout_seed)

    def configure_model(self):
        # Take the run's dtype before a checkpoint is restored into the module: float64 weights restored into
        # float32 parameters (converted only later, by the strategy) would be rounded and a resume no longer exact.
        self.trainer.precision_plugin.convert_module(self)

    def teardown(self, stage):
        distributed.release_process_group()

    def on_load_checkpoint(self, ckpt):
        meta = checkpoint.read_metadata(ckpt, "the checkpoint")
        self.h = None if meta.hidden_state is None else distributed.rows_of_rank(meta.hidden_state)
        self.dropout_seed = meta.dropout_seed
