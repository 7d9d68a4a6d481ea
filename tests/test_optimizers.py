"""--optimizer and --lr_scheduler (LightningCLI's own flags, and their YAML twins) with the hand-written gradients:
schedules step with every optimizer step, resumes are exact, and the learning rate of a resume is the flags'."""

import pytest
import torch

from charrnn import checkpoint
from tests.train_helpers import assert_one_line_error, newest, snapshot, tiny_args, train

N = 50
ADAM = ("--optimizer", "torch.optim.Adam", "--optimizer.lr", 0.01)
STEP_LR = (
    "--lr_scheduler",
    "torch.optim.lr_scheduler.StepLR",
    "--lr_scheduler.step_size",
    7,
    "--lr_scheduler.gamma",
    0.5,
)


def assert_equal_state(a, b) -> None:
    """Bitwise, every tensor and number of what a resume restores: weights, optimizer, schedule, streams."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal_state(x, y)
    else:
        assert a == b


def training_state(ckpt: dict) -> dict:
    keys = ("global_step", "state_dict", "optimizer_states", "lr_schedulers")
    return {**{key: ckpt[key] for key in keys}, "hidden_state": ckpt["charrnn"]["hidden_state"]}


@pytest.mark.parametrize("k", [17, 21], ids=["mid-schedule", "at-a-schedule-step"])
def test_adam_with_a_step_schedule_resumes_bitwise_exact(text, tmp_path, k):
    assert train(tiny_args(text, tmp_path / "straight", *ADAM, *STEP_LR, steps=N)) == 0
    assert train(tiny_args(text, tmp_path / "resumed", *ADAM, *STEP_LR, steps=k)) == 0
    assert train(tiny_args(text, tmp_path / "resumed", *ADAM, *STEP_LR, "--ckpt_path", "last", steps=N)) == 0
    straight, resumed = newest(tmp_path / "straight"), newest(tmp_path / "resumed")
    assert_equal_state(training_state(straight), training_state(resumed))
    # The schedule stepped once per optimizer step (not per epoch nor per trainer batch).
    assert straight["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5 ** (N // 7))
    assert set(straight["optimizer_states"][0]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_yaml_twins_train_the_same_run(text, tmp_path):
    config = tmp_path / "adam.yaml"
    config.write_text(
        "optimizer:\n  class_path: torch.optim.Adam\n  init_args:\n    lr: 0.01\n"
        "lr_scheduler:\n  class_path: torch.optim.lr_scheduler.StepLR\n  init_args:\n    step_size: 7\n    gamma: 0.5\n"
    )
    assert train(tiny_args(text, tmp_path / "flags", *ADAM, *STEP_LR, steps=20)) == 0
    assert train(tiny_args(text, tmp_path / "yaml", "--config", config, steps=20)) == 0
    assert_equal_state(training_state(newest(tmp_path / "flags")), training_state(newest(tmp_path / "yaml")))


def test_a_resume_takes_the_base_rate_from_the_flags_and_keeps_the_schedule(text, tmp_path):
    assert train(tiny_args(text, tmp_path, *ADAM, *STEP_LR, steps=10)) == 0
    lower = ("--optimizer", "torch.optim.Adam", "--optimizer.lr", 0.004)
    assert train(tiny_args(text, tmp_path, *lower, *STEP_LR, "--ckpt_path", "last", steps=12)) == 0
    ckpt = newest(tmp_path)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.004 * 0.5)  # one decay at step 7
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [0.004]


def test_a_checkpoint_resumes_only_with_its_own_optimizer_and_schedule(text, tmp_path, capsys):
    assert train(tiny_args(text, tmp_path, steps=10)) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert train(tiny_args(text, tmp_path, *ADAM, "--ckpt_path", "last", steps=12)) == 2
    assert_one_line_error(capsys.readouterr().err, "trained with optimizer charrnn.optim.Adagrad, not torch.optim.Adam")
    same_class = ("--optimizer", "charrnn.optim.Adagrad", "--optimizer.lr", 0.1)
    assert train(tiny_args(text, tmp_path, *same_class, *STEP_LR, "--ckpt_path", "last", steps=12)) == 2
    assert_one_line_error(capsys.readouterr().err, "lr_scheduler none, not torch.optim.lr_scheduler.StepLR")
    assert snapshot(tmp_path) == before
    # The default optimizer by its class path is the default: the run continues.
    assert train(tiny_args(text, tmp_path, *same_class, "--ckpt_path", "last", steps=12)) == 0
    assert checkpoint.load(str(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"))["global_step"] == 12


@pytest.mark.parametrize(
    "flags, fragments",
    [
        ((*ADAM, "--model.learning_rate", 0.1), ["--model.learning_rate", "--optimizer.lr"]),
        (STEP_LR, ["--lr_scheduler needs --optimizer"]),
        ((*ADAM, "--lr_scheduler", "ReduceLROnPlateau", "--lr_scheduler.monitor", "val/loss"), ["not supported"]),
        (("--optimizer", "torch.optim.Adam", "--optimizer.lr", 1e300), ["--optimizer.lr", "cannot be represented"]),
        (("--optimizer", "torch.optim.SGD", "--optimizer.lr", -0.5), ["--optimizer.lr must be"]),
        ((*ADAM, "--model.initial_accumulator_value", 0.1), ["--model.initial_accumulator_value", "--optimizer"]),
        (
            ("--model.initial_accumulator_value", -0.1),
            ["--model.initial_accumulator_value must be 0 or a finite positive number, got -0.1"],
        ),
        (("--model.initial_accumulator_value", "nan"), ["--model.initial_accumulator_value must be"]),
        (("--model.initial_accumulator_value", "inf"), ["--model.initial_accumulator_value must be"]),
        (("--model.initial_accumulator_value", 1e300), ["--model.initial_accumulator_value", "cannot be represented"]),
        (
            ("--optimizer", "charrnn.optim.Adagrad", "--optimizer.initial_accumulator_value", -1),
            ["--optimizer.initial_accumulator_value must be"],
        ),
        (
            ("--optimizer", "torch.optim.Adagrad", "--optimizer.initial_accumulator_value", -1),
            ["--optimizer.initial_accumulator_value must be"],
        ),
    ],
    ids=[
        "learning_rate-with-optimizer",
        "scheduler-alone",
        "plateau",
        "huge-lr",
        "negative-lr",
        "accumulator-with-optimizer",
        "negative-accumulator",
        "nan-accumulator",
        "inf-accumulator",
        "huge-accumulator",
        "negative-optimizer-accumulator",
        "negative-torch-accumulator",
    ],
)
def test_ambiguous_or_bad_optimizer_flags_are_one_line(text, tmp_path, capsys, flags, fragments):
    assert train(tiny_args(text, tmp_path, *flags, steps=5)) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_model_learning_rate_in_a_config_file_with_an_optimizer_is_refused(text, tmp_path, capsys):
    config = tmp_path / "both.yaml"
    config.write_text("model:\n  learning_rate: 0.1\noptimizer:\n  class_path: torch.optim.Adam\n")
    assert train(tiny_args(text, tmp_path / "D", "--config", config, steps=5)) == 2
    assert_one_line_error(capsys.readouterr().err, "--optimizer.lr")


@pytest.mark.parametrize(
    "flags",
    [
        ("--model.initial_accumulator_value", 0.5),
        ("--optimizer", "charrnn.optim.Adagrad", "--optimizer.initial_accumulator_value", 0.5),
    ],
)
def test_adagrads_sums_of_squares_start_at_the_initial_accumulator(text, tmp_path, flags):
    assert train(tiny_args(text, tmp_path, *flags, steps=1)) == 0
    optimizer = newest(tmp_path)["optimizer_states"][0]
    assert optimizer["param_groups"][0]["initial_accumulator_value"] == 0.5
    # After one step mem = 0.5 + g^2: at least 0.5 everywhere, above it where the gradient was not 0.
    mems = torch.cat([state["mem"].flatten() for state in optimizer["state"].values()])
    assert mems.min() >= 0.5 and (mems > 0.5).any()


SCHEDULE = "torch.optim.lr_scheduler."
SGD = ("--optimizer", "torch.optim.SGD", "--optimizer.lr", 0.1)


def schedule(name, *arguments):
    return ("--lr_scheduler", SCHEDULE + name, *arguments)


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (("--optimizer", "torch.optim.Adam", "--optimizer.betas", "[1.5,0.999]"),
         ["--optimizer torch.optim.Adam: Invalid beta parameter at index 0: 1.5"]),
        ((*ADAM, "--optimizer.weight_decay", -1),
         ["--optimizer torch.optim.Adam: Invalid weight_decay", "weight_decay -1"]),
        ((*ADAM, "--optimizer.eps", -1), ["Invalid epsilon value", "eps -1"]),
        ((*ADAM, "--optimizer.eps", 0), ["turn the weights non-finite", "eps 0"]),
        ((*SGD, "--optimizer.momentum", -1), ["--optimizer torch.optim.SGD: Invalid momentum value: -1"]),
        (("--optimizer", "charrnn.optim.Adagrad", "--optimizer.eps", -1), ["charrnn.optim.Adagrad: Invalid epsilon"]),
        (("--optimizer", "torch.optim.LBFGS"), ["--optimizer torch.optim.LBFGS", "closure"]),
        ((*SGD, *schedule("OneCycleLR", "--lr_scheduler.max_lr", 0.1)),
         ["OneCycleLR: You must define either total_steps"]),
        ((*SGD, *schedule("OneCycleLR", "--lr_scheduler.max_lr", 0.1, "--lr_scheduler.total_steps", 0)),
         ["OneCycleLR: Expected positive integer total_steps"]),
        ((*SGD, *schedule("OneCycleLR", "--lr_scheduler.max_lr", 0.1, "--lr_scheduler.total_steps", 5)),
         ["OneCycleLR fails at step 6 of 20: Tried to step 6 times"]),
        ((*SGD, *schedule("LinearLR", "--lr_scheduler.end_factor", -1)), ["LinearLR: Ending multiplicative factor"]),
        ((*SGD, *schedule("StepLR", "--lr_scheduler.step_size", 0)), ["StepLR fails at step 1 of 20", "step_size 0"]),
        ((*SGD, *schedule("CosineAnnealingLR", "--lr_scheduler.T_max", 0)), ["CosineAnnealingLR fails", "T_max 0"]),
        ((*SGD, *schedule("ConstantLR", "--lr_scheduler.factor", 0)), ["ConstantLR fails at step 5", "factor 0"]),
        ((*SGD, *schedule("StepLR", "--lr_scheduler.step_size", 2, "--lr_scheduler.gamma", -1)),
         ["StepLR: the learning rate at step 2 is -0.1, negative", "gamma -1"]),
        ((*SGD, *schedule("CosineAnnealingLR", "--lr_scheduler.T_max", 20, "--lr_scheduler.eta_min", -1)),
         ["CosineAnnealingLR: the learning rate at step 4 is -", "eta_min -1"]),
        ((*SGD, *schedule("StepLR", "--lr_scheduler.step_size", 5, "--lr_scheduler.gamma", 0)),
         ["StepLR: the learning rate is 0 (in 32-true) from step 5 through step 19", "gamma 0"]),
        ((*SGD, *schedule("ExponentialLR", "--lr_scheduler.gamma", 1e200)),
         ["the learning rate at step 2 is inf, not finite"]),
    ],
    ids=["betas", "weight_decay", "eps", "eps-0", "momentum", "charrnn-eps", "lbfgs", "onecycle-no-total",
         "onecycle-total-0", "onecycle-short", "linear-end", "step_size-0", "T_max-0", "constant-factor-0",
         "gamma-negative", "eta_min-negative", "gamma-0", "gamma-inf"],
)  # fmt: skip
def test_optimizer_and_schedule_arguments_are_tried_before_anything_is_written(
    text, tmp_path, capsys, flags, fragments
):
    assert train(tiny_args(text, tmp_path, *flags, steps=20)) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flags",
    [
        schedule("CosineAnnealingLR", "--lr_scheduler.T_max", 19),  # 0 at the last step: a schedule's end
        schedule("OneCycleLR", "--lr_scheduler.max_lr", 0.1, "--lr_scheduler.total_steps", 20),
        # An epoch of 44 windows is 5 trainer batches of 10 (data.TrainBatches): 50 steps.
        schedule("OneCycleLR", "--lr_scheduler.max_lr", 0.1, "--lr_scheduler.total_steps", 50,
                 "--trainer.max_steps", -1, "--trainer.max_epochs", 1),
    ],
    ids=["cosine-to-0", "onecycle", "onecycle-by-epochs"],
)  # fmt: skip
def test_schedules_that_fit_the_run_train(text, tmp_path, flags):
    assert train(tiny_args(text, tmp_path, *SGD, *flags, steps=20)) == 0
    assert newest(tmp_path)["global_step"] in (20, 50)


def test_a_rate_turning_negative_in_training_stops_before_that_step(text, tmp_path, capsys, monkeypatch):
    """Beyond the steps tried up front (here 3) the rate is checked as training reaches it."""
    from charrnn import checks

    monkeypatch.setattr(checks, "DRY_RUN_STEPS", 3)
    flags = (
        *SGD,
        *schedule("StepLR", "--lr_scheduler.step_size", 5, "--lr_scheduler.gamma", -1),
        "--checkpoint_every",
        2,
    )
    assert train(tiny_args(text, tmp_path, *flags, "--trainer.log_every_n_steps", 50, steps=20)) == 2
    line = assert_one_line_error(
        capsys.readouterr().err,
        "training stopped at step 5: the --lr_scheduler sets the learning rate -0.1, negative",
        "(step 4) is the last good checkpoint",
        "--lr_scheduler",
    )
    assert "lower" not in line
    ckpt = newest(tmp_path)
    assert ckpt["global_step"] == 4 and ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1


def test_a_diverged_run_with_an_optimizer_names_its_rate_flag(text, tmp_path, capsys):
    assert train(tiny_args(text, tmp_path, "--optimizer", "torch.optim.SGD", "--optimizer.lr", 1e30, steps=20)) == 2
    line = assert_one_line_error(capsys.readouterr().err, "diverged at step", "lower --optimizer.lr")
    assert "--model.learning_rate" not in line
