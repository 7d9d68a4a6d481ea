"""Training-side checkpointing: when ``last.ckpt`` is written, how (atomically), and what Ctrl-C / SIGTERM do."""

import math
import os
import signal
import time

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from . import checkpoint, files, optim, rundir
from .errors import Interrupted, UsageError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic writes and code-free (``weights_only``) reads."""

    def save_checkpoint(self, checkpoint_dict, path, storage_options=None):
        try:
            checkpoint.save_atomic(checkpoint_dict, str(path))
        except OSError as e:  # a full disk, a directory removed or made read-only mid-run
            raise UsageError(
                f"cannot write {path} ({e.strerror}); the checkpoint before it is intact: "
                "fix that, then continue with --ckpt_path last"
            ) from None

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return checkpoint.read(str(path), map_location=map_location or "cpu")


class LastCheckpoint(L.Callback):
    """Keeps the run's ``last.ckpt`` current (every ``every_n_steps`` steps and where training stops), and turns
    the first Ctrl-C / SIGTERM into a stop after the batch in progress, saved: a second one aborts."""

    def __init__(self, every_n_steps: int = 1000):
        self.every_n_steps = every_n_steps
        self.stop_signal = None
        self.saved_step = None  # the step of the checkpoint this run wrote last
        self.start_step = None  # the step training started (or resumed) at
        self._previous_handlers = {}

    def path(self, trainer) -> str:
        return rundir.checkpoint_path(trainer, rundir.LAST)

    def _request_stop(self, signum, frame):
        if self.stop_signal is not None:
            raise Interrupted(f"aborted by a second {signal.Signals(signum).name}")
        self.stop_signal = signal.Signals(signum).name

    def on_train_start(self, trainer, pl_module):
        files.remove_temporaries(self.path(trainer))
        self._step = self.start_step = trainer.global_step
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.signal(sig, self._request_stop)

    def on_train_end(self, trainer, pl_module):
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def on_exception(self, trainer, pl_module, exception):
        self.on_train_end(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stop = self.stop_signal is not None
        if trainer.world_size > 1:  # every rank stops after the same step, even if the signal reached only some
            agreed = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if agreed and not stop:
                self.stop_signal = "a signal to another process"
            stop = agreed
        step = trainer.global_step
        last_epoch_done = (
            trainer.max_epochs not in (None, -1)
            and trainer.current_epoch + 1 >= trainer.max_epochs
            and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        )
        final = stop or trainer.should_stop or step >= trainer.max_steps > -1 or last_epoch_done
        if final:
            trainer.should_stop = True  # also makes Lightning run the final validation
        # A batch may hold several steps (data.TrainBatches): save when it crossed a multiple of every_n_steps.
        due = step // self.every_n_steps > self._step // self.every_n_steps
        self._step = step
        if final or due:
            pl_module.check_finite()  # a diverged run never replaces a good checkpoint
            trainer.save_checkpoint(self.path(trainer), weights_only=False)  # full state, for exact resume
            self.saved_step = step

    def on_validation_end(self, trainer, pl_module):
        """A callback that stops training from its validation (Lightning's EarlyStopping) does so after this step's
        on_train_batch_end found it not final: save it here. train.py puts the user's callbacks before this one, so
        their on_validation_end has run."""
        if trainer.sanity_checking or not trainer.should_stop or self.saved_step == trainer.global_step:
            return
        pl_module.check_finite()
        trainer.save_checkpoint(self.path(trainer), weights_only=False)
        self.saved_step = trainer.global_step


class BestCheckpoint(L.Callback):
    """Keeps ``best.ckpt`` beside ``last.ckpt``: the full training state right after the validation with the lowest
    ``val/loss`` of this run directory, and logs that loss as ``val/loss_best``.

    The loss to beat is read from the ``best.ckpt`` already there, not from the checkpoint a run resumes: that
    ``last.ckpt`` is written before the validation of its own step, which may have improved on it.
    """

    def __init__(self):
        self.val_loss = math.inf

    def path(self, trainer) -> str:
        return rundir.checkpoint_path(trainer, rundir.BEST)

    def state_dict(self):
        return {"val_loss": self.val_loss}

    def on_train_start(self, trainer, pl_module):
        path = self.path(trainer)
        files.remove_temporaries(path)
        saved = checkpoint.load(path).get("callbacks", {}).get(self.state_key) if os.path.exists(path) else None
        self.val_loss = saved["val_loss"] if saved else math.inf

    def on_validation_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None:
            return
        if float(loss) < self.val_loss:
            self.val_loss = float(loss)
            trainer.save_checkpoint(self.path(trainer), weights_only=False)
        for logger in trainer.loggers:
            logger.log_metrics({"val/loss_best": self.val_loss}, step=trainer.global_step)


class OptimizerFromFlags(L.Callback):
    """The optimizer and schedule are this run's flags': a checkpoint resumes only with the classes it was trained
    with (its state means nothing to another), and the learning rate is the flags' (``optim.take_base_rates``), so a
    run that diverged can go on from its last good checkpoint with a lower one. Their state (Adagrad's memory, Adam's
    moments, the schedule's position) comes from the checkpoint."""

    def __init__(self, optimizer: str = optim.ADAGRAD, lr_scheduler: str | None = None):
        self.classes = {"optimizer": optimizer, "lr_scheduler": lr_scheduler}
        self._base_rates = []

    def state_dict(self):
        return dict(self.classes)

    def check_resumable(self, ckpt: dict, path: str) -> None:
        saved = ckpt.get("callbacks", {}).get(self.state_key, OptimizerFromFlags().classes)  # older: the default
        for group, name in self.classes.items():
            if saved.get(group) != name:
                raise UsageError(
                    f"{path} was trained with {group} {saved.get(group) or 'none'}, not {name or 'none'}; "
                    f"resume with the same --{group}"
                )

    def on_fit_start(self, trainer, pl_module):
        """The optimizers are built from the flags here, and restored from the checkpoint only after this hook."""
        self._base_rates = [[g.get("initial_lr", g["lr"]) for g in o.param_groups] for o in trainer.optimizers]

    def on_train_start(self, trainer, pl_module):
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        for optimizer, rates in zip(trainer.optimizers, self._base_rates):
            optim.take_base_rates(optimizer, schedulers, rates)


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, redrawn at most every ``interval`` seconds instead of after every step.

    Each redraw formats the bar and reads the shown metrics back from the device; after every step that costs a
    small model a good part of its step time.
    """

    def __init__(self, interval: float = 0.5):
        super().__init__()
        self.interval, self._drawn = interval, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.monotonic()
        if now - self._drawn >= self.interval or batch_idx + 1 == self.train_progress_bar.total:
            self._drawn = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @property
    def total_train_batches(self):
        """As Lightning's, but a batch may hold several optimizer steps (CharDataModule.windows_per_batch) when
        counting to max_steps."""
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps > 0:
            per_batch = trainer.datamodule.windows_per_batch
            return min(trainer.num_training_batches, -(-(trainer.max_steps - trainer.global_step) // per_batch))
        return trainer.num_training_batches

    @classmethod
    def replace_default(cls, trainer) -> None:
        """Swap in for the bar Lightning adds by default (a TQDMProgressBar redrawn every step), if there is one."""
        bar = trainer.progress_bar_callback
        if type(bar) is TQDMProgressBar and bar.refresh_rate == 1:
            trainer.callbacks[trainer.callbacks.index(bar)] = cls()
