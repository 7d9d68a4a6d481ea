"""sample.py end to end: a checkpoint that train.py wrote, the flags, and every way a file or flag can be wrong."""

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
from charrnn import checkpoint, rundir
from charrnn.cells import native
from charrnn.sampling import generate
from tests.train_helpers import (
    ROOT,
    Malicious,
    assert_one_line_error,
    run_script,
    run_train_py,
    start_script,
    tiny_args,
    train,
)

TEXT = "Héllo wörld, naïve café. 你好，世界！ Emoji: 🙂😀🚀 — «quoted» ½ ∑ Ωmega.\nThe quick brown fox jumps.\n" * 40


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with a last.ckpt from a brief train.py run on a text of accents, CJK and emoji."""
    tmp = tmp_path_factory.mktemp("sample")
    text = tmp / "unicode.txt"
    text.write_text(TEXT, encoding="utf-8")
    args = ["--data.path", text, "--model.hidden_size", "32", "--data.batch_size", "4", "--trainer.max_steps", "30",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", tmp / "run"]  # fmt: skip
    code, _, err = run_train_py(args)
    assert code == 0, err
    return tmp / "run"


@pytest.fixture(scope="module")
def ckpt(run_dir):
    return rundir.newest_last_checkpoint(str(run_dir))


def run_main(capsysbinary, *args) -> tuple[int, str, str]:
    code = sample.main([str(a) for a in args])
    out, err = capsysbinary.readouterr()
    return code, out.decode("utf-8"), err.decode("utf-8")


def run_process(*args) -> tuple[int, bytes, bytes]:
    return run_script("sample.py", args, text=False, timeout=120)


def assert_refused(code, out, err, *fragments):
    """sample.py's exit code 2 with nothing on stdout, and one line ``error: ...`` on stderr."""
    assert code == 2 and out == ""
    assert_one_line_error(err, *fragments)


def test_seed_gives_the_same_text_in_two_processes(run_dir):
    first, second = (run_process(run_dir, "--length", 300, "--seed", 77, "--temperature", 0.9) for _ in range(2))
    assert first[0] == second[0] == 0 and first[2] == second[2] == b""
    assert first[1] == second[1]
    assert len(first[1].decode("utf-8")) == 300
    other = run_process(run_dir, "--length", 300, "--seed", 78, "--temperature", 0.9)
    assert other[1] != first[1]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_cell_samples_the_same_text_in_another_process(capsysbinary, tmp_path, cell):
    """Two layers with dropout: sample.py in a fresh process prints, for a seed and any flags, what the sampler gives
    in this one (dropout off), the prime first."""
    text = tmp_path / "unicode.txt"
    text.write_text(TEXT[:1200], encoding="utf-8")
    flags = ["--model.cell", cell, "--model.num_layers", 2, "--model.dropout", 0.2, "--model.hidden_size", 16]
    assert train(tiny_args(text, tmp_path / "run", *flags, steps=20)) == 0
    capsysbinary.readouterr()
    args = ("--length", 200, "--seed", 5, "--prime", "café ", "--temperature", 0.8, "--top-k", 12)
    code, out, err = run_process(tmp_path / "run", *args)
    assert (code, err) == (0, b"") and out.decode("utf-8") == run_main(capsysbinary, tmp_path / "run", *args)[1]
    net = checkpoint.load_network(str(tmp_path / "run"))
    ids = generate(cell, net.params, 200, prime_ids=[net.vocab.index(c) for c in "café "], temperature=0.8, top_k=12,
                   seed=5)  # fmt: skip
    assert out.decode("utf-8") == "café " + "".join(net.vocab[i] for i in ids)


def test_sample_does_not_import_lightning(ckpt):
    probe = (
        "import sys, sample, charrnn\n"
        f"code = sample.main([{ckpt!r}, '--length', '5'])\n"
        f"m = charrnn.load({ckpt!r}); m.sample(5, seed=1); m.score('The fox'); m.beam('', 5, 2)\n"
        "heavy = ('lightning', 'pytorch_lightning', 'jsonargparse', 'tensorboard')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(code, heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, timeout=120)
    assert done.stderr.decode().strip() == "0 []"


def test_greedy_temperature_zero_and_top1_agree(capsysbinary, ckpt):
    outputs = [
        run_main(capsysbinary, ckpt, "--length", 200, *flags)
        for flags in (
            ["--greedy"],
            ["--temperature", "0"],
            ["--top-k", "1"],
            ["--greedy", "--seed", "5", "--top-k", "9"],
        )
    ]
    assert all(code == 0 for code, _, _ in outputs)
    assert len({out for _, out, _ in outputs}) == 1 and len(outputs[0][1]) == 200


def test_prime_comes_first_and_sets_the_state(capsysbinary, ckpt):
    prime = "你好，世界！ 🙂 café"
    code, out, err = run_main(capsysbinary, ckpt, "--prime", prime, "--length", 150, "--seed", 3)
    assert code == 0 and err == ""
    assert out.startswith(prime) and len(out) == len(prime) + 150

    # The continuation is what the sampler gives from the state after the prime, not from a zero state.
    net = checkpoint.load_network(ckpt)
    params, vocab = net.params, net.vocab
    ids = [vocab.index(c) for c in prime]
    expected = "".join(vocab[i] for i in generate("rnn", params, 150, prime_ids=ids, seed=3))
    assert out[len(prime) :] == expected
    assert expected != "".join(vocab[i] for i in generate("rnn", params, 150, seed=3))


def test_non_ascii_text_round_trips(capsysbinary, ckpt):
    code, out, _ = run_main(capsysbinary, ckpt, "--length", 3000, "--seed", 1)
    assert code == 0 and len(out) == 3000
    assert set(out) <= set(TEXT)
    assert set(out) & set("你好世界🙂😀🚀éöï½∑Ω")  # the model learned them and writes them back as UTF-8


def test_length_zero_prints_the_prime_only(capsysbinary, ckpt):
    assert run_main(capsysbinary, ckpt, "--length", 0, "--prime", "naïve") == (0, "naïve", "")


def test_training_samples_use_the_same_sampler(capsysbinary, ckpt):
    """The text training logs for a step is what sample.py prints with that seed."""
    from charrnn.module import CharRNN

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = CharRNN(vocab_size=len(state["charrnn"]["vocab"]), hidden_size=32, vocab=state["charrnn"]["vocab"])
    model.load_state_dict(state["state_dict"])
    code, out, _ = run_main(capsysbinary, ckpt, "--length", 120, "--seed", 30)
    assert code == 0 and model.sample(length=120, seed=30) == out


@pytest.mark.skipif(not native.half_available(), reason="--half's kernel needs an x86-64 CPU with AVX2, FMA, F16C")
def test_half_samples_with_float16_weights_and_falls_back_to_exact(capsysbinary, ckpt, request):
    """--half prints the float16 sampler's text for a seed where it differs from the exact one, the same every run;
    without native.c (CHARRNN_NATIVE=0) one line on stderr says so, and the text is the exact one."""
    net = checkpoint.load_network(ckpt)

    def text(seed, half):
        return "".join(net.vocab[i] for i in generate(net.arch.cell, net.params, 400, seed=seed, half=half))

    seed = next(s for s in range(50) if text(s, True) != text(s, False))
    half = run_main(capsysbinary, ckpt, "--length", 400, "--seed", seed, "--half")
    assert half == (0, text(seed, True), "")
    assert run_main(capsysbinary, ckpt, "--length", 400, "--seed", seed, "--half") == half
    exact = text(seed, False)
    request.getfixturevalue("without_native")
    code, out, err = run_main(capsysbinary, ckpt, "--length", 400, "--seed", seed, "--half")
    assert (code, out) == (0, exact) and len(err.splitlines()) == 1 and "sampling exactly" in err


def test_closed_stdout_ends_quietly(ckpt):
    proc = start_script("sample.py", [ckpt, "--length", "10000000"], text=False)
    head = proc.stdout.read(100)
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert len(head) == 100 and proc.stderr.read() == b""
    proc.stderr.close()


def test_gpu_checkpoint_samples_on_cpu(capsysbinary, ckpt, tmp_path):
    """Rewrite the storages' location to cuda:0, as a checkpoint saved during GPU training has it."""
    gpu = tmp_path / "gpu.ckpt"
    with zipfile.ZipFile(ckpt) as zin, zipfile.ZipFile(gpu, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00cpu") == 1
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu, weights_only=True)  # the file really asks for a GPU
    flags = ("--length", 100, "--seed", 4)
    assert run_main(capsysbinary, gpu, *flags) == run_main(capsysbinary, ckpt, *flags)


def test_malicious_checkpoint_is_refused_unrun(capsysbinary, tmp_path):
    live = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(Malicious(live)))
    assert live.exists()  # the payload works when unpickled the unsafe way

    marker = tmp_path / "marker"
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"charrnn": {}, "state_dict": Malicious(marker)}, protocol=2))
    zipped = tmp_path / "evil.ckpt"
    torch.save({"charrnn": {"vocab": ["a"]}, "state_dict": {"Wxh": Malicious(marker)}}, zipped)
    # A raw pickle is refused before any unpickling (not a zip checkpoint); a zip one by the safe loader.
    for path, reason in ((raw, "not a checkpoint file"), (zipped, "refused")):
        code, out, err = run_main(capsysbinary, path)
        assert_refused(code, out, err, reason)
        assert "weights_only=False" not in err
    assert not marker.exists()


def _damaged_files(ckpt, tmp_path):
    good = Path(ckpt).read_bytes()
    for n in (0, 10, 200, len(good) // 2, len(good) - 30, len(good) - 1):
        (tmp_path / f"truncated-{n}.ckpt").write_bytes(good[:n])
    (tmp_path / "text.ckpt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "noise.ckpt").write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "foreign.ckpt")
    state = torch.load(ckpt, weights_only=True)
    sd, meta = state["state_dict"], state["charrnn"]
    variants = {
        "no-weights": {"charrnn": meta, "state_dict": {}},
        "shapes": {"charrnn": meta, "state_dict": {**sd, "Whh": torch.zeros(3, 3)}},
        "vocab": {"charrnn": {**meta, "vocab": meta["vocab"][:-1]}, "state_dict": sd},
        "nan": {"charrnn": meta, "state_dict": {**sd, "Why": sd["Why"] * float("nan")}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / f"{name}.ckpt")
    return sorted(tmp_path.glob("*.ckpt"))


def test_damaged_and_foreign_files_are_one_line_errors(capsysbinary, ckpt, tmp_path):
    files = _damaged_files(ckpt, tmp_path)
    assert len(files) == 14
    for path in files:
        assert_refused(*run_main(capsysbinary, path, "--length", 10), str(path))


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--length", "-1"], "--length"),
        (["--length", "ten"], "--length"),
        (["--temperature", "-0.5"], "--temperature"),
        (["--temperature", "nan"], "--temperature"),
        (["--temperature", "inf"], "--temperature"),
        (["--top-k", "0"], "--top-k"),
        (["--seed", "-1"], "--seed"),
        (["--device", "tpu"], "--device"),
        (["--half", "--device", "cuda"], "--half"),
        (["--prime", "Hello Zebra\u00e9\u20ac"], "'Z\u20ac'"),  # names the unknown characters (Z, euro), not é
        (["--bogus"], "--bogus"),
        (["--stop", ""], "--stop strings must be non-empty"),
        (["--stop", "\\q"], "unknown escape \\q"),
        (["--stop", "a\\"], "unknown escape \\;"),
        (["--stop", "\\x4"], "unknown escape \\x"),
        (["--stop", "\\ud800"], "not a Unicode character"),
        (["--stop", "\\U00110000"], "not a Unicode character"),
        (["--stop", "Z"], "could never occur"),
        (["--num-samples", "0"], "--num-samples must be 1 or more"),
        (["--num-samples", "two"], "--num-samples"),
        (["--beam", "0"], "--beam must be 1 or more"),
        (["--beam", "2", "--temperature", "0.5"], "drop --temperature"),
        (["--beam", "2", "--top-k", "3"], "drop --top-k"),
        (["--beam", "2", "--greedy"], "drop --greedy"),
        (["--beam", "2", "--seed", "1"], "drop --seed"),
        (["--beam", "2", "--stop", "a"], "drop --stop"),
        (["--beam", "2", "--half"], "drop --half"),
        (["--beam", "2", "--num-samples", "2"], "drop --num-samples"),
        (["--beam", "2", "--device", "cuda"], "--device cuda"),
        (["--prime", "a", "--prime-file", "x.txt"], "not allowed with argument"),
        (["--prime-file", "/nonexistent/prime.txt"], "--prime-file /nonexistent/prime.txt does not exist"),
        (["--prime-file", "/"], "is a directory"),
        (["--prime-file", "/dev/zero"], "not a regular file"),
    ],
)
def test_bad_flags_are_one_line_errors(capsysbinary, ckpt, flags, needle):
    assert_refused(*run_main(capsysbinary, ckpt, *flags), needle)


def test_bad_paths_are_one_line_errors(capsysbinary, tmp_path):
    for path, needle in ((tmp_path / "missing.ckpt", "does not exist"), (tmp_path, "no last.ckpt")):
        assert_refused(*run_main(capsysbinary, path), needle)
    assert_refused(*run_main(capsysbinary))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(capsysbinary, ckpt):
    assert_refused(*run_main(capsysbinary, ckpt, "--device", "cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_text(capsysbinary, ckpt):
    """float64 products on either device: the same seed gives the same text."""
    cpu = run_main(capsysbinary, ckpt, "--length", 500, "--seed", 8, "--device", "cpu")
    assert run_main(capsysbinary, ckpt, "--length", 500, "--seed", 8, "--device", "cuda") == cpu


def test_stop_escapes_are_decoded():
    assert sample.decode_escapes(r"\n\n") == "\n\n"
    assert sample.decode_escapes(r"a\tb\\n\x41\u00e9\U0001F642\r") == "a\tb\\nA\u00e9\U0001f642\r"
    assert sample.decode_escapes("caf\u00e9 \U0001f642") == "caf\u00e9 \U0001f642"  # no backslash: as typed


def test_stop_ends_the_sample_after_the_first_occurrence(capsysbinary, ckpt):
    net = checkpoint.load_network(ckpt)
    full = "".join(net.vocab[i] for i in generate("rnn", net.params, 400, prime_ids=[net.vocab.index("T")], seed=6))
    stop = full[150:152]
    end = ("T" + full).find(stop, max(0, 2 - len(stop))) + len(stop)  # the first occurrence ending after the prime
    code, out, err = run_main(capsysbinary, ckpt, "--length", 400, "--prime", "T", "--seed", 6, "--stop", stop,
                              "--stop", "\\u4e16\\u754c")  # fmt: skip
    assert (code, err) == (0, "") and out == ("T" + full)[:end] and len(out) <= 1 + 152


def test_num_samples_are_seeded_in_turn_and_separated(capsysbinary, ckpt):
    code, out, err = run_main(capsysbinary, ckpt, "--length", 80, "--prime", "The", "--seed", 11, "--num-samples", 3)
    assert (code, err) == (0, "")
    samples = out.split("\n\x1e\n")
    assert samples == [run_main(capsysbinary, ckpt, "--length", 80, "--prime", "The", "--seed", 11 + i)[1]
                       for i in range(3)]  # fmt: skip


def test_json_lines_hold_the_text_its_log_prob_and_seed(capsysbinary, ckpt):
    import charrnn

    code, out, err = run_main(capsysbinary, ckpt, "--length", 60, "--prime", "The", "--seed", 4, "--num-samples", 2,
                              "--json", "--temperature", 0.7)  # fmt: skip
    assert (code, err) == (0, "")
    m = charrnn.load(ckpt)
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["seed"] for r in records] == [4, 5]
    for r in records:
        assert r["text"] == m.sample(60, "The", 0.7, seed=r["seed"])
        # log p of the text given the prime: score() of prime + text from the zero state, its last 60 predictions
        tail = m.score("The" + r["text"], dtype=torch.float64).log_probs[-60:]
        assert r["log_prob"] == pytest.approx(float(tail.sum()), abs=1e-9)
        assert r["nats_per_char"] == pytest.approx(-r["log_prob"] / 60)
    code, out, _ = run_main(capsysbinary, ckpt, "--length", 30, "--json")  # no --seed: a fresh one, reported
    record = json.loads(out)
    assert record["text"] == m.sample(30, seed=record["seed"])


def test_prime_file_is_read_as_training_reads_text(capsysbinary, ckpt, tmp_path):
    prime = tmp_path / "prime.txt"
    prime.write_bytes(b"\xef\xbb\xbfThe\r\nfox\rjumps")
    expected = run_main(capsysbinary, ckpt, "--length", 50, "--seed", 2, "--prime", "The\nfox\njumps")
    assert run_main(capsysbinary, ckpt, "--length", 50, "--seed", 2, "--prime-file", prime) == expected
    prime.write_text("The caf\u00e9 \u20ac", encoding="utf-8")
    assert_refused(*run_main(capsysbinary, ckpt, "--prime-file", prime), f"--prime-file {prime}", "'\u20ac'")
    prime.write_bytes(b"caf\xe9")
    assert_refused(*run_main(capsysbinary, ckpt, "--prime-file", prime), "not UTF-8")


def test_a_vocabulary_with_the_separator_needs_json(capsysbinary, ckpt, tmp_path):
    state = torch.load(ckpt, weights_only=True)
    state["charrnn"]["vocab"] = ["\x1e" if c == "E" else c for c in state["charrnn"]["vocab"]]
    assert "E" in checkpoint.load_network(ckpt).vocab
    torch.save(state, tmp_path / "rs.ckpt")
    assert_refused(*run_main(capsysbinary, tmp_path / "rs.ckpt", "--num-samples", 2), "\\x1e", "--json")
    code, out, _ = run_main(capsysbinary, tmp_path / "rs.ckpt", "--num-samples", 2, "--json", "--length", 5)
    assert code == 0 and len(out.splitlines()) == 2


def test_torch_save_writes_checksums_that_hold(ckpt):
    """The check below rests on this: every member of an undamaged checkpoint matches its CRC-32."""
    with zipfile.ZipFile(ckpt) as z:
        assert z.testzip() is None and len(z.infolist()) > 3


def test_one_flipped_bit_anywhere_is_refused_where_a_checkpoint_is_read(capsysbinary, ckpt, run_dir, tmp_path):
    good = Path(ckpt).read_bytes()
    whh = torch.load(ckpt, weights_only=True)["state_dict"]["Whh"]
    at_whh = good.find(whh.numpy().tobytes())
    assert at_whh > 0
    names = {info.filename: info for info in zipfile.ZipFile(ckpt).infolist()}
    pickle_at = names[next(n for n in names if n.endswith("data.pkl"))].header_offset + 100
    # Inside Whh's data (a weight loads as another weight: torch.load does not check), inside the pickle, in the
    # first member's name and in the central directory. (The sizes in a member's own header repeat the central
    # directory's, which is what is read: a bit flipped there changes nothing loaded.)
    for at in (at_whh + whh.numel() * 2, pickle_at, 31, len(good) - 60):
        for bit in (0, 6):
            damaged = tmp_path / f"flipped-{at}-{bit}.ckpt"
            damaged.write_bytes(good[:at] + bytes([good[at] ^ (1 << bit)]) + good[at + 1 :])
            assert_refused(*run_main(capsysbinary, damaged, "--length", 10), str(damaged))
    flipped = tmp_path / f"flipped-{at_whh + whh.numel() * 2}-0.ckpt"
    assert_refused(*run_main(capsysbinary, flipped, "--length", 10), "is damaged: its part", "checksum")
    before = Path(ckpt).read_bytes()
    code, out, err = run_train_py(["--ckpt_path", flipped, "--data.path", run_dir.parent / "unicode.txt",
                                   "--trainer.default_root_dir", tmp_path / "resumed"])  # fmt: skip
    assert code == 2, err
    assert_one_line_error(err, str(flipped), "checksum")
    assert not (tmp_path / "resumed").exists() and Path(ckpt).read_bytes() == before
    code, _, err = run_script("visualize.py", [flipped, "--out", tmp_path / "page.html"])
    assert code == 2 and not (tmp_path / "page.html").exists()
    assert_one_line_error(err, str(flipped), "checksum")


def test_a_prime_that_is_not_utf8_and_a_run_holding_only_best_ckpt_are_said_plainly(capsysbinary, ckpt, tmp_path):
    # A command line's bytes ed a0 80 (not UTF-8) reach sys.argv as lone surrogates.
    code, out, err = run_main(capsysbinary, ckpt, "--prime", b"\xed\xa0\x80".decode("utf-8", "surrogateescape"))
    assert_refused(code, out, err, "--prime is not valid UTF-8 (its bytes: ed a0 80)")
    assert "\\udc" not in err
    best = tmp_path / "run/lightning_logs/version_3/checkpoints/best.ckpt"
    best.parent.mkdir(parents=True)
    best.write_bytes(Path(ckpt).read_bytes())
    assert_refused(*run_main(capsysbinary, tmp_path / "run"), "no last.ckpt found under", f"{best} is there: pass it")
    (tmp_path / "loop.ckpt").symlink_to(tmp_path / "loop.ckpt")
    assert_refused(*run_main(capsysbinary, tmp_path / "loop.ckpt"), "loop.ckpt is a symbolic link that loops")
