"""charrnn's network outside charrnn: a standard ``nn.Module`` (for ONNX and TorchScript) and a self-contained page.

``TorchNetwork`` is ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and an ``nn.Linear`` holding a checkpoint's weights, so
any runtime that knows those layers runs the model. It keeps charrnn's interface: input ids (B, T) int64 and the
state (B, L * K, H) in, logits (B, T, V) and the state after them out (K = 2 for the LSTM's h and c, else 1).

The weights map one to one, up to the order of the gates and where the biases sit:

- the tanh RNN: ``bh`` is nn.RNN's ``bias_ih``; its ``bias_hh`` is zero;
- the LSTM: charrnn stores the gates (o, i, f, g), nn.LSTM (i, f, g, o); ``bh`` is ``bias_ih`` reordered;
- the GRU: both store (r, z, n); ``bh`` is ``bias_ih``, and ``bias_hh`` is (0, 0, ``bhn``), the bias inside the reset
  gate's product (charrnn/cells/gru.py).

Every export carries the vocabulary, and a mark saying charrnn wrote it (so that only charrnn's own files are ever
replaced): ONNX in its ``metadata_props``, TorchScript in an extra file of its archive, the page in a
``<meta name="generator">`` tag and its embedded JSON.
"""

import base64
import inspect
import io
import json
import warnings
import zipfile

import torch
from torch import nn

from . import pages, stack
from .cells import CELLS

GENERATOR = "charrnn export.py"  # the mark of a file export.py wrote, in every format
ONNX_PREFIX = "charrnn."  # ONNX metadata keys charrnn.generator, charrnn.vocab, charrnn.architecture (JSON values)
TORCHSCRIPT_EXTRA = "charrnn.json"  # TorchScript extra file: {"generator", "vocab", "architecture"}
FORMATS = ("onnx", "torchscript", "html")


class TorchNetwork(nn.Module):
    """charrnn's network as ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (all layers) and ``nn.Linear`` (the output)."""

    def __init__(self, cell: str, vocab_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        layers = getattr(nn, CELLS[cell].TORCH_MODULE)
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.num_states = CELLS[cell].NUM_STATES
        self.rnn = layers(vocab_size, hidden_size, num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids`` (B, T) int64, ``state`` (B, L * K, H) -> logits (B, T, V), state (B, L * K, H)."""
        B = ids.shape[0]
        x = nn.functional.one_hot(ids, self.vocab_size).to(self.out.weight.dtype)  # (B, T, V)
        layered = state.view(B, self.num_layers, self.num_states, self.hidden_size).transpose(0, 1)  # (L, B, K, H)
        if self.num_states == 2:
            y, (h, c) = self.rnn(x, (layered[:, :, 0].contiguous(), layered[:, :, 1].contiguous()))
            new_state = torch.stack((h, c), 2)  # (L, B, 2, H)
        else:
            y, h = self.rnn(x, layered[:, :, 0].contiguous())
            new_state = h.unsqueeze(2)  # (L, B, 1, H)
        return self.out(y), new_state.transpose(0, 1).reshape(B, -1, self.hidden_size)


def torch_network(cell: str, params: dict) -> TorchNetwork:
    """A ``TorchNetwork`` (float32, evaluation mode) holding charrnn's ``params`` of a ``cell`` network."""
    V, H = params["Why"].shape
    L = stack.num_layers(params)
    module = TorchNetwork(cell, V, H, L).eval()
    with torch.no_grad():
        for layer in range(L):
            weights = CELLS[cell].torch_weights(stack.layer_params(params, layer))
            for name, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), weights):
                getattr(module.rnn, f"{name}_l{layer}").copy_(w)
        module.out.weight.copy_(params["Why"])
        module.out.bias.copy_(params["by"].view(-1))
    return module


def _metadata(arch, vocab: list[str]) -> dict:
    return {"generator": GENERATOR, "vocab": vocab, "architecture": arch.as_dict()}


def onnx_bytes(arch, params: dict, vocab: list[str]) -> bytes:
    """The network as an ONNX model (opset 17: ONNX's own RNN / LSTM / GRU operators), inputs ``ids`` (B, T) int64
    and ``state`` (B, L * K, H) float32, outputs ``logits`` and ``new_state``; B and T are free."""
    import onnx  # here: torchscript and html exports need no onnx

    module, (ids, state) = torch_network(arch.cell, params), _example(arch)
    names = {"input_names": ["ids", "state"], "output_names": ["logits", "new_state"]}
    axes = {"ids": {0: "B", 1: "T"}, "state": {0: "B"}, "logits": {0: "B", 1: "T"}, "new_state": {0: "B"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's notes on its own deprecation
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter (deprecated, still in torch 2.13) keeps T free and writes ONNX's RNN, LSTM
        # and GRU operators; the torch.export-based one (2.9's default) unrolls the tanh RNN and stacked layers over
        # the example's T steps.
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(module, (ids, state), buffer, opset_version=17, dynamic_axes=axes, **names, **legacy)
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in _metadata(arch, vocab).items():
        model.metadata_props.add(key=ONNX_PREFIX + key, value=json.dumps(value, ensure_ascii=False))
    return model.SerializeToString()


def torchscript_bytes(arch, params: dict, vocab: list[str]) -> bytes:
    """The network traced to TorchScript (B and T free), its metadata in the archive's extra file ``charrnn.json``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # torch.jit's notes on its own deprecation
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(torch_network(arch.cell, params), _example(arch))
        extra = {TORCHSCRIPT_EXTRA: json.dumps(_metadata(arch, vocab), ensure_ascii=False)}
        torch.jit.save(traced, buffer, _extra_files=extra)
    return buffer.getvalue()


def _example(arch) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs to trace with: one stream of two characters (ids (1, 2), state (1, L * K, H))."""
    return torch.zeros((1, 2), dtype=torch.int64), arch.zero_state(1)


def page(arch, params: dict, vocab: list[str], title: str) -> str:
    """The self-contained sampling page: inline CSS and script, the weights as base64 of little-endian float32 (the
    precision charrnn trains in), computed in float64 as charrnn's NumPy sampler computes; nothing is fetched."""
    weights = {name: base64.b64encode(p.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
               .decode() for name, p in params.items()}  # fmt: skip
    cell = arch.cell_math
    template = _PAGE.replace("{{step}}", cell.JS_STEP.replace("\n", "\n        "))  # the cell's own step
    data = {**_metadata(arch, vocab), "title": title, "gates": cell.GATES, "params": weights}
    return pages.fill(template, GENERATOR, title, data)


_PAGE = (
    pages.HEAD
    + """<style>
body { max-width: 60em; }
.note { color: #555; margin: .2em 0 .6em; }
.controls { display: flex; gap: .8em; align-items: end; flex-wrap: wrap; margin-bottom: .6em; }
.controls label { display: flex; flex-direction: column; font-size: 12px; color: #555; }
.controls input { width: 6em; }
textarea, #output { font: 13px/1.6 ui-monospace, "DejaVu Sans Mono", monospace; }
textarea { width: 100%; box-sizing: border-box; height: 4.5em; }
#output { white-space: pre-wrap; word-break: break-word; border: 1px solid #ccc; padding: .5em .7em; min-height: 8em; }
#status.error { color: #b00; }
</style>
</head>
<body>
<h1>charrnn: {{title}}</h1>
<p class="note" id="summary"></p>
<label for="prime" class="note">Prime: text the network reads first (only characters of its training text)</label>
<textarea id="prime" spellcheck="false"></textarea>
<div class="controls">
<label>temperature (0: greedy)<input id="temperature" type="number" min="0" step="0.1" value="1"></label>
<label>length<input id="length" type="number" min="0" step="1" value="1000"></label>
<label>seed<input id="seed" type="number" min="0" step="1" value="0"></label>
<button id="generate" type="button">Generate</button>
<button id="stop" type="button" disabled>Stop</button>
</div>
<p class="note" id="status"></p>
<div id="output" data-state="idle"></div>
<script type="application/json" id="model">{{data}}</script>
<script>
"use strict";
// charrnn's sampler (charrnn/sampling.py) in plain JavaScript: float32 weights, float64 arithmetic. A property
// of window, for other scripts (and tests) to use.
window.charrnn = (() => {
  const model = JSON.parse(document.getElementById("model").textContent);
  const { cell, vocab_size: V, hidden_size: H, num_layers: L } = model.architecture;
  const G = model.gates;  // Wxh is (G * H, in)
  const sigmoid = x => 1 / (1 + Math.exp(-x));

  function floats(name) {  // base64 of little-endian float32 -> Float64Array
    const bytes = Uint8Array.from(atob(model.params[name]), ch => ch.charCodeAt(0));
    const view = new DataView(bytes.buffer), out = new Float64Array(bytes.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }
  function matvec(W, x, bias, out) {  // out = W x + bias, W row-major (out.length, x.length)
    const n = x.length, n4 = n - n % 4;
    for (let r = 0, k = 0; r < out.length; r++, k += n) {
      // Four sums, so that no add waits on the one before it: about 20% faster than one in V8.
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
      for (; j < n4; j += 4) {
        s0 += W[k + j] * x[j];
        s1 += W[k + j + 1] * x[j + 1];
        s2 += W[k + j + 2] * x[j + 2];
        s3 += W[k + j + 3] * x[j + 3];
      }
      for (; j < n; j++) s0 += W[k + j] * x[j];
      out[r] = bias[r] + (s0 + s1 + (s2 + s3));
    }
  }
  const zeros = new Float64Array(G * H);
  const weights = Array.from({ length: L }, (_, l) => {
    const suffix = l ? "_" + l : "";
    const p = { Wxh: floats("Wxh" + suffix), Whh: floats("Whh" + suffix), bh: floats("bh" + suffix) };
    p.bhn = "bhn" + suffix in model.params ? floats("bhn" + suffix) : null;  // GRU: b_hn
    return p;
  });
  // Layer 0's input pre-activation for character x: column x of Wxh plus bh, as a row of a table (V, G * H).
  const table = Array.from({ length: V }, (_, x) => weights[0].bh.map((b, r) => weights[0].Wxh[r * V + x] + b));
  const Why = floats("Why"), by = floats("by");

  class Network {
    constructor() {
      this.layers = weights.map(p => ({ p, h: new Float64Array(H), c: new Float64Array(H),
                                        inp: new Float64Array(G * H), rec: new Float64Array(G * H) }));
      this.logits = new Float64Array(V);
      this.reset();
    }
    reset() {  // the zero state, and its next-character logits
      for (const layer of this.layers) { layer.h.fill(0); layer.c.fill(0); }
      this.logits.set(by);
    }
    advance(x) {  // read character x; return the next character's logits (rewritten by the next call)
      let below = null;
      for (const { p, h, c, inp, rec } of this.layers) {
        if (below === null) inp.set(table[x]); else matvec(p.Wxh, below, p.bh, inp);
        matvec(p.Whh, h, zeros, rec);
        {{step}}
        below = h;
      }
      matvec(Why, below, by, this.logits);
      return this.logits;
    }
  }

  // The next character for a uniform u in [0, 1): the first where the cumulative sum of exp((logit - max) / T)
  // passes u times the total (sampling.Sampler.choose); temperature 0 takes the most likely (the first of ties).
  function choose(logits, temperature, u) {
    let best = 0;
    for (let k = 1; k < logits.length; k++) if (logits[k] > logits[best]) best = k;
    if (temperature === 0) return best;
    const cdf = new Float64Array(logits.length), max = logits[best], scale = 1 / temperature;
    let total = 0;
    for (let k = 0; k < logits.length; k++) {
      cdf[k] = total += Math.exp(scale === 1 ? logits[k] - max : (logits[k] - max) * scale);
    }
    const target = u * total;
    for (let k = 0; k < cdf.length; k++) if (cdf[k] > target) return k;
    return cdf.indexOf(total);  // u * total rounded up to the total: the last character with a probability
  }

  function uniforms(seed) {  // mulberry32, two draws per 53-bit uniform: the same seed, the same text
    let a = seed >>> 0;
    const next = () => {
      a = (a + 0x6D2B79F5) >>> 0;
      let t = Math.imul(a ^ (a >>> 15), a | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return (t ^ (t >>> 14)) >>> 0;
    };
    return () => (next() * 2 ** 21 + (next() >>> 11)) / 2 ** 53;
  }

  function encode(text) {  // ids, or an Error naming the characters the network never saw
    const ids = [], missing = new Set();
    for (const ch of text) {
      const id = model.vocab.indexOf(ch);
      if (id < 0) missing.add(ch); else ids.push(id);
    }
    if (missing.size) {
      throw new Error("the prime has characters not in the vocabulary: " + JSON.stringify([...missing].join("")));
    }
    return ids;
  }

  // A generation: feed the prime, then each call of next() draws a character id and reads it.
  function sampler(prime, temperature, seed) {
    const net = new Network(), u = uniforms(seed);
    for (const x of encode(prime)) net.advance(x);
    return { next() { const x = choose(net.logits, temperature, u()); net.advance(x); return x; } };
  }

  return { model, vocab: model.vocab, Network, choose, encode, sampler };
})();

(() => {
  const $ = id => document.getElementById(id);
  const { cell, num_layers: L, hidden_size: H, vocab_size: V } = charrnn.model.architecture;
  $("summary").textContent = `${L} x ${H} ${cell.toUpperCase()}, ${V} characters. It runs in this page, offline.`;
  const output = $("output"), status = $("status");
  const CHUNK_MS = 20;  // work between two paints: the text streams in while the page stays responsive
  let running = null;

  function say(text, error = false) { status.textContent = text; status.className = error ? "error" : ""; }
  function number(id, integer) {
    const value = Number($(id).value);
    if ($(id).value.trim() === "" || !Number.isFinite(value) || value < 0 || (integer && !Number.isInteger(value)))
      throw new Error(`${id} must be ${integer ? "an integer" : "a number"}, 0 or more`);
    return value;
  }
  function finish(state, note) {
    running = null;
    output.dataset.state = state;
    $("generate").disabled = false;
    $("stop").disabled = true;
    say(note);
  }

  $("generate").addEventListener("click", () => {
    let sample, length;
    const prime = $("prime").value;
    try {
      const temperature = number("temperature", false);
      length = number("length", true);
      sample = charrnn.sampler(prime, temperature, number("seed", true));
    } catch (e) {
      say(e.message, true);
      return;
    }
    const run = running = {};
    output.textContent = prime;
    output.dataset.state = "running";
    $("generate").disabled = true;
    $("stop").disabled = false;
    let done = 0, busy = 0;
    const step = () => {
      if (run !== running) return;  // stopped
      const start = performance.now();
      let text = "";
      while (done < length && performance.now() - start < CHUNK_MS) { text += charrnn.vocab[sample.next()]; done++; }
      busy += performance.now() - start;
      output.append(text);
      if (done < length) { say(`${done} of ${length} characters`); setTimeout(step, 0); return; }
      finish("done", `${length} characters, ${Math.round(length / (busy / 1000) || 0)} per second`);
    };
    step();
  });
  $("stop").addEventListener("click", () => finish("stopped", "stopped"));
})();
</script>
</body>
</html>
"""
)


def export(arch, params: dict, vocab: list[str], fmt: str, title: str) -> bytes:
    """The bytes of an export of the network in format ``fmt`` (one of FORMATS)."""
    if fmt == "onnx":
        return onnx_bytes(arch, params, vocab)
    if fmt == "torchscript":
        return torchscript_bytes(arch, params, vocab)
    return page(arch, params, vocab, title).encode()


def written_by_charrnn(path: str) -> bool:
    """Whether the file at ``path`` is an export of ours (any format): the only files an export may replace."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if f'<meta name="generator" content="{GENERATOR}">'.encode() in head:
        return True
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(f"/extra/{TORCHSCRIPT_EXTRA}") for name in archive.namelist())
        except zipfile.BadZipFile:
            return False
    try:
        import onnx

        model = onnx.load(path, load_external_data=False)
    except Exception:  # not ONNX (or no onnx to read it with): not known to be ours
        return False
    return any(p.key == ONNX_PREFIX + "generator" and p.value == json.dumps(GENERATOR) for p in model.metadata_props)
