"""What a new user sees: a default run on the built-in text prints what it trains, no advert and no warning."""

import re

from charrnn.text import corpus_from_text, pydoc_text
from tests.train_helpers import newest, run_train_py


def test_default_run_is_quiet_and_says_what_it_trains(tmp_path):
    code, out, err = run_train_py(
        ["--trainer.max_steps", 30, "--trainer.default_root_dir", tmp_path / "D"], cwd=tmp_path
    )
    assert code == 0, err[-3000:]
    assert err == "", f"stderr of a default run should be empty:\n{err}"
    for noise in ("litlogger", "Tip:", "Modules in train mode", "Total Flops", "Warning", "warn"):
        assert noise not in out, f"{noise!r} in stdout:\n{out}"

    vocab, ids = corpus_from_text(pydoc_text())
    n_val = int(len(ids) * 0.1)
    state = newest(tmp_path / "D")["state_dict"]
    total = sum(state[name].numel() for name in ("Wxh", "Whh", "Why", "bh", "by"))
    assert f"model: vocab size {len(vocab)}, hidden size 256, cell rnn, num layers 1, dropout 0.0\n" in out
    parameters = re.search(r"^parameters: ([\d,]+) in total: (.*)$", out, re.M)
    assert parameters and int(parameters.group(1).replace(",", "")) == total
    assert f"Whh 256x256 = {256 * 256:,}" in parameters.group(2) and f"Wxh 256x{len(vocab)}" in parameters.group(2)
    assert "training: 6 streams x 25 characters = 150 characters per step\n" in out
    assert f"text: pydoc_data.topics: {len(ids) - n_val:,} characters for training, {n_val:,} for validation\n" in out
