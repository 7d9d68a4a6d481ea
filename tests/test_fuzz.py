"""Property-based fuzzing of train.py, sample.py and score.py, in-process: random flags with hostile values (wrong
types, signs, extremes, NaN and infinities, Unicode, huge numbers, special files), randomly damaged files, and any of
torch's optimizers and schedules with valid and invalid arguments, new or resumed.

The property, for every input: the exit code is 0, 2 or 130; a failure is exactly one line ``error: ...`` on
stderr with no traceback; no warning reaches the user; and no file that existed before is changed or lost.

CI runs a few hundred fixed (derandomized) examples. For a long run, e.g. 5000 examples per test:
``CHARRNN_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py``.
"""

import contextlib
import io
import math
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import sample
import score
from charrnn import cli, rundir
from tests.train_helpers import corpus, snapshot, tiny_args, train

LONG = int(os.environ.get("CHARRNN_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=LONG or 600,  # about 50 s on 2 cores
    deadline=None,
    derandomize=not LONG,  # CI: the same examples every run; a long run explores
    database=None,
    suppress_health_check=list(HealthCheck),
)

WORLD = os.path.join(tempfile.gettempdir(), f"charrnn-fuzz-{os.getpid()}")  # made by the world fixture


def _build_world() -> str:
    """A text, a finished run and files a user might pass by mistake, shared (read-only) by every example."""
    d = WORLD
    os.makedirs(d)
    with open(f"{d}/input.txt", "w") as f:
        f.write(corpus())
    with contextlib.redirect_stdout(io.StringIO()):
        assert train(tiny_args(f"{d}/input.txt", f"{d}/runs", steps=4)) == 0
        lstm = ("--model.cell", "lstm", "--model.num_layers", 2, "--model.dropout", 0.2)
        assert train(tiny_args(f"{d}/input.txt", f"{d}/lstm-runs", *lstm, steps=4)) == 0
        assert train(tiny_args(f"{d}/input.txt", f"{d}/runs-8", "--model.hidden_size", 8, steps=4)) == 0  # as fuzzed
    os.makedirs(f"{d}/texts/sub")
    with open(f"{d}/texts/a.txt", "w") as f, open(f"{d}/texts/sub/b.md", "w") as g:
        f.write(corpus(400))
        g.write(corpus(800)[400:] + "[0] = {1}\n")  # characters the runs' vocabulary lacks
    os.mkfifo(f"{d}/fifo")
    os.mkdir(f"{d}/empty-dir")
    return d


@pytest.fixture(scope="module", autouse=True)
def world():
    _build_world()
    yield WORLD
    shutil.rmtree(WORLD, ignore_errors=True)


def _ckpt() -> str:
    return f"{WORLD}/runs/lightning_logs/version_0/checkpoints/last.ckpt"


# Values: wrong types, signs, extremes, non-finite numbers, Unicode and special files. Huge sizes are chosen
# far beyond any machine's memory (refused up front), never merely slow.
WORDS = [
    "0",
    "-1",
    "1",
    "2",
    "3",
    "1.5",
    "-0.0",
    "1e300",
    "-1e300",
    "1e-320",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "x",
    "",
    " ",
    "true",
    "false",
    "null",
    "[1]",
    "{a: 1}",
    "- 1",
    "💥",
    "ß\u0301",
    "\x00",
    "4294967296",
    "-5",
    str(2**63),
    str(2**70),
    str(-(2**70)),
    "9" * 40,
    "0x10",
    "1_000",
    "32-true",
    "64-true",
    "16-mixed",
    "auto",
]
SPECIAL_PATHS = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/bin/ls",
    "/proc/self/status",
    "/proc/self/mem",
    "/",
    "/nonexistent/x",
    "{d}/fifo",
    "{d}/empty-dir",
    "{d}/input.txt",
    "{d}/runs",
    "{ckpt}",
    "{d}/lstm-runs",
    "{d}/texts",
    "[{d}/input.txt, {d}/texts]",
    "{d}/runs-8",
]
values = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(SPECIAL_PATHS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).filter(lambda n: not 8 < n < 2**40).map(str),  # tiny, or far too big
    st.text(max_size=6),
)

TRAIN_FLAGS = ["--data.batch_size", "--data.seq_length", "--data.val_fraction", "--data.path", "--model.hidden_size",
               "--model.learning_rate", "--model.clip", "--model.sample_length", "--model.print_every",
               "--trainer.max_steps", "--trainer.max_epochs", "--trainer.log_every_n_steps",
               "--trainer.val_check_interval", "--trainer.precision", "--trainer.accelerator", "--trainer.logger",
               "--trainer.gradient_clip_val", "--trainer.limit_val_batches", "--trainer.num_sanity_val_steps",
               "--trainer.default_root_dir", "--checkpoint_every", "--seed_everything", "--config", "--ckpt_path",
               "--bogus", "--model", "--trainer.devices", "--model.cell", "--model.num_layers", "--model.dropout",
               "--init_from", "--data.glob", "--trainer.callbacks", "--trainer.callbacks.monitor",
               "--trainer.callbacks.patience", "--trainer.callbacks.mode", "--trainer.callbacks.min_delta"]  # fmt: skip
# Besides hostile values, the values a flag is meant to take (so that good runs of every cell happen too).
MODEL_VALUES = {"--model.cell": ["rnn", "lstm", "gru", "LSTM"], "--model.num_layers": ["1", "2", "3"],
                "--model.dropout": ["0", "0.2", "0.5", "0.999", "1"], "--init_from": ["{d}/runs-8", "{d}/lstm-runs"],
                "--data.glob": ["*.txt", "*", "*.md", "[", "sub/*"],
                "--trainer.callbacks": ["EarlyStopping", "[EarlyStopping]",
                                        "lightning.pytorch.callbacks.EarlyStopping"],
                "--trainer.callbacks.monitor": ["val/loss", "val/bpc", "train/loss"],
                "--trainer.callbacks.patience": ["0", "1"], "--trainer.callbacks.mode": ["min", "max"]}  # fmt: skip
SAFE_DEVICES = ["0", "1", "nan", "true", "auto", "x", "[0]", "1.5", "/dev/null"]  # never more than one process


@st.composite
def damaged_file(draw) -> str:
    """A file written for this example: a damaged checkpoint, a foreign zip or pickle, random bytes, or nothing."""
    good = open(_ckpt(), "rb").read()
    kind = draw(st.sampled_from(["truncated", "bit-flipped", "foreign zip", "foreign pickle", "torch.save",
                                 "random bytes", "empty", "text"]))  # fmt: skip
    if kind == "truncated":
        data = good[: draw(st.integers(0, len(good) - 1))]
    elif kind == "bit-flipped":
        at, bit = draw(st.integers(0, len(good) - 1)), draw(st.integers(0, 7))
        data = good[:at] + bytes([good[at] ^ (1 << bit)]) + good[at + 1 :]
    elif kind == "foreign zip":
        buffer = io.BytesIO()
        with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as z:
            warnings.simplefilter("ignore")  # duplicate member names are part of the damage
            for name in draw(
                st.lists(st.sampled_from(["archive/data.pkl", "archive/version", "x", "a/b"]), max_size=3)
            ):
                z.writestr(name, draw(st.binary(max_size=64)))
        data = buffer.getvalue()
    elif kind == "foreign pickle":
        data = pickle.dumps(draw(st.dictionaries(st.text(max_size=4), st.integers() | st.text(), max_size=3)))
    elif kind == "torch.save":
        buffer = io.BytesIO()
        payload = draw(
            st.sampled_from(
                [
                    {},
                    [],
                    {"charrnn": {}},
                    {"state_dict": {}, "charrnn": {"vocab": 3}},
                    {"charrnn": {"vocab": ["a"]}, "state_dict": {"Wxh": torch.zeros(2)}},
                ]
            )
        )
        torch.save(payload, buffer)
        data = buffer.getvalue()
    elif kind == "random bytes":
        data = draw(st.binary(max_size=256))
    elif kind == "empty":
        data = b""
    else:
        data = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    path = os.path.join(tempfile.mkdtemp(dir=WORLD, prefix="file-"), "f")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _flag_value(flag: str):
    if flag == "--trainer.devices":
        return st.sampled_from(SAFE_DEVICES)
    if flag == "--trainer.default_root_dir":  # anywhere but the existing run, which a resume may rightly change
        return st.sampled_from(
            ["{root}/sub", "{root}/é 💥", "/dev/null", "/proc", "/nonexistent/x", "{d}/input.txt", ""]
        )
    if flag == "--init_from":
        return st.one_of(st.sampled_from(MODEL_VALUES[flag]), values, damaged_file())
    if flag in ("--data.path", "--config", "--ckpt_path"):
        return st.one_of(values, damaged_file())
    if flag in MODEL_VALUES:
        return st.one_of(st.sampled_from(MODEL_VALUES[flag]), values)
    return values


train_flags = st.lists(
    st.sampled_from(TRAIN_FLAGS).flatmap(lambda f: st.tuples(st.just(f), _flag_value(f))), max_size=3
)


def _run(main, args) -> tuple[int, str, list]:
    """``main(args)`` with stdout and stderr captured; every warning recorded (any would reach the user)."""
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(args)
    return code, err.getvalue(), [str(w.message) for w in caught]


def _check(code, err, caught, before):
    event(f"exit code {code}")
    assert code in (0, 2, 130), (code, err)
    assert "Traceback" not in err and not caught, (err, caught)
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1 and (lines[0].startswith("error: ") or code == 130), err
        for jargon in ("<class '", "typing.", "Could this error message be improved", "NestedArg(", "Namespace("):
            assert jargon not in err, err
    after = snapshot(WORLD)
    assert {name: after.get(name) for name in before} == before, "a file that existed before was changed or lost"


def _fill(value: str, root: str) -> str:
    return value.replace("{d}", WORLD).replace("{ckpt}", _ckpt()).replace("{root}", root)


@FUZZ
@given(flags=train_flags)
@example(flags=[("--trainer.devices", "nan")])
@example(flags=[("--trainer.devices", "true")])
@example(flags=[("--trainer.devices", "/dev/null")])
@example(flags=[("--trainer.accelerator", "junk")])
@example(flags=[("--config", "/bin/ls")])
@example(flags=[("--trainer.val_check_interval", "true")])
@example(flags=[("--seed_everything", "-5")])
@example(flags=[("--seed_everything", "4294967296")])
@example(flags=[("--model.learning_rate", "1e300")])
@example(flags=[("--model.hidden_size", str(2**40))])
@example(flags=[("--model.learning_rate", "nan")])
@example(flags=[("--trainer.log_every_n_steps", "50")])
@example(flags=[("--data.path", "{d}/fifo")])
@example(flags=[("--ckpt_path", "/dev/zero")])
@example(flags=[("--data.path", "/proc/self/mem")])
@example(flags=[("--data.batch_size", "")])
@example(flags=[("--ckpt_path", "\r")])
@example(flags=[("--model", "{ckpt}")])
@example(flags=[("--trainer.max_epochs", "true")])
@example(flags=[("--trainer.accelerator", "/proc/self/mem")])
@example(flags=[("--trainer.logger", "/bin/ls")])
@example(flags=[("--data.val_fraction", "0")])
@example(flags=[("--model.cell", "gru"), ("--model.num_layers", "3"), ("--model.dropout", "0.5")])
@example(flags=[("--model.cell", "lstm"), ("--model.num_layers", "2"), ("--ckpt_path", "{d}/lstm-runs")])
@example(flags=[("--model.num_layers", str(2**40))])
@example(flags=[("--trainer.logger", "{d}/fifo")])
@example(flags=[("--trainer.accelerator", "/dev/zero")])
@example(flags=[("--model", "\x00")])
@example(flags=[("--init_from", "{d}/runs-8"), ("--data.path", "{d}/texts")])
@example(flags=[("--init_from", "{d}/runs-8"), ("--ckpt_path", "{d}/runs-8")])
@example(flags=[("--init_from", "{d}/lstm-runs"), ("--model.cell", "gru")])
@example(flags=[("--data.path", "{d}/texts"), ("--data.glob", "*.md")])
@example(flags=[("--data.glob", "*.txt")])
@example(
    flags=[
        ("--trainer.callbacks", "EarlyStopping"),
        ("--trainer.callbacks.monitor", "val/loss"),
        ("--trainer.callbacks.patience", "0"),
    ]
)
@example(
    flags=[
        ("--trainer.callbacks", "EarlyStopping"),
        ("--trainer.callbacks.monitor", "val/loss"),
        ("--trainer.callbacks.mode", "x"),
    ]
)
@example(flags=[("--trainer.callbacks", "EarlyStopping"), ("--trainer.callbacks.min_delta", "nan")])
def test_train_py_keeps_its_promise(flags):
    root = tempfile.mkdtemp(dir=WORLD, prefix="root-")
    before = snapshot(WORLD)
    extra = [arg for flag, value in flags for arg in (flag, _fill(value, root))]
    # A time limit, so that a flag asking for endless training ends the example (and saves, like Ctrl-C would).
    args = tiny_args(f"{WORLD}/input.txt", root, "--model.hidden_size", 8, "--trainer.max_time", "00:00:00:03",
                     *extra, steps=3)  # fmt: skip
    try:
        _check(*_run(cli.main, args), before)
    finally:
        shutil.rmtree(root, ignore_errors=True)


SAMPLE_FLAGS = ["--length", "--prime", "--temperature", "--top-k", "--seed", "--device", "--greedy", "--half",
                "--bogus", "--stop", "--num-samples", "--prime-file", "--beam", "--json"]  # fmt: skip
SWITCHES = ("--greedy", "--half", "--json", "--per-line", "--log-probs")  # flags without a value
small_lengths = st.sampled_from(["-1", "0", "1", "5", "x", "nan", "1e3", "", "2.5"])
small_counts = st.sampled_from(["-1", "0", "1", "2", "3", "x", "", "1.5", "40"])  # --num-samples, --beam, --streams
# --stop: escapes good and bad, and text of the model's characters.
stops = st.one_of(st.sampled_from(["\\n", "\\n\\n", "\\x41", "\\u00e9", "\\", "\\q", "\\ud800", "\\U00110000",
                                   "e", "th", " ", "\\t"]), values)  # fmt: skip


def _sample_value(flag: str):
    if flag in SWITCHES:
        return st.just(None)
    if flag == "--length":
        return small_lengths
    if flag in ("--num-samples", "--beam"):
        return small_counts
    if flag == "--stop":
        return stops
    if flag == "--prime-file":
        return st.one_of(values, damaged_file())
    return values


sample_flags = st.lists(st.sampled_from(SAMPLE_FLAGS).flatmap(lambda f: st.tuples(st.just(f), _sample_value(f))),
                        max_size=4)  # fmt: skip


@FUZZ
@given(
    target=st.one_of(st.sampled_from(["{ckpt}", "{d}/runs", *SPECIAL_PATHS]), damaged_file(), values),
    flags=sample_flags,
)
@example(target="\x00", flags=[])
@example(target="/dev/zero", flags=[])
@example(target="{d}/fifo", flags=[])
@example(target="{ckpt}", flags=[("--top-k", str(2**70)), ("--seed", str(2**70))])
@example(target="{ckpt}", flags=[("--temperature", "1e-320")])
@example(target="{d}/lstm-runs", flags=[("--prime", "The"), ("--top-k", "3")])
@example(target="{ckpt}", flags=[("--stop", "\\"), ("--json", None)])
@example(target="{ckpt}", flags=[("--beam", "3"), ("--json", None), ("--prime", "The")])
@example(target="{d}/lstm-runs", flags=[("--num-samples", "3"), ("--stop", "e"), ("--prime-file", "{d}/input.txt")])
@example(target="{ckpt}", flags=[("--prime-file", "/proc/self/mem")])
def test_sample_py_keeps_its_promise(target, flags):
    before = snapshot(WORLD)
    extra = [arg for flag, value in flags for arg in ((flag,) if value is None else (flag, value))]
    args = [_fill(target, WORLD), "--length", "50", *extra]
    _check(*_run(sample.main, [_fill(arg, WORLD) for arg in args]), before)


SCORE_FLAGS = ["--per-line", "--top", "--json", "--log-probs", "--streams", "--bogus"]
score_flags = st.lists(
    st.sampled_from(SCORE_FLAGS).flatmap(
        lambda f: st.tuples(st.just(f), st.just(None) if f in SWITCHES else st.one_of(small_counts, values))
    ),
    max_size=4,
)
score_files = st.lists(st.one_of(st.sampled_from(["{d}/input.txt", *SPECIAL_PATHS]), damaged_file(), values),
                       min_size=0, max_size=3)  # fmt: skip


@FUZZ
@given(target=st.one_of(st.sampled_from(["{ckpt}", "{d}/runs", "{d}/lstm-runs"]), damaged_file(), values),
       files=score_files, flags=score_flags)  # fmt: skip
@example(target="{ckpt}", files=["{d}/input.txt"], flags=[("--per-line", None), ("--top", "2"), ("--json", None)])
@example(target="{d}/lstm-runs", files=["{d}/input.txt", "/dev/zero"], flags=[("--streams", "64")])
@example(target="{ckpt}", files=["{d}/fifo"], flags=[])
def test_score_py_keeps_its_promise(target, files, flags):
    before = snapshot(WORLD)
    extra = [arg for flag, value in flags for arg in ((flag,) if value is None else (flag, value))]
    args = [_fill(target, WORLD), *(_fill(f, WORLD) for f in files), *extra]
    _check(*_run(score.main, args), before)


# Optimizers and schedules: any torch.optim class a user can name, with valid and invalid arguments.
OPTIMIZERS = {
    "torch.optim.Adam": ["lr", "eps", "weight_decay", "betas", "amsgrad"],
    "torch.optim.AdamW": ["lr", "eps", "weight_decay", "betas"],
    "torch.optim.SGD": ["lr", "momentum", "dampening", "weight_decay", "nesterov"],
    "torch.optim.RMSprop": ["lr", "alpha", "eps", "momentum", "centered"],
    "torch.optim.Adagrad": ["lr", "lr_decay", "eps", "initial_accumulator_value"],
    "charrnn.optim.Adagrad": ["lr", "eps", "initial_accumulator_value"],
    "torch.optim.Adamax": ["lr", "eps", "betas"],
    "torch.optim.NAdam": ["lr", "momentum_decay", "betas"],
    "torch.optim.RAdam": ["lr", "eps", "betas"],
    "torch.optim.Adadelta": ["lr", "rho", "eps"],
    "torch.optim.Rprop": ["lr", "etas", "step_sizes"],
    "torch.optim.ASGD": ["lr", "lambd", "alpha", "t0"],
    "torch.optim.LBFGS": ["lr"],
}
SCHEDULES = {
    "StepLR": ["step_size", "gamma"],
    "MultiStepLR": ["milestones", "gamma"],
    "ExponentialLR": ["gamma"],
    "CosineAnnealingLR": ["T_max", "eta_min"],
    "CosineAnnealingWarmRestarts": ["T_0", "T_mult", "eta_min"],
    "LinearLR": ["start_factor", "end_factor", "total_iters"],
    "ConstantLR": ["factor", "total_iters"],
    "PolynomialLR": ["total_iters", "power"],
    "OneCycleLR": ["max_lr", "total_steps", "pct_start", "div_factor"],
    "CyclicLR": ["base_lr", "max_lr", "step_size_up"],
    "LambdaLR": ["lr_lambda"],
}
NUMBERS = [
    "-1",
    "0",
    "-0.0",
    "1e-9",
    "1e-3",
    "0.01",
    "0.5",
    "0.9",
    "1",
    "2",
    "3",
    "5",
    "7",
    "12",
    "20",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "1e300",
    "-1e300",
    "x",
    "",
    "true",
    "[1.5,0.999]",
    "[0.9,0.999]",
    "[0.5,1.2]",
    "[2,4]",
    "[]",
]
argument_values = st.one_of(st.sampled_from(NUMBERS), st.floats(-10, 10).map(repr), st.integers(-3, 30).map(str))


@st.composite
def optimization_flags(draw) -> list[str]:
    optimizer = draw(st.sampled_from(sorted(OPTIMIZERS)))
    flags = ["--optimizer", optimizer]
    for name in draw(st.lists(st.sampled_from(OPTIMIZERS[optimizer]), max_size=3, unique=True)):
        flags += [f"--optimizer.{name}", draw(argument_values)]
    if draw(st.booleans()):
        schedule = draw(st.sampled_from(sorted(SCHEDULES)))
        flags += ["--lr_scheduler", f"torch.optim.lr_scheduler.{schedule}"]
        for name in draw(st.lists(st.sampled_from(SCHEDULES[schedule]), max_size=3, unique=True)):
            flags += [f"--lr_scheduler.{name}", draw(argument_values)]
    return flags


@settings(FUZZ, max_examples=LONG or 60)  # about two runs of train.py an example
@given(flags=optimization_flags(), steps=st.sampled_from([3, 12]), resume=st.booleans())
@example(flags=["--optimizer", "torch.optim.Adam", "--optimizer.betas", "[1.5,0.999]"], steps=3, resume=False)
@example(flags=["--optimizer", "torch.optim.SGD", "--optimizer.lr", "-1e-3"], steps=3, resume=False)
@example(flags=["--optimizer", "torch.optim.SGD", "--lr_scheduler", "torch.optim.lr_scheduler.StepLR",
                "--lr_scheduler.step_size", "2", "--lr_scheduler.gamma", "-1"], steps=12, resume=False)  # fmt: skip
@example(flags=["--optimizer", "torch.optim.SGD", "--lr_scheduler", "torch.optim.lr_scheduler.OneCycleLR",
                "--lr_scheduler.max_lr", "0.1", "--lr_scheduler.total_steps", "5"], steps=12, resume=False)  # fmt: skip
@example(flags=["--optimizer", "torch.optim.Adam", "--lr_scheduler", "torch.optim.lr_scheduler.LambdaLR",
                "--lr_scheduler.lr_lambda", "1"], steps=3, resume=False)  # fmt: skip
@example(flags=["--optimizer", "torch.optim.SGD", "--lr_scheduler", "torch.optim.lr_scheduler.StepLR",
                "--lr_scheduler.step_size", "2"], steps=12, resume=True)  # fmt: skip
def test_optimizers_and_schedules_keep_the_promise(flags, steps, resume):
    """Exit 0 with a checkpoint whose rate trains, or one line ``error:``; with ``resume``, the same flags continue
    a run of 3 steps, which must be left as it was when refused."""
    root = tempfile.mkdtemp(dir=WORLD, prefix="root-")
    try:
        args = tiny_args(f"{WORLD}/input.txt", root, "--model.hidden_size", 8, *flags, steps=steps)
        if resume:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                first = cli.main(tiny_args(f"{WORLD}/input.txt", root, "--model.hidden_size", 8, *flags, steps=3))
            resume = first == 0
            args += ["--ckpt_path", "last"]
        before = snapshot(WORLD)
        code, err, caught = _run(cli.main, args)
        event(f"exit code {code}{' (resumed)' if resume else ''}")
        # A resume that ran rightly changed its own run (a diverged one all but its checkpoints); a refused one
        # must leave it as it was.
        trained = code == 0 or "training diverged at step" in err or "training stopped at step" in err
        if trained:
            before = {name: value for name, value in before.items()
                      if not (name.startswith(os.path.basename(root))
                              and (code == 0 or not name.endswith(".ckpt")))}  # fmt: skip
        _check(code, err, caught, before)
        if code == 0:
            ckpt = torch.load(rundir.newest_last_checkpoint(root), weights_only=True)
            assert ckpt["global_step"] == steps
            rates = [group["lr"] for state in ckpt["optimizer_states"] for group in state["param_groups"]]
            assert all(rate >= 0 and math.isfinite(rate) for rate in rates), rates
            assert all(t.isfinite().all() for t in ckpt["state_dict"].values())
    finally:
        shutil.rmtree(root, ignore_errors=True)
