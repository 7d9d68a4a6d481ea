"""score.py: the API's numbers per file and in total, lines ranked by surprise, JSON, and one-line errors."""

import json
import math

import numpy as np
import pytest

import charrnn
import score
from tests.train_helpers import assert_one_line_error, corpus, snapshot, tiny_args, train


@pytest.fixture(scope="module")
def run(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("score")
    assert train(tiny_args(text, d / "run", "--model.cell", "gru", steps=30)) == 0
    return d


def score_main(capsys, *args) -> tuple[int, str, str]:
    code = score.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_numbers_are_the_apis_and_the_total_weighs_files_by_characters(capsys, run, tmp_path):
    m = charrnn.load(run / "run")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(corpus(700)[300:], encoding="utf-8")
    b.write_text("The \u20ac sign\nand more text\n", encoding="utf-8")
    code, out, err = score_main(capsys, run / "run", a, b, "--json", "--log-probs", "--streams", 3)
    assert (code, err) == (0, "")
    report = json.loads(out)
    for row, path in zip(report["files"], (a, b)):
        s = m.score(path.read_text(encoding="utf-8"), streams=3)
        assert (row["file"], row["chars"], row["unknown"]) == (str(path), s.chars, s.unknown)
        assert row["nats"] == pytest.approx(s.nats, abs=1e-12) and row["bits"] == pytest.approx(s.bits, abs=1e-12)
        assert row["perplexity"] == pytest.approx(s.perplexity)
        np.testing.assert_array_equal(np.array(row["log_probs"], dtype=float), s.log_probs)  # null: NaN
    assert report["files"][1]["unknown_chars"] == "\u20ac" and report["files"][1]["unknown"] == 1
    total = report["total"]
    chars = [row["chars"] for row in report["files"]]
    assert total["chars"] == sum(chars)
    assert total["nats"] == pytest.approx(sum(r["nats"] * r["chars"] for r in report["files"]) / sum(chars))

    code, out, _ = score_main(capsys, run / "run", a, b)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3 and lines[2].startswith("total: ")
    assert f"{m.score(a.read_text(encoding='utf-8')).nats:.4f} nats/char" in lines[0]
    assert "1 unknown (not scored): '\u20ac'" in lines[1]


def test_per_line_ranks_lines_by_mean_surprise(capsys, run, tmp_path):
    text = corpus(900)
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    log_probs = charrnn.load(run / "run").score(text).log_probs
    # Independently: each character's surprise, then each line's mean, its newline excluded, text[0] unscored.
    surprise = {i + 1: -lp for i, lp in enumerate(log_probs)}
    means, start = [], 0
    for number, line in enumerate(text.split("\n"), 1):
        values = [surprise[i] for i in range(start, start + len(line)) if i in surprise]
        if values:
            means.append((sum(values) / len(values), number))
        start += len(line) + 1
    means.sort(reverse=True)
    code, out, _ = score_main(capsys, run / "run", path, "--per-line", "--top", 4, "--json")
    lines = json.loads(out)["files"][0]["lines"]
    assert code == 0 and [row["line"] for row in lines] == [n for _, n in means[:4]]
    assert [row["nats"] for row in lines] == pytest.approx([v for v, _ in means[:4]], abs=1e-9)
    assert all(row["text"] == text.split("\n")[row["line"] - 1] for row in lines)
    code, out, _ = score_main(capsys, run / "run", path, "--per-line")
    assert code == 0 and len(out.splitlines()) == 1 + score.TOP and f"line {means[0][1]}:" in out.splitlines()[1]


def test_bad_input_is_one_line_and_prints_nothing(capsys, run, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("The fox", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "one.txt").write_text("T")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (tmp_path / "unknown.txt").write_text("\u20ac\u20ac\u20ac", encoding="utf-8")
    cases = [
        ([good, tmp_path / "missing.txt"], f"text file {tmp_path / 'missing.txt'} does not exist"),
        ([tmp_path], "is a directory"),
        (["/dev/zero"], "not a regular file"),
        ([good, tmp_path / "empty.txt"], f"text file {tmp_path / 'empty.txt'} is empty"),
        ([tmp_path / "one.txt"], "is one character"),
        ([tmp_path / "latin1.txt"], f"{tmp_path / 'latin1.txt'} is not UTF-8 text"),
        ([tmp_path / "unknown.txt"], "nothing to score"),
        ([good, "--top", 3], "add --per-line"),
        ([good, "--per-line", "--top", 0], "--top must be 1 or more"),
        ([good, "--streams", 0], "--streams must be 1 or more"),
        ([good, "--streams", "x"], "--streams"),
        ([good, "--log-probs"], "add --json"),
        ([], "FILE"),
    ]
    before = snapshot(tmp_path)
    for args, needle in cases:
        code, out, err = score_main(capsys, run / "run", *args)
        assert code == 2 and out == "", (args, out)
        assert_one_line_error(err, needle)
        assert snapshot(tmp_path) == before
    code, out, err = score_main(capsys, tmp_path / "nowhere.ckpt", good)
    assert code == 2 and out == "" and "does not exist" in err
    assert math.isfinite(json.loads(score_main(capsys, run / "run", good, "--json")[1])["total"]["nats"])
