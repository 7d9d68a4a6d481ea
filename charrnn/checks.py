"""What train.py refuses before anything runs, said in the user's words.

Each check compares a value with what the run can actually do (the seeding's range, the precision's float range,
the machine's memory, a file that can be read as one), so a value that would crash the run minutes later, or
leave a half-made run directory, is one line ``error: ...`` at the start instead.
"""

import contextlib
import importlib
import inspect
import math
import os
import re
import stat
import warnings

import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping

from .errors import UsageError
from .files import regular_file
from .network import Architecture
from .optim import rate_problem

MAX_SEED = 2**32 - 1  # the seeding (NumPy's) accepts 0 .. 2**32 - 1
VALIDATION_METRICS = ("val/loss", "val/bpc")  # logged after each validation (module.py); lower is better
# The --trainer.precision values train.py supports, and the dtype each computes in.
DTYPES = {"32-true": torch.float32, "32": torch.float32, "64-true": torch.float64, "64": torch.float64}

# How a flag's accepted values are described when the parser refuses one (instead of Python's type names).
_WANTED = {
    "model.learning_rate": "a finite positive number",
    "model.clip": "a finite positive number",
    "model.initial_accumulator_value": "0 or a finite positive number",
    "data.val_fraction": "a number from 0 up to (not including) 1",
    "model.dropout": "a number from 0 up to (not including) 1",
    "trainer.precision": "one of 32-true, 64-true",
    "seed_everything": f"an integer from 0 to {MAX_SEED}, or true for a random seed",
}
# The most steps of a schedule stepped before training (about a quarter of a second for torch's schedules); a
# longer run's later steps are checked as training reaches them (module.CharRNN).
DRY_RUN_STEPS = 100_000
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


def seed(value) -> None:
    if not isinstance(value, bool) and not 0 <= value <= MAX_SEED:
        raise UsageError(f"--seed_everything must be {_WANTED['seed_everything']}, got {value}")


def positive_float(flag: str, value: float, precision: str, wanted: str = _WANTED["model.learning_rate"]) -> None:
    """Finite, positive and representable in the run's precision: 1e300 overflows float32 at the first step, and
    a rate below the smallest normal float32 rounds to 0 (training that silently never learns). ``wanted`` is what
    the error says the flag must be."""
    info = torch.finfo(DTYPES[precision])
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be {wanted}, got {value}")
    if not info.tiny <= value <= info.max:
        raise UsageError(
            f"{flag} {value} cannot be represented in {precision} (from {info.tiny:.3g} to {info.max:.3g}); "
            "use a value in that range, or --trainer.precision 64-true"
        )


def zero_or_positive_float(flag: str, value: float, precision: str) -> None:
    """0 or what ``positive_float`` accepts: an Adagrad accumulator's start, 0 being min-char-rnn's."""
    if value != 0:
        positive_float(flag, value, precision, _WANTED["model.initial_accumulator_value"])


def flags(config) -> None:
    """Every flag value Lightning or charrnn would accept and then crash on, refused before the text is read (and
    before LightningCLI seeds: a seed out of range crashes there). One check and one message per value; the
    network's own fields (sizes, cell, dropout) are ``Architecture``'s, which also checks a checkpoint's."""
    if config["checkpoint_every"] < 1:
        raise UsageError(f"--checkpoint_every must be a positive integer, got {config['checkpoint_every']}")
    if config["threads"] is not None and config["threads"] < 1:
        raise UsageError(f"--threads must be a positive integer, got {config['threads']}")
    trainer, data, model = config["trainer"], config["data"], config["model"]
    precision = str(trainer["precision"] or "32-true")
    if precision not in DTYPES:
        # Measured: bf16-true runs but the smoothed loss and Adagrad's sums of squares stop growing in 16 bits
        # (tinyshakespeare, H=100, B=32, 600 steps: val loss 2.57 against 2.38 in float32).
        raise UsageError(
            f"--trainer.precision {precision} is not supported: the hand-written BPTT computes in the parameters' "
            "dtype and is not written for autocast, and in 16 bits Adagrad's accumulators and the smoothed loss "
            "stall; use 32-true or 64-true"
        )
    for name in ("max_steps", "max_epochs"):
        if trainer[name] is not None and trainer[name] != -1 and trainer[name] < 1:
            raise UsageError(f"--trainer.{name} must be a positive integer, or -1 for no limit, got {trainer[name]}")
    for name in ("log_every_n_steps", "val_check_interval"):  # not a fraction of an epoch: charrnn counts steps
        if trainer[name] is not None and not (type(trainer[name]) is int and trainer[name] > 0):
            raise UsageError(f"--trainer.{name} must be a positive whole number of steps, got {trainer[name]}")
    seed(config["seed_everything"])
    for name in ("seq_length", "batch_size"):
        if data[name] < 1:
            raise UsageError(f"--data.{name} must be a positive integer, got {data[name]}")
    if not 0 <= data["val_fraction"] < 1:
        raise UsageError(f"--data.val_fraction must be {_WANTED['data.val_fraction']}, got {data['val_fraction']}")
    for name in ("learning_rate", "clip"):
        positive_float(f"--model.{name}", model[name], precision)
    zero_or_positive_float("--model.initial_accumulator_value", model["initial_accumulator_value"], precision)
    if model["sample_length"] < 1:
        raise UsageError(f"--model.sample_length must be a positive integer, got {model['sample_length']}")
    if model["print_every"] < 0:
        raise UsageError(f"--model.print_every must be 0 (off) or a positive integer, got {model['print_every']}")
    _optimization(config["optimizer"], config["lr_scheduler"], precision)
    _early_stopping(trainer["callbacks"], data["val_fraction"])
    devices = trainer["devices"]
    fits_in_memory(config, devices if type(devices) is int and devices > 0 else 1)


def _optimization(optimizer, scheduler, precision: str) -> None:
    if scheduler is None:
        pass
    elif optimizer is None:
        raise UsageError(
            "--lr_scheduler needs --optimizer; for min-char-rnn's Adagrad: --optimizer charrnn.optim.Adagrad "
            "--optimizer.lr X"
        )
    elif issubclass(_class(scheduler), torch.optim.lr_scheduler.ReduceLROnPlateau):
        # It would step at validations, and a last.ckpt written just before one could not resume it exactly.
        raise UsageError(
            "--lr_scheduler ReduceLROnPlateau is not supported: use a schedule that counts steps (e.g. StepLR)"
        )
    arguments = {} if optimizer is None else optimizer["init_args"]
    if arguments.get("lr") is not None:
        positive_float("--optimizer.lr", arguments["lr"], precision)
    if arguments.get("initial_accumulator_value") is not None:  # charrnn's Adagrad and torch's
        flag = "--optimizer.initial_accumulator_value"
        zero_or_positive_float(flag, arguments["initial_accumulator_value"], precision)
    if optimizer:
        with _aside():  # LightningCLI builds both when it builds the model: here, before the text is read
            _build_optimization(optimizer, scheduler, precision)


def _build_optimization(optimizer, scheduler, precision: str):
    """``(optimizer, schedule or None)`` as ``--optimizer`` and ``--lr_scheduler`` build them, on a throwaway weight
    the optimizer has stepped a few times: an argument torch refuses (at building or at the first step) is one
    line naming the flag group, for any class a user can name."""
    flag = f"--optimizer {optimizer['class_path']}"
    weight = torch.zeros(2, dtype=DTYPES[precision], requires_grad=True)
    try:
        built = _class(optimizer)([weight], **(optimizer.get("init_args") or {}))
        for _ in range(3):  # a gradient of 1 and one of 0 (where an eps of 0 divides 0 by 0)
            weight.grad = torch.tensor([1.0, 0.0], dtype=weight.dtype)
            built.step()
    except Exception as e:  # whatever this class raises with these arguments
        raise UsageError(f"{flag}: {_reason(e)}{_suspects(optimizer)}") from None
    if not weight.isfinite().all():
        raise UsageError(f"{flag}: its steps turn the weights non-finite{_suspects(optimizer)}")
    if not scheduler:
        return built, None
    try:
        return built, _class(scheduler)(built, **(scheduler.get("init_args") or {}))
    except Exception as e:
        raise UsageError(f"--lr_scheduler {scheduler['class_path']}: {_reason(e)}{_suspects(scheduler)}") from None


@contextlib.contextmanager
def _aside():
    """Quiet (a schedule stepped without a real optimizer step warns), and the run's random numbers untouched."""
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        yield


def dry_run(config, steps: int | None) -> None:
    """Step ``--lr_scheduler`` through the run's ``steps`` (None: no limit; at most DRY_RUN_STEPS) on a throwaway
    optimizer, watching the rate: a schedule that fails at step 6 of 20, or a rate that turns negative, non-finite
    or stays 0, is one line before anything is written instead of a traceback mid-run. Needs the run's length, so
    it runs once the text is read (flags() has built the classes already)."""
    scheduler = config["lr_scheduler"]
    if not scheduler:
        return
    flag, suspects = f"--lr_scheduler {scheduler['class_path']}", _suspects(scheduler)
    steps = min(steps or DRY_RUN_STEPS, DRY_RUN_STEPS)
    precision = str(config["trainer"]["precision"] or "32-true")
    with _aside():
        built, schedule = _build_optimization(config["optimizer"], scheduler, precision)
        tiny, zero_since = torch.finfo(DTYPES[precision]).tiny, None
        for step in range(steps):  # the rate of step ``step``: the schedule steps after every optimizer step
            rates = [group["lr"] for group in built.param_groups]
            for rate, problem in zip(rates, map(rate_problem, rates)):
                if problem:
                    raise UsageError(f"{flag}: the learning rate at step {step} is {rate}, {problem}{suspects}")
            zero_since = (step if zero_since is None else zero_since) if max(rates) < tiny else None
            try:
                schedule.step()
            except Exception as e:
                raise UsageError(f"{flag} fails at step {step + 1} of {steps}: {_reason(e)}{suspects}") from None
    if zero_since is not None and zero_since < steps - 1:  # a rate of 0 at the last step alone ends a schedule
        raise UsageError(
            f"{flag}: the learning rate is 0 (in {precision}) from step {zero_since} "
            f"through step {steps - 1}, so those steps would train nothing{suspects or '; check its arguments'}"
        )


def _reason(e: Exception) -> str:
    """torch's message on one line (its type when it has none); a division by 0 said as the cause."""
    if isinstance(e, ZeroDivisionError):
        return "an argument of 0 divides (a step count, a period or a factor)"
    return " ".join(str(e).split())[:300] or type(e).__name__


def _suspects(chosen) -> str:
    """The numeric arguments set at 0 or below (not the class's defaults), the usual cause when a class refuses
    its arguments or its rate goes wrong (eps -1, a negative eta_min, gamma 0, T_max 0)."""
    defaults = inspect.signature(_class(chosen)).parameters
    found = [f"{name} {value}" for name, value in dict(chosen.get("init_args") or {}).items()
             if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > 0
             and (name not in defaults or defaults[name].default != value)]  # fmt: skip
    return f" (set at 0 or below: {', '.join(found)})" if found else ""


def _early_stopping(callbacks, val_fraction: float) -> None:
    """Lightning's EarlyStopping as charrnn can run it: on a validation metric charrnn logs (lower is better), after
    each validation (charrnn validates every --trainer.val_check_interval steps, not at epoch ends)."""
    chosen = callbacks if isinstance(callbacks, list) else [] if callbacks is None else [callbacks]
    for callback in chosen:
        if not issubclass(_class(callback), EarlyStopping):
            continue
        arguments = callback.get("init_args") or {}  # a subclass may take other arguments: EarlyStopping's defaults
        monitor, mode, patience = arguments.get("monitor"), arguments.get("mode", "min"), arguments.get("patience", 3)
        if monitor not in VALIDATION_METRICS:
            watched = " or ".join(VALIDATION_METRICS)
            raise UsageError(f"--trainer.callbacks.monitor {monitor}: EarlyStopping can watch {watched}")
        if mode != "min":
            raise UsageError(f"--trainer.callbacks.mode must be min (a lower {monitor} is better), got {mode}")
        if patience < 0:
            raise UsageError(f"--trainer.callbacks.patience must be 0 or a positive integer, got {patience}")
        if arguments.get("check_on_train_epoch_end"):
            raise UsageError(
                "--trainer.callbacks.check_on_train_epoch_end must be false: charrnn validates every "
                "--trainer.val_check_interval steps, and EarlyStopping checks after each validation"
            )
        if val_fraction == 0:
            raise UsageError("EarlyStopping watches the validation loss, which --data.val_fraction 0 turns off")


def _class(chosen) -> type:
    """The class a class-path setting (``--optimizer``, ``--lr_scheduler``) names; the parser imported it already."""
    module, name = chosen["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def memory_needed(arch, streams: int, seq_length: int, sample_length: int, precision: str) -> int:
    """Bytes a training process needs at least: the weights four times over (weights, gradients, Adagrad's memory,
    the initialisation's temporary), the activations of one window, those of a validation chunk (64 streams of
    256), and the samples' text. Per character, a layer of G gates keeps about 3G + 3 vectors of H for its
    backward (the tanh RNN: 6; the input projection, the gates' factors, states, dropout mask and gradients) and
    its forward alone G + 1; the output layer two (training) or three (validation) of V."""
    item = DTYPES[precision].itemsize
    weights = arch.num_weights()
    H, V, G, L = arch.hidden_size, arch.vocab_size, arch.cell_math.GATES, arch.num_layers
    window = streams * seq_length * (L * (3 * G + 3) * H + 2 * V)
    validation = 64 * 256 * (L * (G + 1) * H + 3 * V)
    return item * (4 * weights + max(window, validation)) + 64 * sample_length


def available_memory() -> int | None:
    """Bytes this process can still allocate: the kernel's MemAvailable, capped by a cgroup (container) limit."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit.isdigit():
                found.append(int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def fits_in_memory(config, processes: int) -> None:
    data, model = config["data"], config["model"]
    precision = str(config["trainer"]["precision"] or "32-true")
    # The vocabulary is not known before the text is read: one character stands for it (the hidden layers dominate).
    arch = Architecture(1, model["hidden_size"], model["cell"], model["num_layers"], model["dropout"])
    needed = processes * memory_needed(arch, data["batch_size"], data["seq_length"], model["sample_length"], precision)
    free = available_memory()
    if free is not None and needed > free:
        each = f" ({processes} processes)" if processes > 1 else ""
        plain = arch.num_layers == 1 and arch.cell == Architecture.cell  # the default cell
        layers = "" if plain else f" ({arch.num_layers} layers of {arch.cell})"
        raise UsageError(
            f"--model.hidden_size {model['hidden_size']}{layers} with --data.batch_size {data['batch_size']} and "
            f"--data.seq_length {data['seq_length']} needs at least {_size(needed)} of memory{each}, and this "
            f"machine has {_size(free)} available; use smaller sizes"
        )


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "bytes" else f"{n} bytes"
        n /= 1024


# Flags whose value may be a YAML file: the whole config, or one group's settings (``--model model.yaml``).
CONFIG_FLAGS = ("--config", "--data", "--model", "--trainer")


def config_files(args: list[str]) -> list[str]:
    """``args`` with each config file (``--config FILE``, ``--model FILE`` ...) checked: a regular, readable, UTF-8
    YAML mapping. An empty file means no settings and is dropped (the parser would call it an unexpected config).

    Any value naming a pipe, device or socket is refused first: the parser opens a path given for a flag that
    also takes a settings file (``--trainer.logger``), and would block on a FIFO or read ``/dev/zero`` forever."""
    for i, arg in enumerate(args):
        flag, sep, value = arg.partition("=")
        if not (arg.startswith("--") and sep):
            flag, value = (args[i - 1] if i else "an argument"), arg
        if "\x00" in arg:  # only possible in-process (a command line cannot hold one); no file name can
            raise UsageError(f"{flag}: a value cannot contain a NUL character")
        try:
            mode = os.stat(value).st_mode
        except OSError:  # not a path
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UsageError(
                f"{flag} {value} is not a regular file (a pipe, a device or a socket); pass a regular file"
            )
    out, i = [], 0
    while i < len(args):
        flag, _, value = args[i].partition("=")
        if flag in CONFIG_FLAGS and (value or i + 1 < len(args)):
            path = value if value else args[i + 1]
            i += 1 if value else 2
            if not os.path.lexists(path) or _settings(path, flag) is not None:  # not a file: the parser decides
                out += [flag, path]
        else:
            out.append(args[i])
            i += 1
    return out


def _settings(path: str, flag: str):
    regular_file(path, f"{flag} file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {flag} file {path} ({e.strerror})") from None
    try:
        settings = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{flag} file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None
    except yaml.YAMLError as e:
        where = f" (line {e.problem_mark.line + 1})" if getattr(e, "problem_mark", None) else ""
        raise UsageError(f"{flag} file {path} is not valid YAML{where}") from None
    if settings is not None and not isinstance(settings, dict):
        raise UsageError(
            f"{flag} file {path} must hold settings as YAML (name: value lines, like configs/default.yaml)"
        )
    return settings


def values_not_flags(args: list[str]) -> list[str]:
    """``args`` with a negative number after a flag joined to it (``--optimizer.lr=-1e-3``): argparse takes
    ``-1e-3``, ``-inf`` or ``-1e300`` for a flag of its own, and says the flag before it lacks a value."""
    out = []
    for arg in map(str, args):
        if out and out[-1].startswith("--") and "=" not in out[-1] and arg.startswith("-") and _number(arg) is not None:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _class_problem(message: str) -> tuple[str, str] | None:
    """``(class path, what is wrong with its arguments)`` when the parser refuses a class setting's arguments
    (``--optimizer torch.optim.SGD --optimizer.nesterov 12``): its message nests the argument's own refusal."""
    lines = message.splitlines()
    for i, line in enumerate(lines):
        found = re.search(r"Problem with given class_path '([^']+)':", line)
        if found:
            indent, body = len(line) - len(line.lstrip()), []
            for nested in lines[i + 1 :]:
                if nested.strip() and len(nested) - len(nested.lstrip()) <= indent:
                    break
                body.append(nested)
            return found.group(1), "\n".join(body)
    return None


def _given(flag: str, args) -> str | None:
    """The value ``flag`` has on the command line, as typed (``"2"`` with its quotes), if it is there."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{flag}="):
            value = arg[len(flag) + 1 :]
    return value


def plain_parser_error(message: str, args=()) -> str:
    """The parser's refusal in the user's words: ``--KEY must be <what it accepts>, got VALUE`` (the value as
    typed in ``args``, the command line, when it is there) instead of Python type reprs (``<class 'float'>``,
    ``typing.Literal[...]``) or the parser's own objects (``NestedArg(...)``, ``Namespace(...)``)."""
    args = [str(arg) for arg in args]
    if "--> data.vocab" in message:  # the link's target (cli.py): no flag of its own
        return "--data.vocab is no flag: the vocabulary is the text's, led by --init_from's checkpoint's"
    key = re.search(r'Parser key "([^"]+)"', message)
    problem = _class_problem(message) if key else None
    if problem:
        group, (path, body) = key.group(1), problem
        required = re.search(r"the following arguments are required: (.+)", body)
        if required:
            needed = " and ".join(f"--{group}.{name.strip()}" for name in required.group(1).split(","))
            return f"--{group} {path} needs {needed}"
        if re.search(r'Parser key "', body):
            said = plain_parser_error(re.sub(r'Parser key "', f'Parser key "{group}.', body, count=1), args)
            return said.replace("python train.py --help", f"python train.py --{group}.help {path}")
        return f"--{group} {path}: {' '.join(body.split())}"
    message = " ".join(message.split())
    parts = re.split(r"(?:Got|Given) value:", message)
    if not key:
        return message
    problem = re.search(r"Problem with given class_path '([\w.]+)': (.*?)(?= - |$)", message)
    if key.group(1) == "trainer.callbacks" and problem:  # a callback's own setting: said as its flag
        inner = re.match(r'Parser key "([^"]+)": (.*)', problem.group(2))
        if inner:
            return plain_parser_error(f'Parser key "trainer.callbacks.{inner.group(1)}": {inner.group(2)}')
        return f"--trainer.callbacks {problem.group(1).rsplit('.', 1)[-1]}: {problem.group(2)}"
    value = re.split(r" - | Given value type:", parts[-1])[0].strip() if len(parts) > 1 else None
    flag = f"--{key.group(1)}"
    value = _given(flag, args) if value is not None and _given(flag, args) is not None else value
    got = None if value is None else value or "an empty value"
    wanted = _WANTED.get(key.group(1))
    if wanted is None and not re.search(r"<class '[\w]+\.[\w.]+'>|import path", message):  # only plain types
        words = [
            _TYPE_WORDS[name] for name in re.findall(r"Expected a <class '(\w+)'>", message) if name in _TYPE_WORDS
        ]
        words += [
            "one of " + ", ".join(re.findall(r"'([^']*)'", literal))
            for literal in re.findall(r"Expected a typing\.Literal\[(.*?)\]", message)
        ]
        if "a number" in words and got is not None and _is_non_finite(got):
            words = ["a finite number"]
        wanted = " or ".join(dict.fromkeys(words))
    if wanted and got is not None:
        return f"{flag} must be {wanted}, got {got}"
    if got is not None:
        return f"{flag} cannot be {got}; python train.py --help lists what it accepts"
    detail = re.sub(r"Parser key \"[^\"]+\":\s*", "", message)
    return f"{flag}: {detail}"


def _is_non_finite(text: str) -> bool:
    return _number(text) is not None and not math.isfinite(_number(text))
