"""train.py end to end: a short run leaves last.ckpt and the TensorBoard curves and sample, read back by TensorBoard."""

import glob

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charrnn import checkpoint
from charrnn.sampling import generate
from tests.train_helpers import ROOT, run_train_py, shakespeare_path, tiny_args, train


def read_events(run_dir):
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_short_run_on_tinyshakespeare_writes_checkpoint_and_tensorboard(tmp_path):
    shakespeare = shakespeare_path()
    if shakespeare is None:
        pytest.skip("tinyshakespeare.txt not present in ../shared/data")
    out = tmp_path / "D"
    code, _, err = run_train_py(
        ["--data.path", shakespeare, "--trainer.max_steps", 300, "--trainer.default_root_dir", out]
    )
    assert code == 0, err[-3000:]
    run_dir = out / "lightning_logs" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    acc = read_events(str(run_dir))
    scalars = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/smooth_loss", "val/loss", "val/bpc"):
        assert tag in scalars, f"{tag} missing from {scalars}"
    val = acc.Scalars("val/loss")[-1]
    # A final validation ran at the last step (Lightning labels it with the batch index, 299), and it learned.
    assert val.step >= 299 and 1.0 < val.value < 4.0
    bpc = acc.Scalars("val/bpc")[-1].value
    assert bpc == pytest.approx(val.value / 0.6931471805599453, rel=1e-5)
    texts = [t for t in acc.Tags()["tensors"] if "sample" in t]
    assert texts, acc.Tags()
    sample = acc.Tensors(texts[0])[-1].tensor_proto.string_val[0].decode("utf-8")
    assert len(sample.strip()) > 100


def test_default_run_without_data_uses_python_docs(tmp_path):
    """On a fresh clone there is no data/raw/input.txt: train.py says so and trains on pydoc_data.topics."""
    code, out, err = run_train_py(
        ["--trainer.max_steps", "20", "--trainer.default_root_dir", tmp_path / "D", "--model.hidden_size", "32"],
        cwd=tmp_path,
    )
    assert code == 0, err[-3000:]
    assert "pydoc_data.topics" in out
    assert glob.glob(str(tmp_path / "D" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"))


def test_min_char_rnn_config_prints_like_the_original(tmp_path):
    text = tmp_path / "input.txt"
    text.write_text("hello world, this is a tiny corpus for min-char-rnn.\n" * 200, encoding="utf-8")
    code, out, err = run_train_py(
        ["--config", ROOT / "configs" / "min-char-rnn.yaml", "--data.path", text,
         "--trainer.max_steps", "201", "--trainer.default_root_dir", tmp_path / "D"],
    )  # fmt: skip
    assert code == 0, err[-3000:]
    lines = out.splitlines()
    iters = [line for line in lines if line.startswith("iter ")]
    assert [line.split(",")[0] for line in iters] == ["iter 0", "iter 100", "iter 200"]
    assert lines.count("----") >= 6  # a sample framed by ---- before each iter line
    # min-char-rnn's Adagrad whatever configs/default.yaml sets: rate 0.1, sums of squares starting at 0.
    group = checkpoint.load(glob.glob(str(tmp_path / "D" / "**" / "last.ckpt"), recursive=True)[0])["optimizer_states"][
        0
    ]
    assert (group["param_groups"][0]["lr"], group["param_groups"][0]["initial_accumulator_value"]) == (0.1, 0.0)


def test_lstm_run_writes_its_samples_to_tensorboard(text, tmp_path):
    """A 2-layer LSTM with dropout: the curves, and at each validation a sample from the same sampler sample.py
    uses (seeded with the step, from a zero state, no dropout)."""
    args = tiny_args(text, tmp_path, "--model.cell", "lstm", "--model.num_layers", 2, "--model.dropout", 0.2, steps=30)
    assert train(args) == 0
    acc = read_events(str(tmp_path / "lightning_logs" / "version_0"))
    assert {"train/loss", "val/loss"} <= set(acc.Tags()["scalars"])
    events = acc.Tensors([t for t in acc.Tags()["tensors"] if "sample" in t][0])
    assert [e.step for e in events] == [10, 20, 30]
    logged = events[-1].tensor_proto.string_val[0].decode("utf-8")
    net = checkpoint.load_network(str(tmp_path))
    expected = "".join(net.vocab[i] for i in generate("lstm", net.params, 200, seed=30))
    assert logged == "    " + expected.replace("\n", "\n    ")
