"""Time to quality: training seconds until the validation loss first reaches a target on tiny-shakespeare (last 10%
held out): charrnn's configs/default.yaml against NumPy min-char-rnn, or every preset and the LSTM preset's autograd
twin.

    python -m bench.time_to_quality [--numpy-seconds 150] [--threads 1] [--targets 2.0 1.8] [--train-args FLAGS]
    python -m bench.time_to_quality --presets default lstm gru large --autograd-lstm --targets 2.0 1.8 1.6

``--train-args "--data.batch_size 8 --model.hidden_size 100" --numpy-seconds 0`` measures one point of a config
sweep with train.py itself.

Every run is measured the same way: the clock runs only while training (it is paused during validation) and the loss
is charrnn's own full validation (every validation character, per character). charrnn runs ``train.py`` with the
default config and validates every ``--val-every`` steps; min-char-rnn is validated about every ``--numpy-eval``
seconds of training. min-char-rnn needs minutes to reach 2.0 (465 s in the run of record, BENCHMARKS.md), so it is
stopped after ``--numpy-seconds`` of training; when it has not reached a target by then, the table gives a bound
("> X s", ratio ">= Y").

``--presets``: ``train.py --config configs/NAME.yaml`` for each, one after the other, over the preset's own step
budget (stopped once the lowest target is reached), validated about every 5% of it (``PRESET_VAL_EVERY``).
``--autograd-lstm`` adds, right after the lstm preset, the same network as a PyTorch user writes it: ``nn.LSTM`` +
``nn.Linear`` + autograd in a LightningModule with automatic optimization (bench/baselines.py's ``TorchRNN``),
trained as train.py trains configs/lstm.yaml: the same windows in the same order with the state carried, the
optimizer and schedule of the YAML file stepped after every optimizer step, the Trainer's value clip at charrnn's 5 on
charrnn's loss (summed over the window, averaged over streams), the same step budget, and charrnn's initial weights
for the preset's seed (forget-gate bias 1, PyTorch's recurrent bias held at zero). Both then train the same math from
the same start, so the ratio of their times is one of speed alone. Its weights are scored by charrnn's validation at
the same steps as the preset's.
"""

import os

from bench import threads

os.environ.update(threads.pool_sizes())  # first: NumPy and torch size their thread pools when they load

import argparse
import contextlib
import json
import shlex
import tempfile
import time

import yaml

from bench.baselines import preset_twin, twin_trainer, validation_loss
from bench.common import (
    ROOT,
    SEQ_LENGTH,
    QualityClock,
    first_point,
    first_reaching,
    machine_line,
    print_table,
    run_train,  # fmt: skip
    shakespeare_path,
    start,
)
from bench.min_char_rnn import MinCharRNN
from charrnn.data import CharDataModule

PRESETS = ("default", "lstm", "gru", "large")
# Steps between validations: about 5% of each budget (configs/default.yaml's own 5,000, 5.3% of its 95,000 steps,
# keeps its 20 windows per trainer batch, which a finer interval would cut).
PRESET_VAL_EVERY = {"default": 5000, "lstm": 150, "gru": 200, "large": 350}
TWIN = "autograd nn.LSTM"


def charrnn_curve(targets, val_every, max_seconds, train_args, tmp, config=None):
    out = os.path.join(tmp, "curve.json")
    run_train(
        [*(["--config", config] if config else []), "--data.path", shakespeare_path(),
         "--trainer.val_check_interval", str(val_every), *train_args,
         "--trainer.default_root_dir", tmp, "--trainer.callbacks+=bench.common.QualityClock",
         "--trainer.callbacks.out", out, "--trainer.callbacks.stop_at", str(min(targets)),
         *(["--trainer.callbacks.max_seconds", str(max_seconds)] if max_seconds < float("inf") else [])],
        os.path.join(tmp, "train.log"),
    )  # fmt: skip
    with open(out) as f:
        return json.load(f)


def numpy_curve(targets, max_seconds, eval_seconds):
    data = CharDataModule(shakespeare_path(), SEQ_LENGTH, 1)
    model = MinCharRNN(data.vocab_size)
    curve, elapsed, since_eval = [], 0.0, 0.0
    t0 = time.perf_counter()
    for n, _, _ in model.train(data.train_ids.numpy()):
        now = time.perf_counter()
        elapsed, since_eval, t0 = elapsed + now - t0, since_eval + now - t0, now
        if since_eval >= eval_seconds or elapsed >= max_seconds:
            loss = validation_loss(dict(zip(("Wxh", "Whh", "Why", "bh", "by"), model.params)), data)
            curve.append({"seconds": round(elapsed, 3), "step": n, "val_loss": loss})
            since_eval = 0.0
            if loss <= min(targets) or elapsed >= max_seconds:
                return curve
            t0 = time.perf_counter()  # validation is not training time


class CharRNNValidation(QualityClock):
    """QualityClock for a model trained outside charrnn (a ``TorchRNN``): every ``every`` steps and at the last, the
    clock pauses and charrnn's own validation scores the model's weights on ``data``."""

    def __init__(self, out, data, every, stop_at, max_seconds):
        super().__init__(out, stop_at, max_seconds)
        self.data, self.every = data, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0 or trainer.global_step >= trainer.max_steps:
            self.pause()
            self.record(trainer, validation_loss(pl_module.charrnn_params(), self.data, pl_module.cell))


def autograd_curve(config: dict, targets, val_every, max_seconds, tmp):
    """The twin of a preset trained as train.py trains the preset, scored by charrnn's validation every ``val_every``
    steps."""
    data_args = (shakespeare_path(), config["data"]["seq_length"], config["data"]["batch_size"],
                 config["data"]["val_fraction"])  # fmt: skip
    data = CharDataModule(*data_args)
    data.windows_per_batch = 1  # TorchRNN trains one window per batch
    # A datamodule of its own: validation_loss's Trainer takes the one it validates on over.
    clock = CharRNNValidation(os.path.join(tmp, "curve.json"), CharDataModule(*data_args), val_every, min(targets),
                              max_seconds)  # fmt: skip
    trainer = twin_trainer(config, tmp, [clock])
    log_path = os.path.join(tmp, "train.log")
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        trainer.fit(preset_twin(config, data.vocab_size), datamodule=data)
    return clock.curve


def compare_presets(args):
    """Every preset through train.py, and the LSTM preset's autograd twin right after it; one row each."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        for name in args.presets:
            config_path = os.path.join(ROOT, "configs", f"{name}.yaml")
            every = args.val_every or PRESET_VAL_EVERY[name]
            os.makedirs(run_dir := os.path.join(tmp, name))
            label = f"charrnn {name}"
            runs[label] = charrnn_curve(args.targets, every, args.max_seconds, shlex.split(args.train_args), run_dir,
                                         config_path)  # fmt: skip
            print(f"  {label}: {curve_line(runs[label])}", flush=True)
            if name == "lstm" and args.autograd_lstm:
                with open(config_path) as f:
                    config = yaml.safe_load(f)
                os.makedirs(run_dir := os.path.join(tmp, "autograd"))
                runs[TWIN] = autograd_curve(config, args.targets, every, args.max_seconds, run_dir)
                print(f"  {TWIN}: {curve_line(runs[TWIN])}", flush=True)
    print()
    rows = [[label, *(reached(curve, t) for t in args.targets), f"{min(p['val_loss'] for p in curve):.3f}",
             curve[-1]["step"]] for label, curve in runs.items()]  # fmt: skip
    if TWIN in runs:
        lstm = runs["charrnn lstm"]
        rows.append([f"{TWIN} / charrnn lstm", *(ratio(runs[TWIN], lstm, t) for t in args.targets), "", ""])
    print_table(["run", *(f"to {t} (s, step)" for t in args.targets), "best val/loss", "last step"], rows)
    print("\ncurves (training seconds/step: val/loss):")
    for label, curve in runs.items():
        print(f"- {label}: {curve_line(curve)}")
    print(machine_line())


def reached(curve, target) -> str:
    point = first_point(curve, target)
    return f"{point['seconds']:.1f} ({point['step']})" if point else f"> {curve[-1]['seconds']:.0f}"


def ratio(theirs, ours, target) -> str:
    a, b = first_reaching(theirs, target), first_reaching(ours, target)
    return f"{a / b:.2f}" if a is not None and b is not None else "-"


def curve_line(curve) -> str:
    return ", ".join(f"{p['seconds']:.1f}/{p['step']}: {p['val_loss']:.3f}" for p in curve)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 1.8])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, here and in train.py")
    parser.add_argument("--val-every", type=int, help="steps between validations (2000 for the default comparison; "
                        "presets: PRESET_VAL_EVERY, about 5%% of each budget)")  # fmt: skip
    parser.add_argument("--max-seconds", type=float, help="stop each run after this much training (the default "
                        "comparison: 180; presets: their whole step budget)")  # fmt: skip
    parser.add_argument("--train-args", default="", help="more train.py flags, e.g. '--data.batch_size 8' (a sweep)")
    parser.add_argument(
        "--numpy-seconds", type=float, default=150, help="min-char-rnn: stop after this much training (0: skip)"
    )
    parser.add_argument("--numpy-eval", type=float, default=5, help="min-char-rnn: seconds between validations")
    parser.add_argument(
        "--presets",
        nargs="+",
        choices=PRESETS,
        help="time these configs/NAME.yaml instead of the default comparison (no min-char-rnn; --train-args "
        "applies to each, e.g. '--threads 2')",
    )
    parser.add_argument("--autograd-lstm", action="store_true", help="with --presets ... lstm: and its autograd twin")
    args = parser.parse_args()
    if args.autograd_lstm and "lstm" not in (args.presets or []):
        parser.error("--autograd-lstm runs beside the lstm preset: add --presets ... lstm")
    start(args.threads)
    if args.presets:
        args.max_seconds = float("inf") if args.max_seconds is None else args.max_seconds
        return compare_presets(args)
    val_every, max_seconds = args.val_every or 2000, 180 if args.max_seconds is None else args.max_seconds
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        ours = charrnn_curve(args.targets, val_every, max_seconds, shlex.split(args.train_args), tmp)
    theirs = numpy_curve(args.targets, args.numpy_seconds, args.numpy_eval) if args.numpy_seconds > 0 else []
    rows = []
    for target in args.targets:
        a, d = first_reaching(ours, target), first_reaching(theirs, target)
        if a is None:
            rows.append([target, f"> {ours[-1]['seconds']:.0f}", "-", "-"])
        elif not theirs:
            rows.append([target, f"{a:.1f}", "-", "-"])
        elif d is None:
            rows.append([target, f"{a:.1f}", f"> {theirs[-1]['seconds']:.0f}", f">= {theirs[-1]['seconds'] / a:.0f}"])
        else:
            rows.append([target, f"{a:.1f}", f"{d:.1f}", f"{d / a:.1f}"])
    print_table(["val loss (nats/char)", "charrnn default s", "NumPy min-char-rnn s", "NumPy / charrnn"], rows)
    print("\ncharrnn configs/default.yaml curve (training seconds, step, val loss):")
    print("  " + ", ".join(f"{p['seconds']:.1f}s/{p['step']}: {p['val_loss']:.3f}" for p in ours))
    if theirs:
        print(f"NumPy min-char-rnn curve (stopped after {args.numpy_seconds:.0f} s of training or at the last target):")
        print("  " + ", ".join(f"{p['seconds']:.0f}s/{p['step']}: {p['val_loss']:.3f}" for p in theirs))


if __name__ == "__main__":
    main()
