"""TensorBoard compares runs: HPARAMS holds every setting that changes the result, with the validation loss (last and
best) as its metrics, no placeholder, and a resumed run stays one row."""

import glob
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.train_helpers import tiny_args, train

SESSION_START = "_hparams_/session_start_info"


def read_run(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_of(acc: EventAccumulator) -> tuple[dict, list[str]]:
    """The HPARAMS row (setting -> value) and the names of its metrics, as TensorBoard's plugin reads them."""
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content[SESSION_START]).session_start_info
    row = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    return row, [info.name.tag for info in experiment.metric_infos]


def hparams_writes(run_dir) -> int:
    """How many times the settings were written into the run's event files."""
    return sum(
        value.tag == SESSION_START
        for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
        for event in EventFileLoader(path).Load()
        for value in event.summary.value
    )


def test_hparams_row_with_every_setting_and_the_validation_loss(text, tmp_path):
    scheduler = ("--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", 7)
    optimizer = ("--optimizer", "torch.optim.Adam", "--optimizer.lr", 0.003)
    assert (
        train(tiny_args(text, tmp_path, *optimizer, *scheduler, "--seed_everything", 7, "--model.clip", 2, steps=20))
        == 0
    )
    run_dir = tmp_path / "lightning_logs" / "version_0"
    acc = read_run(run_dir)
    row, metrics = hparams_of(acc)
    assert metrics == ["val/loss", "val/loss_best"]
    expected = {
        "model.cell": "rnn", "model.hidden_size": 16, "model.num_layers": 1, "model.dropout": 0.0, "model.clip": 2.0,
        "optimizer": "torch.optim.Adam", "optimizer.lr": 0.003, "optimizer.weight_decay": 0.0,
        "lr_scheduler": "torch.optim.lr_scheduler.StepLR", "lr_scheduler.step_size": 7, "lr_scheduler.gamma": 0.1,
        "data.batch_size": 2, "data.seq_length": 8, "data.val_fraction": 0.1, "data.text": "input.txt",
        "seed_everything": 7, "trainer.precision": "32-true", "processes": 1,
    }  # fmt: skip
    assert {name: row.get(name) for name in expected} == pytest.approx(expected)
    assert not [name for name in row if name.startswith("_") or "instantiator" in name or "path" in name], row
    scalars = acc.Tags()["scalars"]
    assert "hp_metric" not in scalars and all(name in scalars for name in metrics)
    losses = [event.value for event in acc.Scalars("val/loss")]
    assert [event.value for event in acc.Scalars("val/loss_best")] == [min(losses[: i + 1]) for i in range(len(losses))]


def test_default_optimizer_shows_its_learning_rate(text, tmp_path):
    assert train(tiny_args(text, tmp_path, "--model.learning_rate", 0.05, steps=10)) == 0
    row, _ = hparams_of(read_run(tmp_path / "lightning_logs" / "version_0"))
    assert row["optimizer"] == "charrnn.optim.Adagrad" and row["optimizer.lr"] == pytest.approx(0.05)
    assert row["lr_scheduler"] == "none"


def test_a_resumed_run_stays_one_row(text, tmp_path):
    assert train(tiny_args(text, tmp_path, steps=20)) == 0
    assert train(tiny_args(text, tmp_path, "--ckpt_path", "last", steps=40)) == 0
    assert os.listdir(tmp_path / "lightning_logs") == ["version_0"]
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert hparams_writes(run_dir) == 1
    acc = read_run(run_dir)
    assert hparams_of(acc)[1] == ["val/loss", "val/loss_best"]
    assert [event.step for event in acc.Scalars("val/loss")] == [10, 20, 30, 40]
    assert acc.Scalars("val/loss_best")[-1].step == 40
    assert "hp_metric" not in acc.Tags()["scalars"]
