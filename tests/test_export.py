"""export.py: the ONNX and TorchScript networks compute charrnn's forward pass (in PyTorch and in onnxruntime), the
page samples as charrnn's NumPy sampler does (in headless Chromium), the examples of docs/export.md run as written,
and bad input is one line that changes nothing."""

import base64
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import export as export_py
from charrnn import checkpoint, network, rundir, sampling
from charrnn.cells import CELLS
from charrnn.export import FORMATS, TORCHSCRIPT_EXTRA, onnx_bytes, page, torch_network, torchscript_bytes
from charrnn.network import Architecture
from charrnn.sampling import Sampler, encode_prime
from tests.test_visualize import chromium, needs_chromium, page_requests
from tests.train_helpers import ROOT, corpus, run_script, snapshot, tiny_args, train

TOLERANCE = 1e-5  # float32 against charrnn's float32 forward pass


VOCAB = list('ab</s>&"\n\u2028\U0001f642')  # characters that could end a script block, a line, a string


def make_network(cell: str, L: int, H: int = 8, seed: int = 0):
    """Architecture and float32 parameters moved off their initialisation, so that every gate is partly saturated,
    and a vocabulary of characters that HTML, JavaScript and JSON treat specially."""
    arch = Architecture(len(VOCAB), H, cell, L)
    g = torch.Generator().manual_seed(seed)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in arch.init_params(g).items()}
    return arch, params, VOCAB


def charrnn_windows(arch, params, windows, state):
    """Logits and states of charrnn's own forward pass over consecutive windows, the state carried."""
    out = []
    with torch.no_grad():
        for ids in windows:
            logits, state, _ = network.forward(arch, params, ids, state)
            out.append((logits, state))
    return out


CONFIGS = [(cell, L) for cell in ("rnn", "lstm", "gru") for L in (1, 2)]


@pytest.mark.parametrize("cell,L", CONFIGS)
def test_exports_compute_charrnns_forward_pass(cell, L, tmp_path):
    arch, params, vocab = make_network(cell, L)
    g = torch.Generator().manual_seed(1)
    windows = [torch.randint(arch.vocab_size, (3, T), generator=g) for T in (7, 5)]
    state = 0.5 * torch.randn(3, L * CELLS[cell].NUM_STATES, arch.hidden_size, generator=g)
    expected = charrnn_windows(arch, params, windows, state)

    (tmp_path / "model.onnx").write_bytes(onnx_bytes(arch, params, vocab))
    (tmp_path / "model.pt").write_bytes(torchscript_bytes(arch, params, vocab))
    extra = {TORCHSCRIPT_EXTRA: ""}
    scripted = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    runtimes = {
        "nn.Module": lambda ids, s: torch_network(cell, params)(ids, s),
        "TorchScript": lambda ids, s: scripted(ids, s),
        "onnxruntime": lambda ids, s: [
            torch.from_numpy(a) for a in session.run(None, {"ids": ids.numpy(), "state": s.numpy()})
        ],
    }
    for name, run in runtimes.items():
        s = state
        for ids, (logits_ref, state_ref) in zip(windows, expected):
            with torch.no_grad():
                logits, s = run(ids, s)
            assert logits.shape == logits_ref.shape and s.shape == state_ref.shape, name
            torch.testing.assert_close(logits, logits_ref, rtol=0, atol=TOLERANCE, msg=name)
            torch.testing.assert_close(s, state_ref, rtol=0, atol=TOLERANCE, msg=name)
        assert logits.abs().max() > 0.5  # the logits are not all near zero (the comparison can fail)

    assert json.loads(extra[TORCHSCRIPT_EXTRA])["vocab"] == vocab
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["charrnn.vocab"]) == vocab and json.loads(props["charrnn.architecture"]) == arch.as_dict()


def test_the_mapping_can_fail():
    """A network whose LSTM gates are left in charrnn's order computes something else: the comparison sees it."""
    arch, params, _ = make_network("lstm", 1)
    module = torch_network("lstm", params)
    with torch.no_grad():
        module.rnn.weight_hh_l0.copy_(params["Whh"])
        ids, state = torch.tensor([[1, 2, 3]]), arch.zero_state(1)
        assert not torch.allclose(module(ids, state)[0], network.forward(arch, params, ids, state)[0], atol=1e-3)


def test_page_holds_the_float32_weights_and_the_vocabulary():
    """The page's data block is JSON that no character of the vocabulary or the title can end early, holding every
    parameter as base64 of its little-endian float32 values."""
    arch, params, vocab = make_network("gru", 2)
    text = page(arch, params, vocab, "</script><b>&")
    [block] = re.findall(r'<script type="application/json" id="model">(.*?)</script>', text, re.S)
    assert "<" not in block and "<b>" not in text
    data = json.loads(block)
    assert data["vocab"] == vocab and data["architecture"] == arch.as_dict() and data["title"] == "</script><b>&"
    assert data["params"].keys() == params.keys()
    for name, p in params.items():
        assert np.array_equal(np.frombuffer(base64.b64decode(data["params"][name]), "<f4"), p.numpy().ravel()), name


# --- export.py on a checkpoint written by train.py ---


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1 x 32 LSTM trained for 400 steps on a short text repeated, so that its greedy text is words, not one
    repeated character."""
    d = tmp_path_factory.mktemp("export")
    (d / "input.txt").write_text(corpus(500) * 6, encoding="utf-8")
    args = tiny_args(d / "input.txt", d / "run", "--model.cell", "lstm", "--model.hidden_size", 32,
                     "--data.batch_size", 8, "--data.seq_length", 16, "--model.learning_rate", 0.05,
                     "--model.initial_accumulator_value", 0.03, "--trainer.val_check_interval", 100,
                     steps=400)  # fmt: skip
    assert train(args) == 0
    ckpt = rundir.newest_last_checkpoint(str(d / "run"))
    return {"dir": d, "ckpt": ckpt, "net": checkpoint.load_network(ckpt)}


def export_main(capsys, *args) -> tuple[int, str, str]:
    code = export_py.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_replaces_only_its_own_files(capsys, trained, tmp_path):
    for fmt in ("onnx", "torchscript", "html"):
        out = tmp_path / f"model.{fmt}"
        for _ in range(2):
            code, stdout, err = export_main(capsys, trained["ckpt"], "--format", fmt, "--out", out)
            assert (code, err) == (0, "") and stdout.startswith(f"wrote {out}: {fmt}, ")
    assert sorted(os.listdir(tmp_path)) == ["model.html", "model.onnx", "model.torchscript"]  # no temporary left
    # One of ours in any format may be replaced by another.
    assert export_main(capsys, trained["ckpt"], "--format", "html", "--out", tmp_path / "model.onnx")[0] == 0
    assert export_main(capsys, trained["ckpt"], "--format", "onnx", "--out", tmp_path / "model.torchscript")[0] == 0
    assert export_main(capsys, trained["ckpt"], "--format", "torchscript", "--out", tmp_path / "model.html")[0] == 0


def _assert_one_line_error(code, out, err, needle):
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_bad_inputs_are_one_line_errors_and_touch_nothing(capsys, trained, tmp_path):
    d, good = tmp_path, trained["ckpt"]
    (d / "notes.html").write_text('<meta name="generator" content="charrnn visualize.py">')
    (d / "model.onnx").write_bytes(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])).SerializeToString())
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(d / "model.pt"))  # TorchScript, not ours
    (d / "archive.zip").write_bytes(Path(good).read_bytes())  # a zip file: a checkpoint
    (d / "folder").mkdir()
    os.mkfifo(d / "fifo")
    cases = [
        ([good, "--format", "pdf", "--out", d / "x"], "invalid choice: 'pdf'"),
        ([good, "--out", d / "x"], "--format"),
        ([good, "--format", "onnx"], "--out"),
        ([d / "missing.ckpt", "--format", "onnx", "--out", d / "x"], "does not exist"),
        ([d / "notes.html", "--format", "onnx", "--out", d / "x"], "not a checkpoint"),
        *[
            ([good, "--format", fmt, "--out", d / name], "not written by export.py")
            for fmt in FORMATS
            for name in ("notes.html", "model.onnx", "model.pt", "archive.zip")
        ],
        ([good, "--format", "html", "--out", d / "folder"], "not a regular file"),
        ([good, "--format", "html", "--out", d / "fifo"], "not a regular file"),
        ([good, "--format", "html", "--out", d / "nowhere" / "page.html"], "does not exist"),
        ([good, "--format", "onnx", "--out", "/proc/model.onnx"], "cannot write it"),
    ]
    before = snapshot(d)
    for args, needle in cases:
        _assert_one_line_error(*export_main(capsys, *args), needle)
        assert snapshot(d) == before, args


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_docs_examples_run_as_written(capsys, trained, tmp_path):
    """Each Python example of docs/export.md, run in a directory holding the exports it names, prints the prime and a
    greedy continuation whose every character is one charrnn finds the most likely (to float32's rounding)."""
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        assert export_main(capsys, trained["ckpt"], "--format", fmt, "--out", tmp_path / name)[0] == 0
    blocks = _python_blocks((ROOT / "docs" / "export.md").read_text("utf-8"))
    assert len(blocks) == 2
    net = trained["net"]
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        prime = re.search(r'prime = "(.*?)"', block).group(1)
        text = done.stdout.rstrip("\n")
        assert text.startswith(prime) and len(text) == len(prime) + int(re.search(r"range\((\d+)\)", block).group(1))
        stepper = sampling.NumpyStack(CELLS[net.arch.cell], net.params)
        logits = None
        for i, x in enumerate(encode_prime(net.vocab, text)):
            if i >= len(prime):
                assert logits[x] >= logits.max() - 1e-4, (i, text)
            logits = stepper.advance(x).copy()


# --- The page, in a real browser ---

# Loads each page in a frame, runs `task(window, args)` on it (an async function given below it), and writes the
# results as JSON into its own DOM for --dump-dom.
HARNESS = """<!DOCTYPE html><pre id="log"></pre><script>
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
const load = src => new Promise(resolve => {
  const frame = document.createElement("iframe");
  frame.onload = () => resolve(frame.contentWindow);
  frame.src = src;
  document.body.append(frame);
});
{{task}}
(async () => {
  const results = [];
  for (const [src, args] of {{pages}}) results.push(await task(await load(src), args));
  document.getElementById("log").textContent = JSON.stringify(results);
})().catch(e => { document.getElementById("log").textContent = JSON.stringify({ error: String(e) }); });
</script>"""


def in_chromium(tmp_path, pages: list[tuple[str, object]], task: str, *flags) -> list:
    """``task``'s result on each page (file names in ``tmp_path``), run in headless Chromium."""
    harness = tmp_path / "harness.html"
    pages = json.dumps(pages).replace("<", "\\u003c")  # no "</script>" in the harness's own script
    harness.write_text(HARNESS.replace("{{task}}", task).replace("{{pages}}", pages))
    # Only the harness needs file access (to reach into its frames); a page alone runs with none.
    dom = chromium(tmp_path, harness.as_uri(), "--dump-dom", "--allow-file-access-from-files",
                   "--virtual-time-budget=600000", *flags)  # fmt: skip
    found = re.search(r'<pre id="log">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    results = json.loads(html.unescape(found.group(1)))
    assert isinstance(results, list), results
    return results


LOGITS_TASK = """async function task(w, { prime, choices }) {
  const net = new w.charrnn.Network(), logits = [Array.from(net.logits)];
  for (const x of w.charrnn.encode(prime)) logits.push(Array.from(net.advance(x)));
  const chosen = choices.map(([t, u]) => w.charrnn.choose(Float64Array.from(logits[logits.length - 1]), t, u));
  return { logits, chosen };
}"""


@needs_chromium
def test_page_computes_the_numpy_samplers_logits_and_choices(tmp_path):
    """For every cell, 1 and 2 layers: the logits after each character of a prime are the NumPy sampler's (float64)
    to 1e-9, and the character drawn for a uniform at a temperature is the sampler's."""
    prime = "".join(VOCAB[i] for i in np.random.default_rng(1).integers(len(VOCAB), size=30))
    rng = np.random.default_rng(0)
    choices = [(t, float(u)) for t in (0, 0.5, 1, 2) for u in rng.random(40)] + [(1, 0.0), (1, 1 - 2**-53)]
    pages = []
    for cell, L in CONFIGS:
        arch, params, vocab = make_network(cell, L)
        (tmp_path / f"{cell}{L}.html").write_text(page(arch, params, vocab, f"<b>{cell} {L}</b>"), encoding="utf-8")
        pages.append((f"{cell}{L}.html", {"prime": prime, "choices": choices}))
    results = in_chromium(tmp_path, pages, LOGITS_TASK)
    for (cell, L), result in zip(CONFIGS, results):
        arch, params, vocab = make_network(cell, L)
        stepper = sampling.NumpyStack(CELLS[cell], params)
        expected = [stepper.logits.copy()] + [stepper.advance(x).copy() for x in encode_prime(vocab, prime)]
        # Both float64 from the same float32 weights: apart only by rounding (4e-16 measured), far inside 1e-4.
        np.testing.assert_allclose(np.array(result["logits"]), np.array(expected), rtol=0, atol=1e-9)
        assert np.abs(np.array(expected)).max() > 0.5
        samplers = {t: Sampler(cell, params, temperature=t) for t in (0, 0.5, 1, 2)}
        for s in samplers.values():
            s.next_logits = expected[-1]
        assert result["chosen"] == [samplers[t].choose(u) for t, u in choices], (cell, L)


UI_TASK = """async function task(w, { prime, temperature, length, seed, tick }) {
  const d = w.document, output = d.getElementById("output");
  if (tick) {  // the page's clock advances tick ms at each reading: a 20 ms chunk is 20 / tick characters
    let now = 0;
    w.performance.now = () => (now += tick);
  }
  let mutations = 0;
  new w.MutationObserver(records => { mutations += records.length; }).observe(output, { childList: true });
  const set = (id, value) => {
    const input = d.getElementById(id);
    input.value = value;
    input.dispatchEvent(new w.Event("input"));
  };
  set("prime", prime); set("temperature", temperature); set("length", length); set("seed", seed);
  d.getElementById("generate").click();
  const first = output.textContent;  // after the click's own work: the prime and the first chunk
  while (output.dataset.state === "running") await sleep(5);
  return { first, text: output.textContent, state: output.dataset.state, mutations,
           status: d.getElementById("status").textContent };
}"""


@needs_chromium
def test_page_generates_as_sample_py_from_its_controls(capsys, trained, tmp_path):
    """Typing a prime and pressing Generate streams the prime and its continuation into the page: greedily,
    sample.py --greedy's 200 characters; sampled, text of the vocabulary, fixed by the seed."""
    assert export_main(capsys, trained["ckpt"], "--format", "html", "--out", tmp_path / "page.html")[0] == 0
    prime = "The simple"
    code, greedy, err = run_script("sample.py", [trained["ckpt"], "--greedy", "--prime", prime, "--length", 200])
    assert code == 0 and greedy.startswith(prime), err
    assert len(set(greedy[len(prime) :])) >= 8, greedy  # the network learnt more than one repeated word
    long = 30_000  # 15 of the page's 20 ms chunks on a clock of 0.01 ms a character, however fast the machine
    runs = [
        {"prime": prime, "temperature": 0, "length": 200, "seed": 0},
        {"prime": prime, "temperature": 1, "length": long, "seed": 5, "tick": 0.01},
        {"prime": prime, "temperature": 1, "length": long, "seed": 5},
        {"prime": "", "temperature": 0.8, "length": 300, "seed": 6},
        {"prime": "caf\u00e9", "temperature": 1, "length": 10, "seed": 0},
    ]
    netlog = tmp_path / "netlog.json"
    results = in_chromium(tmp_path, [("page.html", args) for args in runs], UI_TASK, f"--log-net-log={netlog}")
    assert all(url.startswith("file:") for url in page_requests(netlog))  # the frames of the harness only
    greedy_run, sampled, again, unprimed, refused = results
    assert greedy_run["state"] == "done" and greedy_run["text"] == greedy

    vocab = set(trained["net"].vocab)
    assert sampled["state"] == "done" and sampled["text"].startswith(prime) and len(sampled["text"]) == long + 10
    assert set(sampled["text"]) <= vocab and sampled["text"] == again["text"]  # the seed fixes the text
    assert sampled["text"] != unprimed["text"] and len(set(sampled["text"])) > 20
    assert sampled["first"].startswith(prime) and len(prime) < len(sampled["first"]) <= len(prime) + 2000  # a chunk
    assert sampled["mutations"] > 2
    assert unprimed["state"] == "done" and len(unprimed["text"]) == 300
    assert refused["state"] == "idle" and "'é'" in refused["status"].replace('"', "'") and refused["text"] == ""


# Appended to a page: on load, times the page's own sampler in one task (load-time scripts run in real time, and
# no harness is needed), and writes the rate into the page.
SPEED_PROBE = """<pre id="speed"></pre><script>
window.addEventListener("load", () => {
  const sample = charrnn.sampler("ROMEO:", 1, 0), start = performance.now();
  for (let i = 0; i < 3000; i++) sample.next();
  document.getElementById("speed").textContent = Math.round(3000 / ((performance.now() - start) / 1000));
});
</script></body>"""


@needs_chromium
def test_page_of_an_lstm_256_is_small_and_fast(tmp_path):
    """A 1 x 256 LSTM on tiny-shakespeare's 65 characters: the page holds 346,433 float32 weights as base64 and
    little else, points nowhere outside itself, and generates hundreds of characters a second even on a busy CPU."""
    arch = Architecture(65, 256, "lstm", 1)
    vocab = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    params = arch.init_params(torch.Generator().manual_seed(0))
    text = page(arch, params, vocab, "lstm 256")
    weights = sum(p.numel() for p in params.values())
    assert weights == 346_433 and len(text.encode()) < 4 * weights * 4 / 3 + 20_000
    markup = re.sub(r'<script type="application/json" id="model">.*?</script>', "", text, flags=re.S)
    assert not re.search(r"https?:|//[\w.-]+\.|\b(src|href)\s*=|url\(|@import|fetch\(|XMLHttpRequest|WebSocket|<link",
                         markup, re.I)  # fmt: skip
    (tmp_path / "page.html").write_text(text.replace("</body>", SPEED_PROBE), encoding="utf-8")
    netlog = tmp_path / "netlog.json"
    dom = chromium(tmp_path, (tmp_path / "page.html").as_uri(), "--dump-dom", f"--log-net-log={netlog}")
    assert page_requests(netlog) == []
    rate = int(re.search(r'<pre id="speed">(\d+)</pre>', dom).group(1))
    print(f"\npage of a 1 x 256 LSTM, 65 characters: {len(text.encode())} bytes; {rate} characters per second")
    assert rate > 200
