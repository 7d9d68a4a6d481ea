"""Text generation: the one sampling implementation, used by sample.py and by the samples written in training.

Generating is a loop over characters, so what costs is the fixed overhead of each operation, not arithmetic.
The loop runs in NumPy (about a microsecond per call, where a torch call costs several): stack.NumpyStack advances
every layer of any cell by one character with one matrix-vector product per layer and a handful of small vector
operations. A character is drawn by inverse CDF: the cumulative sum of ``exp(logits - max)`` searched for
``u * total``, with the uniforms ``u`` drawn in blocks from NumPy's PCG64, so ``P(x = i)`` is exactly ``p_i`` (to
float64 rounding) and a seed fixes the text.

The LSTM, the cell with a speed goal for sampling, runs that loop in C when native.c is built (charrnn/cells/
native.py): ``lstm_generate`` draws and advances a chunk of characters per call with the same rule on the same
buffers, so its text is the NumPy loop's (tests/test_sampling.py); a 1 x 256 LSTM then samples about 25 k
characters per second on one AMD EPYC core instead of 18 k (BENCHMARKS.md, section 6). top-k stays in NumPy.

Everything is float64: a rounding difference between two machines (BLAS kernels, SIMD tanh and exp) then moves
a class boundary by ~1e-16, so the same seed gives the same text on any CPU in all but astronomically rare cases.
A large matrix whose weights were trained in float32 is read as float32 and summed in float64
(``stack._float32_exact``), the same sums from half the bytes.

``half`` (``sample.py --half``) trades that exactness for speed where the weights' bytes are the limit: every
matrix in float16, summed in float32, a quarter of float64's bytes. A 2 x 512 LSTM reads 12.7 MB per character
even in float32, which one AMD EPYC core streams at ~65 GB/s: under 5k characters per second however it is summed;
with --half, 6.7k (BENCHMARKS.md, section 6). A character's probability moves by at most about 0.01 and trained
networks' held-out loss by at most 1.2e-5 nats a character; a seed still fixes the text on one machine.
"""

import ctypes

import numpy as np

from . import stack
from .cells import CELLS, native
from .errors import UsageError

_BLOCK = 4096  # uniforms drawn at a time; the stream is the same whatever the block size
_CHUNK = 256  # characters per call of the C loop (so the first ones are printed without waiting for a block)
_MATRIX_KINDS = {np.float64: 0, np.float32: 1, np.float16: 2}  # lstm_generate's codes for a layer matrix's dtype


def encode_prime(vocab: list[str], text: str, source: str = "--prime") -> list[int]:
    """Ids of ``text``; characters the model never saw are a UsageError that names them (and ``source``)."""
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
        cell: the network's cell (``rnn``, ``lstm`` or ``gru``).
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
        self.network = stack.NumpyStack(CELLS[cell], params, h, device=device, half=half)
        self.cell, self.device = cell, device
        self.rng = np.random.default_rng(seed)
        self.next_logits = self.network.logits  # this state's logits (a view: advancing rewrites it in place)
        self.cdf = np.empty(len(self.next_logits))
        self.advance = self.network.advance  # move the state over a character (all layers), then its logits
        self.configure(temperature, top_k)

    def configure(self, temperature=1.0, top_k: int | None = None) -> None:
        """Set the rule for drawing (the arguments of the same names); the state and the uniforms go on."""
        self.greedy = temperature == 0 or top_k == 1
        self.inv_temperature = 1.0 if self.greedy else 1.0 / temperature
        self.top_k = top_k if top_k is not None and 1 < top_k < len(self.cdf) else None
        native = self.cell == "lstm" and self.device is None and self.top_k is None
        self.native_loop = self._lstm_loop() if native else None

    def _lstm_loop(self):
        """A function generating the characters of a chunk of uniforms with native.c's ``lstm_generate`` (choose,
        then advance, on this sampler's own buffers), or None without the C library."""
        generate, net = native.kernel("lstm_generate"), self.network
        if generate is None or net.inputs.dtype != np.float64:
            return None
        L, V, H = len(net.h1), len(self.cdf), len(net.c[0])
        pointers = [(ctypes.c_void_p * L)(*(a.ctypes.data for a in arrays)) for arrays in (net.weights, net.h1, net.c, net.outs)]
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

    def generate(self, length: int):
        """Yield ``length`` new character ids, each drawn from the state after the previous one."""
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
    sampler = Sampler(cell, params, h, temperature, top_k, seed, device, half)
    for x in prime_ids:
        sampler.advance(x)
    yield from sampler.generate(length)
