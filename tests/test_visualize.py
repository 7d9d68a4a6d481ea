"""visualize.py: the page holds the model's own forward pass, ranks units as numpy does, refuses bad input in one
line, and renders in a real browser (headless Chromium) from disk, coloured, linkable to a unit, with no request."""

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import visualize
from charrnn import checkpoint, network, rundir
from charrnn.sampling import generate
from charrnn.visualize import Trace, correlations, page_data, rank_units, text_features
from charrnn.visualize import page as html_page
from tests.train_helpers import corpus, snapshot, tiny_args, train

TEXT = corpus(1500)  # Python's reference text: quotes, brackets, upper case, several lines


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A checkpoint written by train.py (hidden size 16), its text and its model."""
    d = tmp_path_factory.mktemp("visualize")
    (d / "input.txt").write_text(TEXT, encoding="utf-8")
    # min-char-rnn's Adagrad (sums from 0): sign-sized first steps, so after 40 steps the units span the colour scale.
    assert train(tiny_args(d / "input.txt", d / "run", "--model.initial_accumulator_value", 0, steps=40)) == 0
    ckpt = rundir.newest_last_checkpoint(str(d / "run"))
    arch, params, vocab = checkpoint.load_network(ckpt)
    return {"dir": d, "ckpt": ckpt, "text": d / "input.txt", "arch": arch, "params": params, "vocab": vocab}


def visualize_main(capsys, *args) -> tuple[int, str, str]:
    code = visualize.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def embedded(path) -> dict:
    """The data block parsed back out of the written page."""
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', Path(path).read_text("utf-8"), re.S)
    return json.loads(found.group(1))


def forward(arch, params, ids):
    """The reference: training's forward pass in the checkpoint's own dtype, from a zero state; every layer's
    activations (time-major, the starting state first) and the next-character distributions."""
    with torch.no_grad():
        logits, _, acts = network.forward(arch, params, torch.tensor([ids]), arch.zero_state(1))
    return acts, torch.softmax(logits[0], dim=-1).numpy()


ROUNDING = 5e-4 + 1e-5  # three decimals, plus float32 against the page's float64
SURPRISE_ROUNDING = 1e-6  # seven decimals, and the checkpoint's float32 on both sides


def assert_surprise(data, probs, ids):
    """The page's surprise of character t is -log p(t | the text before it): row t - 1 of the distributions; the
    first character has none. The five expected characters at t come from that same row."""
    T = len(ids)
    assert data["surprise"][0] is None and data["expected"][0] == data["expected_p"][0] == []
    p_read = probs[np.arange(T - 1), ids[1:]]
    np.testing.assert_allclose(data["surprise"][1:], -np.log(p_read), rtol=0, atol=SURPRISE_ROUNDING)
    expected, expected_p = np.array(data["expected"][1:]), np.array(data["expected_p"][1:])
    assert expected.shape == expected_p.shape == (T - 1, 5)
    np.testing.assert_allclose(expected_p, np.sort(probs[:-1], axis=1)[:, ::-1][:, :5], rtol=0, atol=ROUNDING)
    np.testing.assert_allclose(np.take_along_axis(probs[:-1], expected, axis=1), expected_p, rtol=0, atol=ROUNDING)
    assert all(len(set(row)) == 5 for row in expected)


def test_page_holds_the_models_forward_pass(capsys, run, tmp_path):
    out = tmp_path / "page.html"
    code, stdout, err = visualize_main(capsys, run["ckpt"], "--text", run["text"], "--length", 900, "--out", out)
    assert code == 0 and stdout.startswith(f"wrote {out}") and "showing the first 900 characters" in err
    data = embedded(out)
    assert data["text"] == TEXT[:900] and data["vocab"] == run["vocab"]
    ids = [run["vocab"].index(c) for c in data["text"]]
    [acts], probs = forward(run["arch"], run["params"], ids)
    hs = acts["h"][1:, 0].numpy()

    [group] = data["groups"]
    assert group["name"] == "h" and group["range"] == [-1.0, 1.0]
    values = np.array(group["values"])  # unit-major
    assert values.shape == (16, 900) and np.abs(hs).max() > 0.5  # the units do move
    np.testing.assert_allclose(values, hs.T, rtol=0, atol=ROUNDING)

    assert_surprise(data, probs, ids)

    # The embedded ranking is that of the model's activations and the text's features.
    features = text_features(data["text"])
    assert data["ranking"] == [{**row, "r": round(row["r"], 3)} for row in rank_units({"h": hs}, features)]


@pytest.fixture(scope="module", params=["lstm", "gru"])
def gated_run(request, run):
    """A 2-layer checkpoint of a gated cell, trained on the same text."""
    root = run["dir"] / request.param
    assert train(tiny_args(run["text"], root, "--model.cell", request.param, "--model.num_layers", 2, steps=40)) == 0
    net = checkpoint.load_network(rundir.newest_last_checkpoint(str(root)))
    return {"ckpt": rundir.newest_last_checkpoint(str(root)), "net": net}


def expected_groups(cell, acts) -> dict:
    """name -> ((T, H) values, range) from stack.forward's activations: the gates' rows are (o, i, f, g) for the
    LSTM and (r, z, h W_hn + b_hn) for the GRU (charrnn/cells)."""
    groups = {}
    for layer, a in enumerate(acts, start=1):
        found = {"h": (a["h"][1:, 0], [-1.0, 1.0])}
        if cell == "lstm":
            c = a["c"][1:, 0]
            found["c"] = (c, [-float(np.ceil(c.abs().max())), float(np.ceil(c.abs().max()))])
            gates = {"input gate": 1, "forget gate": 2, "output gate": 0}
        else:
            gates = {"reset gate": 0, "update gate": 1}
        found.update({name: (a["gates"][:, 0, k], [0.0, 1.0]) for name, k in gates.items()})
        found["candidate"] = (a["gates"][:, 0, 3] if cell == "lstm" else a["n"][:, 0], [-1.0, 1.0])
        groups.update({f"layer {layer} {name}": (values.numpy(), bounds) for name, (values, bounds) in found.items()})
    return groups


def test_page_holds_every_layer_and_gate_of_a_gated_cell(capsys, gated_run, run, tmp_path):
    out = tmp_path / "page.html"
    assert visualize_main(capsys, gated_run["ckpt"], "--text", run["text"], "--length", 300, "--out", out)[0] == 0
    data, net = embedded(out), gated_run["net"]
    ids = [net.vocab.index(c) for c in data["text"]]
    acts, probs = forward(net.arch, net.params, ids)
    expected = expected_groups(net.arch.cell, acts)
    assert [g["name"] for g in data["groups"]] == list(expected)
    for group in data["groups"]:
        values, bounds = expected[group["name"]]
        assert group["range"] == bounds and values.shape == (300, 16)
        assert values.min() >= bounds[0] and values.max() <= bounds[1], group["name"]
        np.testing.assert_allclose(np.array(group["values"]), values.T, rtol=0, atol=ROUNDING)
    assert_surprise(data, probs, ids)


def _inside_quotes(text: str) -> np.ndarray:
    """Independent of text_features: an odd number of '"' up to and including each character."""
    return np.array([text[: t + 1].count('"') % 2 for t in range(len(text))], dtype=float)


def test_ranking_is_numpys_corrcoef_and_finds_a_tracking_unit():
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(['He said "yes" (twice).\n', 'She: "no, never"; then [silence]\n', "x = y\n"], 60))
    quotes = _inside_quotes(text)
    column = np.array([t - text.rfind("\n", 0, t) - 1 for t in range(len(text))], dtype=float)
    h = np.tanh(rng.normal(size=(len(text), 12)))
    h[:, 7] = np.tanh(1.5 * quotes - 0.75 + 0.4 * rng.normal(size=len(text)))  # unit 7 tracks the quotes
    c = rng.normal(size=(len(text), 3)) * 4
    c[:, 1] = 0.2 * column + rng.normal(size=len(text))  # and unit 1 of a second group the position in the line
    c[:, 2] = 0.5  # a constant unit correlates with nothing

    features = text_features(text)
    np.testing.assert_array_equal(features["inside quotes"], quotes)
    np.testing.assert_array_equal(features["position in the line"], column)
    groups = {"h": h, "c": c}
    ranking = rank_units(groups, features)

    units = [(g, u) for g in groups for u in range(groups[g].shape[1])]
    columns = np.concatenate([h, c], axis=1)
    for feature, values in features.items():
        rows = [row for row in ranking if row["feature"] == feature]
        if values.min() == values.max():
            assert rows == []
            continue
        reference = np.array([np.corrcoef(columns[:, i], values)[0, 1] if i != 14 else 0.0 for i in range(15)])
        np.testing.assert_allclose(correlations(columns, values), reference, rtol=0, atol=1e-12)
        order = np.argsort(-np.abs(reference), kind="stable")[:5]
        assert [(row["group"], row["unit"]) for row in rows] == [units[i] for i in order]
        np.testing.assert_allclose([row["r"] for row in rows], reference[order], rtol=0, atol=1e-12)
    quote_rows = [row for row in ranking if row["feature"] == "inside quotes"]
    column_rows = [row for row in ranking if row["feature"] == "position in the line"]
    assert (quote_rows[0]["group"], quote_rows[0]["unit"]) == ("h", 7) and quote_rows[0]["r"] > 0.8
    assert (column_rows[0]["group"], column_rows[0]["unit"]) == ("c", 1) and column_rows[0]["r"] > 0.8
    best = [abs(row["r"]) for row in ranking[::5]]
    assert best == sorted(best, reverse=True)  # features ordered by their best unit

    vocab = sorted(set(text))
    ids = [vocab.index(ch) for ch in text]
    probs = np.full((len(text), len(vocab)), 1 / len(vocab))
    surprise = np.zeros(len(text) - 1)
    data = page_data(Trace(groups, {"h": (-1.0, 1.0), "c": (-9.0, 9.0)}, probs), ids, vocab, "constructed", surprise)
    assert data["ranking"][0] in ({**quote_rows[0], "r": round(quote_rows[0]["r"], 3)},
                                  {**column_rows[0], "r": round(column_rows[0]["r"], 3)})  # fmt: skip


def test_any_text_stays_inside_the_data_block():
    """Characters that end a script or open a comment in HTML are data, not markup."""
    text = 'a</script><script>alert(1)</script><!-- & "\u2028\n🙂'
    vocab = sorted(set(text))
    ids = [vocab.index(c) for c in text]
    tr = Trace({"h": np.zeros((len(text), 2))}, {"h": (-1.0, 1.0)}, np.full((len(text), len(vocab)), 1 / len(vocab)))
    written = html_page(tr, ids, vocab, "<b>&", np.zeros(len(text) - 1))
    assert written.count("</script>") == 2 and "<b>" not in written  # the data block's and the renderer's
    data = json.loads(re.search(r'id="data">(.*?)</script>', written, re.S).group(1))
    assert data["text"] == text and data["title"] == "<b>&"


def test_generated_text_is_the_samplers(capsys, run, tmp_path):
    out = tmp_path / "page.html"
    vocab, params = run["vocab"], run["params"]
    assert visualize_main(capsys, run["ckpt"], "--length", 120, "--seed", 4, "--out", out)[0] == 0
    assert embedded(out)["text"] == "".join(vocab[i] for i in generate("rnn", params, 120, seed=4))

    prime = "The (first"
    assert visualize_main(capsys, run["ckpt"], "--prime", prime, "--length", 80, "--out", out)[0] == 0
    ids = [vocab.index(c) for c in prime]
    assert embedded(out)["text"] == prime + "".join(
        vocab[i] for i in generate("rnn", params, 80, prime_ids=ids, seed=0)
    )


def test_long_text_is_cut_with_a_note(capsys, run, tmp_path):
    long_text = tmp_path / "long.txt"
    long_text.write_text(TEXT * 5, encoding="utf-8")  # 7500 characters
    out = tmp_path / "page.html"
    code, _, err = visualize_main(capsys, run["ckpt"], "--text", long_text, "--length", 9000, "--out", out)
    assert code == 0 and "--length 9000" in err and f"first {visualize.MAX_CHARS} characters of {long_text}" in err
    assert embedded(out)["text"] == (TEXT * 5)[: visualize.MAX_CHARS]

    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + TEXT[:300].replace("\n", "\r\n").encode())
    assert visualize_main(capsys, run["ckpt"], "--text", crlf, "--out", out) == (
        0,
        f"wrote {out}: 300 characters; open it in a browser\n",
        "",
    )
    assert embedded(out)["text"] == TEXT[:300]  # read as training reads it: BOM dropped, CRLF as LF


def test_replaces_only_its_own_pages(capsys, run, tmp_path):
    out = tmp_path / "page.html"
    for _ in range(2):
        assert visualize_main(capsys, run["ckpt"], "--length", 10, "--out", out)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["page.html"]  # no temporary file left behind
    foreign = tmp_path / "notes.html"
    foreign.write_text("<html>my notes</html>")
    code, out_text, err = visualize_main(capsys, run["ckpt"], "--length", 10, "--out", foreign)
    assert code == 2 and "not written by visualize.py" in err and foreign.read_text() == "<html>my notes</html>"


def _assert_one_line_error(code, out, err, needle):
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_bad_inputs_are_one_line_errors_and_touch_nothing(capsys, run, tmp_path):
    d = tmp_path
    good = str(run["ckpt"])
    (d / "truncated.ckpt").write_bytes(Path(good).read_bytes()[:300])
    (d / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    (d / "bom-latin1.txt").write_bytes(b"\xef\xbb\xbf" + "na\u00efve\n".encode("latin-1"))
    (d / "unknown.txt").write_text(TEXT[:50] + "\u00e9\u20ac", encoding="utf-8")
    (d / "empty.txt").write_bytes(b"")
    (d / "folder").mkdir()
    os.mkfifo(d / "fifo")
    (d / "notes.html").write_text("mine")
    assert visualize_main(capsys, good, "--length", 10, "--out", d / "ours.html")[0] == 0
    cases = [
        ([d / "missing.ckpt"], "does not exist"),
        ([d / "truncated.ckpt"], "truncated"),
        ([d / "folder"], "no last.ckpt"),
        ([good, "--text", d / "folder"], "is a directory"),
        ([good, "--text", d / "fifo"], "not a regular file"),
        ([good, "--text", d / "absent.txt"], "No such file"),
        ([good, "--text", d / "latin1.txt"], "not UTF-8 text (byte 0xe9 at offset 3)"),
        ([good, "--text", d / "bom-latin1.txt"], "not UTF-8 text (byte 0xef at offset 5)"),
        ([good, "--text", d / "unknown.txt"], "'é€'"),
        ([good, "--text", d / "empty.txt"], "is empty"),
        ([good, "--prime", "caf\u00e9"], "'é'"),
        ([good, "--length", 0], "--length must be 1 or more, got 0"),
        ([good, "--length", -3], "--length must be 1 or more"),
        ([good, "--seed", -1], "--seed"),
        ([good, "--text", d / "unknown.txt", "--prime", "a"], "not allowed with argument"),
        ([good, "--out", d / "notes.html"], "not written by visualize.py"),
        ([good, "--out", d / "folder"], "not a regular file"),
        ([good, "--out", d / "fifo"], "not a regular file"),
        ([good, "--out", d / "nowhere" / "page.html"], "does not exist"),
        ([good, "--out", ""], "--out '' names no file"),  # refused before any work, not after it
        ([good, "--out", f"{d}/"], "names no file"),
        ([good, "--prime", "\udced\udca0\udc80"], "--prime is not valid UTF-8 (its bytes: ed a0 80)"),
        ([], "CHECKPOINT"),
    ]
    before = snapshot(d)
    for args, needle in cases:
        _assert_one_line_error(*visualize_main(capsys, *args, *(() if "--out" in args else ("--out", d / "ours.html"))),
                               needle)  # fmt: skip
        assert snapshot(d) == before, args


# --- A real browser: the page opens from disk with its scripts run. ---

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="chromium is not installed (CI installs it and runs this test)")  # fmt: skip


def chromium(tmp_path, url: str, *flags) -> str:
    """Headless Chromium on ``url``; every host name resolves to nothing, and the browser's own background
    traffic is switched off. Returns stdout (the DOM for --dump-dom)."""
    assert CHROMIUM is not None, "chromium is required in CI: apt-get install chromium"
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", '--host-resolver-rules=MAP * ~NOTFOUND',
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *flags, url]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def page_requests(netlog: Path) -> list[str]:
    """URLs a document asked the network for (Chromium's own requests carry no origin as initiator)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start and "url" in e.get("params", {}) and e["params"].get("initiator") != "not an origin"
    ]


def activation_colours(dom: str) -> list[tuple[str, str]]:
    """(title, background colour) of each character in the activation view of a dumped DOM."""
    view = re.search(r'<div class="text" id="activations">(.*?)</div>', dom, re.S).group(1)
    return re.findall(r'<span title="([^"]*)" style="background-color: (rgb\([^)]*\))', view)


@needs_chromium
def test_chromium_renders_the_page_offline(capsys, run, tmp_path):
    page = tmp_path / "page.html"
    assert visualize_main(capsys, run["ckpt"], "--text", run["text"], "--length", 400, "--out", page)[0] == 0
    data = embedded(page)
    values = np.array(data["groups"][0]["values"])
    n, m = int(np.argmax(values.std(axis=1))), int(np.argmin(values.std(axis=1)))

    # Nothing in the page's markup, style or script points outside it (the data is the text, not markup).
    markup = re.sub(r'<script type="application/json" id="data">.*?</script>', "", page.read_text("utf-8"), flags=re.S)
    assert not re.search(r"https?:|//[\w.-]+\.|\b(src|href)\s*=|url\(|@import|fetch\(|XMLHttpRequest|WebSocket|<link",
                         markup, re.I)  # fmt: skip

    netlog = tmp_path / "netlog.json"
    dom_n = chromium(tmp_path, f"{page.as_uri()}#unit={n}", "--dump-dom", f"--log-net-log={netlog}")
    assert page_requests(netlog) == []
    dom_m = chromium(tmp_path, f"{page.as_uri()}#group=h&unit={m}", "--dump-dom")

    colours_n, colours_m = activation_colours(dom_n), activation_colours(dom_m)
    assert len(colours_n) == len(colours_m) == 400  # every character coloured
    assert all(title.startswith(f"h unit {n} after") for title, _ in colours_n)
    assert all(title.startswith(f"h unit {m} after") for title, _ in colours_m)
    assert [c for _, c in colours_n] != [c for _, c in colours_m]
    assert len({c for _, c in colours_n}) > 20
    for v, (_, colour) in zip(values[n], colours_n):  # red above zero, blue below
        r, _, b = map(int, re.findall(r"\d+", colour))
        assert (r > b) if v > 0.05 else (b > r) if v < -0.05 else True, (v, colour)

    surprise = re.search(r'<div class="text" id="surprise">(.*?)</div>', dom_n, re.S).group(1)
    titles = [html.unescape(t) for t in re.findall(r'<span title="([^"]*)" style="background-color: rgb', surprise)]
    label = {"\n": "\u21b5", " ": "\u2423", "\t": "\u21e5"}
    expected = [", ".join(f"'{label.get(data['vocab'][i], data['vocab'][i])}' {p:.3f}" for i, p in zip(ids, ps))
                for ids, ps in zip(data["expected"][1:], data["expected_p"][1:])]  # fmt: skip
    assert [t.split("\nexpected: ")[1] for t in titles] == expected  # the hover text: the model's top five
    assert len(titles) == 399  # the first character is context: uncoloured
    selected = len(re.findall(r'<tr class="[^"]*\bselected\b"', dom_n))
    assert selected == sum(row["unit"] == n for row in data["ranking"])  # the ranked list marks the unit shown

    shot = tmp_path / "page.png"
    chromium(tmp_path, f"{page.as_uri()}#unit={n}", f"--screenshot={shot}", "--window-size=1200,900",
             "--hide-scrollbars")  # fmt: skip
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (1200, 900)


# Loads the page in a frame, then changes its address and its selector as a user would, and writes what the page
# showed after each step into its own DOM for --dump-dom.
HARNESS = """<!DOCTYPE html><pre id="log"></pre><iframe id="frame" src="page.html#unit=3"></iframe><script>
const frame = document.getElementById("frame"), log = [];
const state = w => [w.location.hash, w.document.getElementById("unit").value,
  Array.from(w.document.getElementById("activations").children, s => s.style.backgroundColor).join(";")];
const steps = [
  w => { w.location.hash = "unit=7"; },
  w => { const unit = w.document.getElementById("unit"); unit.value = "9"; unit.dispatchEvent(new w.Event("change")); },
  w => { w.document.getElementById("next").click(); },
  w => { w.document.querySelector("#ranking tr").click(); },
];
frame.onload = () => {
  const w = frame.contentWindow;
  log.push(state(w));
  const next = () => {
    if (!steps.length) { document.getElementById("log").textContent = JSON.stringify(log); return; }
    steps.shift()(w);
    setTimeout(() => { log.push(state(w)); next(); }, 50);
  };
  next();
};
</script>"""


@needs_chromium
def test_chromium_follows_the_address_and_the_selector(capsys, run, tmp_path):
    """``#unit=N`` selects on load and on hashchange; the selector, the arrows and the ranked list set the address."""
    page = tmp_path / "page.html"
    assert visualize_main(capsys, run["ckpt"], "--text", run["text"], "--length", 300, "--out", page)[0] == 0
    harness = tmp_path / "harness.html"
    harness.write_text(HARNESS)
    # Only the harness needs file access (to reach into its frame); the page itself runs with none.
    dom = chromium(tmp_path, harness.as_uri(), "--dump-dom", "--allow-file-access-from-files",
                   "--virtual-time-budget=5000")  # fmt: skip
    states = json.loads(html.unescape(re.search(r'<pre id="log">(.*?)</pre>', dom, re.S).group(1)))
    top = embedded(page)["ranking"][0]
    assert [(address, unit) for address, unit, _ in states] == [
        ("#unit=3", "3"), ("#unit=7", "7"), ("#group=h&unit=9", "9"), ("#group=h&unit=10", "10"),
        (f"#group=h&unit={top['unit']}", str(top["unit"])),
    ]  # fmt: skip
    colours = [c for _, _, c in states]
    assert len(set(colours)) == len({unit for _, unit, _ in states})  # each unit its own colours


@needs_chromium
def test_the_request_check_sees_requests(tmp_path):
    """The network check can fail: a page that loads an image and fetches is caught (and resolves nowhere)."""
    control = tmp_path / "control.html"
    control.write_text('<img src="http://example.invalid/a.png"><script>fetch("https://example.org/b")</script>')
    netlog = tmp_path / "netlog.json"
    chromium(tmp_path, control.as_uri(), "--dump-dom", f"--log-net-log={netlog}")
    assert sorted(page_requests(netlog)) == ["http://example.invalid/a.png", "https://example.org/b"]


def test_page_surprise_is_validations_loss_and_score_pys(capsys, run, tmp_path):
    """The page's mean surprise is the loss training's own validation code (CharRNN.validation_step) computes on the
    page's text as one stream from the zero state, and below a uniform guess (ln V): the page once read character
    t's probability off the distribution for character t + 1 and showed nearly 9 nats for a model of 1.6. Its
    per-character surprise is the API's and score.py's."""
    import score
    from charrnn.data import ValBatches, val_streams
    from charrnn.module import CharRNN

    out = tmp_path / "page.html"
    assert visualize_main(capsys, run["ckpt"], "--text", run["text"], "--length", 1000, "--out", out)[0] == 0
    data = embedded(out)
    surprise = np.array(data["surprise"][1:], dtype=float)

    vocab = run["vocab"]
    module = CharRNN(vocab_size=len(vocab), hidden_size=16, vocab=vocab)
    module.load_state_dict(torch.load(run["ckpt"], weights_only=True)["state_dict"])
    ids = torch.tensor([vocab.index(c) for c in data["text"]])
    module.on_validation_epoch_start()
    with torch.no_grad():
        for batch in ValBatches(*val_streams(ids, streams=1)):
            module.validation_step(batch, 0)
    val_loss = float(module._val_sum / module._val_count)
    assert int(module._val_count) == len(surprise) == 999
    assert surprise.mean() == pytest.approx(val_loss, abs=1e-6)
    assert val_loss < np.log(len(vocab)) - 0.5

    import charrnn

    api_log_probs = charrnn.load(run["ckpt"]).score(data["text"]).log_probs
    np.testing.assert_allclose(-surprise, api_log_probs, rtol=0, atol=1e-6)
    page_text = tmp_path / "page-text.txt"
    page_text.write_text(data["text"], encoding="utf-8")
    assert score.main([str(run["ckpt"]), str(page_text), "--json", "--log-probs"]) == 0
    [scored] = json.loads(capsys.readouterr().out)["files"]
    np.testing.assert_allclose(scored["log_probs"], api_log_probs, rtol=0, atol=1e-6)
