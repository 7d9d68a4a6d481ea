"""What the network computes on a text, as one self-contained HTML page (visualize.py).

``trace`` is the only function here that knows the model: it runs the same forward pass as training and
validation and returns plain arrays, named groups of activations and the next-character distributions.
Everything after it (the measured features of the text, the units that follow them, the page) takes only those
arrays, the characters and the vocabulary, so another cell or more layers change ``trace`` alone. The surprise of
each character is the Python API's score (``Model.score(text).log_probs``): the page, score.py and the API show
one computation.

The idea and the features follow Karpathy, Johnson and Fei-Fei, "Visualizing and Understanding Recurrent
Networks" (2015): single units of character models track quotes, brackets or the position in a line.
"""

from dataclasses import dataclass

import numpy as np
import torch

from . import network, pages

TOP_K = 5  # the model's most likely characters shown for each position
PER_FEATURE = 5  # units ranked for each feature
DECIMALS = 3  # the page's numbers: finer than a colour can show, and it keeps the page small
SURPRISE_DECIMALS = 7  # the surprise itself: it agrees with score.py to 1e-6
GENERATOR = "charrnn visualize.py"  # marks a page as ours: visualize.py replaces only files that carry it


@dataclass
class Trace:
    """What the network computed over T characters, as NumPy arrays.

    groups: name -> (T, H) activations; row t is the state after reading character t.
    ranges: name -> (lo, hi), the values the group's units can take; the colour scale is centred on the middle.
    probs: (T, V); row t is the model's distribution for character t + 1, after reading characters 0 .. t (so
        ``probs[t - 1, ids[t]]`` is how likely the model found character t; the last row predicts past the text).
    """

    groups: dict[str, np.ndarray]
    ranges: dict[str, tuple[float, float]]
    probs: np.ndarray


def trace(arch, params: dict, ids) -> Trace:
    """Run the network from a zero state over the character ids with training's own forward pass
    (``network.forward``, no dropout), in float64 as the sampler does.

    Groups, per layer (named ``layer N ...`` when there are several): the state ``h``, then what the cell shows of
    itself (its ``page_groups``: for an LSTM the cell ``c``, its gates and candidate; for a GRU its reset and update
    gates and its candidate ``n``).
    """
    params = {name: torch.as_tensor(params[name], dtype=torch.float64) for name in arch.param_shapes()}
    inputs = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
    with torch.no_grad():
        logits, _, acts = network.forward(arch, params, inputs, arch.zero_state(1, torch.float64))
        probs = torch.softmax(logits[0], dim=-1)
    groups, ranges = {}, {}
    for layer, a in enumerate(acts):
        prefix = f"layer {layer + 1} " if arch.num_layers > 1 else ""
        found = {"h": (a["h"][1:], (-1.0, 1.0)), **arch.cell_math.page_groups(a)}  # (T, B, H): after each character
        for name, (values, bounds) in found.items():
            groups[prefix + name], ranges[prefix + name] = values[:, 0].numpy(), bounds
    return Trace(groups=groups, ranges=ranges, probs=probs.numpy())


def text_features(text: str) -> dict[str, np.ndarray]:
    """Simple properties of each character, measured on the text as it stands after reading that character."""
    names = ("inside quotes", "inside brackets", "position in the line", "start of a word", "inside a word",
             "upper case", "after a newline", "space", "punctuation")  # fmt: skip
    values = np.zeros((len(names), len(text)))
    quoted, depth, column, previous = False, 0, 0, "\n"
    for t, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c in "“«":
            quoted = True
        elif c in "”»":
            quoted = False
        depth = depth + 1 if c in "([{" else max(0, depth - 1) if c in ")]}" else depth
        letter = c.isalpha()
        values[:, t] = (quoted, depth > 0, column, letter and not previous.isalpha(), letter, c.isupper(),
                        previous == "\n", c == " ", not (letter or c.isspace() or c.isdigit()))  # fmt: skip
        column = 0 if c == "\n" else column + 1
        previous = c
    return dict(zip(names, values))


def correlations(activations: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``activations`` (T, H) with ``feature`` (T,); 0 for a constant unit."""
    a = activations - activations.mean(0)
    f = feature - feature.mean()
    scale = np.sqrt((a * a).sum(0) * (f @ f))
    return np.divide(f @ a, scale, out=np.zeros(a.shape[1]), where=scale > 0)


def rank_units(groups: dict[str, np.ndarray], features: dict[str, np.ndarray], per_feature: int = PER_FEATURE):
    """For each feature that varies in the text, the ``per_feature`` units (of all groups) that follow it best.

    Returns rows ``{"feature", "group", "unit", "r"}``: a feature's units by |r|, features by their best |r|.
    """
    units = [(name, unit) for name, acts in groups.items() for unit in range(acts.shape[1])]
    all_acts = np.concatenate(list(groups.values()), axis=1)
    ranked = []
    for feature, values in features.items():
        if values.min() == values.max():
            continue
        r = correlations(all_acts, values)
        best = np.argsort(-np.abs(r), kind="stable")[:per_feature]
        ranked.append([{"feature": feature, "group": units[i][0], "unit": units[i][1], "r": float(r[i])} for i in best])
    ranked.sort(key=lambda rows: -abs(rows[0]["r"]))
    return [row for rows in ranked for row in rows]


def _rounded(a: np.ndarray) -> list:
    return np.round(a, DECIMALS).tolist()


def page_data(tr: Trace, ids, vocab: list[str], title: str, log_probs) -> dict:
    """What the page shows, as JSON-ready data; activations unit-major (``values[unit][t]``).

    ``log_probs`` (T - 1,): log p of characters 1 .. T - 1 given the text before each (``Model.score``). The first
    character has no surprise (None) and no expected characters: it is context, read but not predicted.
    """
    ids = np.asarray(ids)
    text = "".join(vocab[i] for i in ids)
    features = text_features(text)
    ranking = rank_units(tr.groups, features)
    predicted = tr.probs[:-1]  # (T - 1, V): row t - 1 is character t's distribution
    expected = np.argsort(-predicted, axis=1, kind="stable")[:, :TOP_K]
    return {
        "title": title,
        "text": text,
        "vocab": vocab,
        "groups": [
            {"name": name, "range": list(tr.ranges[name]), "values": _rounded(acts.T)}
            for name, acts in tr.groups.items()
        ],  # fmt: skip
        "ranking": [{**row, "r": round(row["r"], DECIMALS)} for row in ranking],
        "absent": [name for name, values in features.items() if values.min() == values.max()],
        "surprise": [None, *np.round(-np.asarray(log_probs, dtype=np.float64), SURPRISE_DECIMALS).tolist()],
        "expected": [[], *expected.tolist()],
        "expected_p": [[], *_rounded(np.take_along_axis(predicted, expected, axis=1))],
    }


def page(tr: Trace, ids, vocab: list[str], title: str, log_probs) -> str:
    """The HTML page: inline CSS and script, the data as JSON; nothing is fetched, so it opens offline from disk."""
    return pages.fill(_PAGE, GENERATOR, title, page_data(tr, ids, vocab, title, log_probs))


_PAGE = (
    pages.HEAD
    + """<style>
body { max-width: 72em; } h2 { font-size: 1.1em; margin: 1.2em 0 .3em; }
.note { color: #555; margin: .2em 0 .5em; }
.text { font: 13px/1.7 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap; word-break: break-all;
        border: 1px solid #ccc; padding: .5em .7em; max-height: 70vh; overflow-y: auto; }
.controls { display: flex; gap: .8em; align-items: center; flex-wrap: wrap; }
.controls input { width: 5em; }
.scale { display: inline-block; width: 12em; height: .9em; vertical-align: middle; border: 1px solid #aaa; }
.columns { display: grid; grid-template-columns: minmax(0, 1fr) 22em; gap: 1.5em; align-items: start; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: .1em .5em; text-align: left; } td.r { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr { cursor: pointer; } tbody tr:hover { background: #eee; } tbody tr.selected { background: #fde79a; }
tr.first td { border-top: 1px solid #ddd; }
</style>
</head>
<body>
<h1>charrnn: {{title}}</h1>
<p class="note" id="summary"></p>
<div class="columns">
<section>
<h2>Activations</h2>
<div class="controls">
<label>group <select id="group"></select></label>
<label>unit <input id="unit" type="number" min="0" step="1"></label>
<button id="previous" type="button">&#9664;</button><button id="next" type="button">&#9654;</button>
<span><span id="low"></span> <span class="scale" id="activation-scale"></span> <span id="high"></span></span>
</div>
<p class="note">Each character coloured by the unit's value after reading it. Link to a unit:
<code>#group=NAME&amp;unit=N</code> (or <code>#unit=N</code> for the first group).</p>
<div class="text" id="activations"></div>
</section>
<section>
<h2>Units that follow the text</h2>
<p class="note">Pearson correlation r of each unit with a feature of the text; click a row to show the unit.</p>
<table><thead><tr><th>feature</th><th>unit</th><th class="r">r</th></tr></thead><tbody id="ranking"></tbody></table>
<p class="note" id="absent"></p>
</section>
</div>
<h2>Surprise</h2>
<p class="note">Each character coloured by &minus;log p, how unlikely the model found it given the text before it:
<span>0 <span class="scale" id="surprise-scale"></span> <span id="surprise-high"></span> nats</span>.
Hover over a character for the model's most likely characters at that position. The first character is context,
not predicted: it has no surprise and stays uncoloured.</p>
<div class="text" id="surprise"></div>
<script type="application/json" id="data">{{data}}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const byId = id => document.getElementById(id);
const chars = Array.from(data.text);  // code points, so characters outside the BMP stay one character
const groups = new Map(data.groups.map(g => [g.name, g]));
const units = g => g.values.length;
const label = c => c === "\\n" ? "\\u21b5" : c === " " ? "\\u2423" : c === "\\t" ? "\\u21e5" : c;

function spans(container) {
  return chars.map(c => {
    const span = document.createElement("span");
    span.textContent = c === "\\n" ? "\\u21b5\\n" : c;
    container.appendChild(span);
    return span;
  });
}

// Colour for s in [-1, 1]: blue below the middle of a group's range, white at it, red above.
const blend = (rgb, a) => `rgb(${rgb.map(c => Math.round(255 + (c - 255) * a)).join(",")})`;
const diverging = s => blend(s < 0 ? [33, 102, 172] : [178, 24, 43], Math.min(1, Math.abs(s)));
const sequential = s => blend([118, 42, 131], Math.max(0, Math.min(1, s)));
const gradient = colour => `linear-gradient(to right, ${[0, .25, .5, .75, 1].map(colour).join(",")})`;

const activationSpans = spans(byId("activations"));
const surpriseSpans = spans(byId("surprise"));
byId("activation-scale").style.background = gradient(x => diverging(2 * x - 1));

function show(name, unit) {
  const group = groups.get(name);
  unit = Math.max(0, Math.min(units(group) - 1, unit));
  const [low, high] = group.range, middle = (low + high) / 2, half = (high - low) / 2;
  group.values[unit].forEach((v, t) => {
    const s = (v - middle) / half, span = activationSpans[t];
    span.style.backgroundColor = diverging(s);
    span.style.color = Math.abs(s) > 0.65 ? "#fff" : "";
    span.title = `${name} unit ${unit} after '${label(chars[t])}': ${v}`;
  });
  byId("group").value = name;
  byId("unit").value = unit;
  byId("unit").max = units(group) - 1;
  byId("low").textContent = low;
  byId("high").textContent = high;
  for (const row of byId("ranking").children) {
    row.classList.toggle("selected", row.dataset.group === name && Number(row.dataset.unit) === unit);
  }
}

function select(name, unit) {
  location.hash = `group=${encodeURIComponent(name)}&unit=${unit}`;  // hashchange shows it
}

function fromHash() {
  const query = new URLSearchParams(location.hash.slice(1));
  if (!query.has("group") && !query.has("unit")) {  // no link: the unit that follows a feature best
    const top = data.ranking[0] || {group: data.groups[0].name, unit: 0};
    return show(top.group, top.unit);
  }
  const name = groups.has(query.get("group")) ? query.get("group") : data.groups[0].name;
  show(name, parseInt(query.get("unit"), 10) || 0);
}

for (const g of data.groups) byId("group").add(new Option(`${g.name} (${units(g)} units)`, g.name));
byId("group").addEventListener("change", e => select(e.target.value, 0));
byId("unit").addEventListener("change", e => select(byId("group").value, parseInt(e.target.value, 10) || 0));
byId("previous").addEventListener("click", () => select(byId("group").value, Number(byId("unit").value) - 1));
byId("next").addEventListener("click", () => select(byId("group").value, Number(byId("unit").value) + 1));
window.addEventListener("hashchange", fromHash);

data.ranking.forEach((row, i) => {
  const tr = byId("ranking").insertRow();
  const first = i === 0 || data.ranking[i - 1].feature !== row.feature;
  tr.className = first ? "first" : "";
  tr.dataset.group = row.group;
  tr.dataset.unit = row.unit;
  tr.insertCell().textContent = first ? row.feature : "";
  tr.insertCell().textContent = `${row.group} ${row.unit}`;
  const r = tr.insertCell();
  r.className = "r";
  r.textContent = (row.r > 0 ? "+" : "") + row.r.toFixed(3);
  tr.addEventListener("click", () => select(row.group, row.unit));
});
byId("absent").textContent = data.absent.length ? `Not in this text: ${data.absent.join(", ")}.` : "";

// Surprise: white at 0, full colour at the surprise of a uniform guess over the vocabulary, ln V.
const uniform = Math.log(data.vocab.length);
byId("surprise-scale").style.background = gradient(sequential);
byId("surprise-high").textContent = `\\u2265 ${uniform.toFixed(1)}`;
data.surprise.forEach((nats, t) => {
  const span = surpriseSpans[t];
  if (nats === null) {
    span.title = `'${label(chars[t])}': the first character, context (not predicted)`;
    return;
  }
  const s = nats / uniform;
  span.style.backgroundColor = sequential(s);
  span.style.color = s > 0.65 ? "#fff" : "";
  const guesses = data.expected[t].map((id, k) => `'${label(data.vocab[id])}' ${data.expected_p[t][k].toFixed(3)}`);
  span.title = `'${label(chars[t])}': -log p = ${nats.toFixed(3)} nats (p = ${Math.exp(-nats).toPrecision(3)})\\n` +
               `expected: ${guesses.join(", ")}`;
});
const scored = data.surprise.filter(nats => nats !== null);
const mean = scored.reduce((a, b) => a + b, 0) / Math.max(1, scored.length);
byId("summary").textContent = `${chars.length} characters, vocabulary of ${data.vocab.length}; ` +
  `mean surprise ${mean.toFixed(3)} nats per character (${(mean / Math.LN2).toFixed(3)} bits).`;
fromHash();
</script>
</body>
</html>
"""
)
