"""Text generation: the one sampling implementation, used by sample.py and by the samples written in training.

Generating is a loop over characters, so what costs is the fixed overhead of each operation, not arithmetic.
The loop runs in NumPy (about a microsecond per call, where a torch call costs several): ``NumpyStack`` advances
every layer of any cell by one character with one matrix-vector product per layer and a handful of small vector
operations. A character is drawn by inverse CDF: the cumulative sum of ``exp(logits - max)`` searched for
``u * total``, with the uniforms ``u`` drawn in blocks from NumPy's PCG64, so ``P(x = i)`` is exactly ``p_i`` (to
float64 rounding) and a seed fixes the text.

A cell with a ``C_GENERATOR`` (the LSTM, the cell with a speed goal for sampling) runs that loop in C when native.c
is built (charrnn/cells/native.py): ``lstm_generate`` draws and advances a chunk of characters per call with the
same rule on the same buffers, so its text is the NumPy loop's (tests/test_sampling.py); a 1 x 256 LSTM then
samples about 25 k characters per second on one AMD EPYC core instead of 18 k (BENCHMARKS.md, section 6). top-k
stays in NumPy.

Everything is float64: a rounding difference between two machines (BLAS kernels, SIMD tanh and exp) then moves
a class boundary by ~1e-16, so the same seed gives the same text on any CPU in all but astronomically rare cases.
A large matrix whose weights were trained in float32 is read as float32 and summed in float64
(``_float32_exact``), the same sums from half the bytes.

``half`` (``sample.py --half``) trades that exactness for speed where the weights' bytes are the limit: every
matrix in float16, summed in float32, a quarter of float64's bytes. A 2 x 512 LSTM reads 12.7 MB per character
even in float32, which one AMD EPYC core streams at ~65 GB/s: under 5k characters per second however it is summed;
with --half, 6.7k (BENCHMARKS.md, section 6). A character's probability moves by at most about 0.01 and trained
networks' held-out loss by at most 1.2e-5 nats a character; a seed still fixes the text on one machine.
"""

import ctypes
import functools

import numpy as np
import torch

from .cells import CELLS, native
from .errors import UsageError
from .stack import layer_params, num_layers

_BLOCK = 4096  # uniforms drawn at a time; the stream is the same whatever the block size
_CHUNK = 256  # characters per call of the C loop (so the first ones are printed without waiting for a block)
_MATRIX_KINDS = {np.float64: 0, np.float32: 1, np.float16: 2}  # lstm_generate's codes for a layer matrix's dtype


def encode_prime(vocab: list[str], text: str, source: str = "--prime") -> list[int]:
    """Ids of ``text``; characters the model never saw, or bytes that are not UTF-8 (a command line's bytes that do
    not decode arrive as lone surrogates), are a UsageError that names them (and ``source``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")  # the bytes as given
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        raise UsageError(f"{source} is not valid UTF-8 (its bytes: {raw.hex(' ')}); pass UTF-8 text") from None
    index = {c: i for i, c in enumerate(vocab)}
    missing = sorted(set(text) - index.keys())
    if missing:
        raise UsageError(
            f"{source} has characters not in the model's vocabulary: {''.join(missing)!r}; "
            "use only characters of its training text"
        )
    return [index[c] for c in text]


class Sampler:
    """The network's state plus the rule for drawing the next character.

    Args:
        cell: the network's cell, a name of charrnn.cells.CELLS.
        params: the network's parameters (tensors or arrays, any device and dtype), any number of layers.
        h: starting state (L * K, H) or (1, L * K, H) (a stream's rows of the carried state); zeros by default.
        temperature: logits are divided by it; 0 means greedy.
        top_k: draw only among the ``top_k`` most likely characters (ties with the k-th are kept);
            1 means greedy, ``None`` or at least the vocabulary size means no restriction.
        seed: seeds the uniforms (any non-negative integer); ``None`` draws fresh entropy.
        device: ``None`` runs the matrix-vector products in NumPy; a torch device (e.g. ``"cuda"``) runs them
            there, which pays a host round trip per layer and character and so only helps very large hidden sizes.
        half: the matrices in float16 with float32 sums, on the CPU (see the module's docstring).
    """

    def __init__(self, cell: str, params: dict, h=None, temperature=1.0, top_k: int | None = None, seed=None,
                 device=None, half=False):  # fmt: skip
        self.cell = CELLS[cell]
        self.network = NumpyStack(self.cell, params, h, device=device, half=half)
        self.rng = np.random.default_rng(seed)
        self.next_logits = self.network.logits  # this state's logits (a view: advancing rewrites it in place)
        self.cdf = np.empty(len(self.next_logits))
        self.advance = self.network.advance  # move the state over a character (all layers), then its logits
        self.device = device
        self.configure(temperature, top_k)

    def configure(self, temperature=1.0, top_k: int | None = None) -> None:
        """Set the rule for drawing (the arguments of the same names); the state and the uniforms go on."""
        self.greedy = temperature == 0 or top_k == 1
        self.inv_temperature = 1.0 if self.greedy else 1.0 / temperature
        self.top_k = top_k if top_k is not None and 1 < top_k < len(self.cdf) else None
        self.native_loop = self._c_loop() if not self._why_not_c() else None

    def _why_not_c(self) -> str:
        """Why the characters are not generated by native.c ("" when they are)."""
        if self.cell.C_GENERATOR is None:
            return "no C generator for this cell"
        if self.device is not None:
            return f"products on {self.device}"
        if self.top_k is not None:
            return "--top-k runs in NumPy"
        if native.kernel(self.cell.C_GENERATOR) is None:
            return "CHARRNN_NATIVE=0" if native._turned_off() else "native.c not built: no C compiler?"
        return ""

    @property
    def path(self) -> str:
        """Which loop generates and in which precision, and why not native.c's: what ``sample.py --verbose`` says."""
        kinds = sorted({w.dtype.name for w in self.network.weights}, key=["float16", "float32", "float64"].index)
        sums = "float32" if "float16" in kinds else "float64"
        precision = f"{'/'.join(kinds)} weights, {sums} sums"
        why = self._why_not_c()
        return f"{f'NumPy ({why})' if why else f'C generator ({self.cell.C_GENERATOR})'}, {precision}"

    def _c_loop(self):
        """A function generating the characters of a chunk of uniforms with native.c's ``lstm_generate`` (choose,
        then advance, on this sampler's own buffers)."""
        generate, net = native.kernel(self.cell.C_GENERATOR), self.network
        L, V, H = len(net.h1), len(self.cdf), len(net.c[0])
        pointers = [
            (ctypes.c_void_p * L)(*(a.ctypes.data for a in arrays)) for arrays in (net.weights, net.h1, net.c, net.outs)
        ]
        rows = (ctypes.c_long * L)(*(len(w) for w in net.weights))
        kinds = (ctypes.c_int * L)(*(_MATRIX_KINDS[w.dtype.type] for w in net.weights))
        chars = np.empty(_CHUNK, np.int64)
        fixed = (L, H, V, net.inputs.ctypes.data, pointers[0], rows, kinds, *pointers[1:], self.inv_temperature,
                 self.greedy, self.cdf.ctypes.data, net.scratch.ctypes.data)  # fmt: skip

        def loop(uniforms: np.ndarray, net=net) -> list[int]:  # net: keeps the buffers behind `fixed` alive
            generate(len(uniforms), uniforms.ctypes.data, chars.ctypes.data, *fixed)
            return chars[: len(uniforms)].tolist()

        return loop

    @property
    def state(self) -> np.ndarray:
        """The state (L * K, H) after the text fed or generated so far."""
        return self.network.state()

    @state.setter
    def state(self, h) -> None:
        self.network.set_state(h)
        for matvec in self.network.matvecs:  # the recurrent products and the logits of that state
            matvec()

    def choose(self, u: float) -> int:
        """The next character for the uniform ``u`` in [0, 1), without advancing the state."""
        logits = self.next_logits
        if self.greedy:
            return int(logits.argmax())
        cdf = self.cdf
        np.subtract(logits, np.maximum.reduce(logits), out=cdf)
        if self.inv_temperature != 1.0:
            cdf *= self.inv_temperature
        np.exp(cdf, out=cdf)
        if self.top_k is not None:
            cdf[logits < np.partition(logits, -self.top_k)[-self.top_k]] = 0.0
        np.add.accumulate(cdf, out=cdf)
        x = cdf.searchsorted(u * cdf[-1], "right")
        # u * total can round up to total; the last character with non-zero probability then owns it.
        return int(x) if x < len(cdf) else int(cdf.searchsorted(cdf[-1]))

    def generate(self, length: int, prime_ids=()):
        """Yield ``length`` new character ids, each drawn from the state after the previous one, after feeding
        ``prime_ids``."""
        for x in prime_ids:
            self.advance(x)
        choose, advance = self.choose, self.advance
        for start in range(0, length, _BLOCK):
            n = min(_BLOCK, length - start)
            uniforms = np.zeros(n) if self.greedy else self.rng.random(n)  # greedy draws none
            if self.native_loop is not None:
                for chunk in range(0, n, _CHUNK):
                    yield from self.native_loop(uniforms[chunk : chunk + _CHUNK])
                continue
            for u in uniforms.tolist():
                x = choose(u)
                advance(x)
                yield x


def generate(cell: str, params: dict, length: int, h=None, prime_ids=(), temperature=1.0, top_k=None, seed=None,
             device=None, half=False):  # fmt: skip
    """Yield ``length`` new character ids after feeding ``prime_ids`` from state ``h`` (zeros by default).

    Without a prime, the first character is drawn from the model's own output for the starting state.
    """
    yield from Sampler(cell, params, h, temperature, top_k, seed, device, half).generate(length, prime_ids)


class NumpyStack:
    """Generation's inner loop: every layer advanced by one character in NumPy, and the next character's logits.

    Per character and layer: the cell's small update, then one matrix-vector product that gives both this layer's
    next recurrent pre-activation and the layer above's input pre-activation (the top layer: the logits), as
    ``[Whh | b_rec; W_above | b_above] @ [h; 1]``. Layer 0's input pre-activation is a row of a precomputed table.
    The sigmoid gates' rows are halved, so the cell evaluates every gate with one tanh.

    Args:
        cell: a module of charrnn/cells; params: the stack's parameters (tensors or arrays, any device).
        state: (L * K, H) or (1, L * K, H) starting state; zeros by default.
        dtype: float64 (default: the same text from a seed on any machine) or float32.
        device: ``None`` runs the products in NumPy; a torch device (e.g. ``"cuda"``) runs them there, which pays a
            host round trip per layer and character and so only helps very large hidden sizes.
        half: on the CPU, keep every matrix in float16 and sum in float32 (native.c's ``matvec_f16``): a quarter of
            float64's bytes to read per character. A matrix float16 cannot hold stays as it is; ignored (exact
            products) with a ``device``, with ``dtype`` float32, or where ``native.half_available()`` is False.
    """

    def __init__(self, cell, params: dict, state=None, dtype=np.float64, device=None, half=False):
        def array(x):
            x = x.detach().to("cpu", torch.float64) if isinstance(x, torch.Tensor) else x
            return np.array(x, dtype=np.float64)

        L = num_layers(params)
        V, H = params["Why"].shape
        K, GH = cell.NUM_STATES, cell.GATES * H
        scale = np.ones((GH, 1))
        scale[: cell.SIGMOID_GATES * H] = 0.5
        layers = [{name: array(p) for name, p in layer_params(params, layer).items()} for layer in range(L)]
        self.inputs = np.ascontiguousarray(((layers[0]["Wxh"] + layers[0]["bh"]) * scale).T, dtype=dtype)
        rec_biases = [cell.recurrent_bias(layer_params(params, layer)) for layer in range(L)]
        self.h1, self.c, self.outs, self.weights, self.matvecs, self.recs, self.aboves, self.steps = (
            [] for _ in range(8)
        )
        self.scratch = np.empty(H + 1, np.float32)  # x in float32 for the float16 product
        half = half and device is None and dtype == np.float64 and native.half_available()
        for layer in range(L):
            b_rec = np.zeros(GH) if rec_biases[layer] is None else array(rec_biases[layer])
            if layer + 1 < L:
                above = np.hstack((layers[layer + 1]["Wxh"], layers[layer + 1]["bh"])) * scale
            else:
                above = np.hstack((array(params["Why"]), array(params["by"])))
            W = np.vstack((np.hstack((layers[layer]["Whh"], b_rec[:, None])) * scale, above)).astype(dtype)
            h1, out = np.zeros(H + 1, dtype), np.empty(len(W), dtype)
            h1[H] = 1.0
            if half and np.abs(W).max() <= np.finfo(np.float16).max:
                W = W.astype(np.float16)
            elif device is None and _float32_exact(W):
                W = W.astype(np.float32)  # a large matrix trained in float32: half the bytes to read, the same sums
            self.h1.append(h1)
            self.c.append(np.zeros(H, dtype) if K == 2 else None)
            self.outs.append(out)
            self.weights.append(W)
            matvec = _matvec(W, h1, out, self.scratch) if device is None else _device_matvec(W, h1, out, device)
            self.matvecs.append(matvec)
            self.recs.append(out[:GH])
            self.aboves.append(out[GH:])
            self.steps.append(cell.numpy_step(H, dtype))
        self.K, self.logits = K, self.aboves[-1]
        self.layers = list(zip(self.steps, self.recs, [h1[:H] for h1 in self.h1], self.c, self.matvecs, self.aboves))
        if state is not None:
            self.set_state(state)
        for matvec in self.matvecs:
            matvec()

    def set_state(self, state) -> None:
        rows = np.asarray(state, dtype=np.float64).reshape(len(self.h1) * self.K, -1)
        for layer, (h1, c) in enumerate(zip(self.h1, self.c)):
            h1[:-1] = rows[layer * self.K]
            if c is not None:
                c[:] = rows[layer * self.K + 1]

    def state(self) -> np.ndarray:
        """The current state (L * K, H), a copy, rows ordered as the stack's state."""
        rows = []
        for h1, c in zip(self.h1, self.c):
            rows += [h1[:-1]] if c is None else [h1[:-1], c]
        return np.stack(rows)

    def advance(self, x: int) -> np.ndarray:
        """Move the state over character ``x``; return the next character's logits (a view, rewritten by the next
        call)."""
        inp = self.inputs[x]
        for step, rec, h, c, matvec, above in self.layers:
            step(inp, rec, h, c)
            matvec()
            inp = above
        return self.logits


def _float32_exact(W: np.ndarray) -> bool:
    """Whether sampling reads ``W`` (float64) as float32: a large matrix (a product of several megabytes per
    character waits on memory) whose values float32 holds exactly, when native.c is there to sum in float64."""
    return (
        W.dtype == np.float64 and W.nbytes >= 4 * 2**20 and native.kernel("matvec_f32_f64") is not None
        and np.array_equal(W.astype(np.float32), W)
    )  # fmt: skip


def _matvec(W: np.ndarray, v: np.ndarray, out: np.ndarray, scratch: np.ndarray):
    """``out = W @ v`` on the same buffers: NumPy's call costs least for a small matrix; a large one is a stream
    from memory: read as float32 with float64 sums by native.c when it was trained in float32 (2 x 512 LSTM, 4096 x
    513: 0.25 against NumPy's 0.5 ms on one AMD EPYC core), else by torch's MKL ``mv``, which read float64 about
    twice as fast as NumPy's OpenBLAS on one Intel Xeon core (0.56 against 1.1 ms). A float16 ``W`` (``half``) is
    native.c's, with ``scratch`` (float32, ``len(v)``) for ``v``."""
    if W.dtype == np.float16:
        half_matvec = native.kernel("matvec_f16")
        pointers = W.ctypes.data, v.ctypes.data, out.ctypes.data
        return functools.partial(half_matvec, *pointers, *W.shape, scratch.ctypes.data)
    if W.dtype == np.float32 and v.dtype == np.float64:  # see _float32_exact
        float32_matvec = native.kernel("matvec_f32_f64")
        return functools.partial(float32_matvec, W.ctypes.data, v.ctypes.data, out.ctypes.data, *W.shape)
    if W.nbytes < 4 * 2**20:
        return functools.partial(np.dot, W, v, out=out)
    return functools.partial(torch.mv, torch.from_numpy(W), torch.from_numpy(v), out=torch.from_numpy(out))


def _device_matvec(W: np.ndarray, v: np.ndarray, out: np.ndarray, device):
    """``out = W @ v`` on a torch device, reading and writing the same host buffers."""
    W_dev = torch.from_numpy(W).to(device)
    v_dev = torch.empty(len(v), dtype=W_dev.dtype, device=device)
    v_host, out_host = torch.from_numpy(v), torch.from_numpy(out)

    def matvec():
        v_dev.copy_(v_host)
        out_host.copy_(torch.mv(W_dev, v_dev))

    return matvec
