"""Text generation: the one sampling implementation, used by sample.py and by the samples written in training.

Generating is a loop over characters, so what costs is the fixed overhead of each operation, not arithmetic.
The loop runs in NumPy (about a microsecond per call, where a torch call costs several) and is cut to one
matrix-vector product and a handful of small vector operations per character:

- ``[Whh | 0; Why | by] @ [h; 1]`` gives both the next pre-activation ``Whh h`` and this state's logits;
- a character's input ``Wxh[:, x] + bh`` is a row of a precomputed table;
- a character is drawn by inverse CDF: the cumulative sum of ``exp(logits - max)`` searched for ``u * total``,
  with the uniforms ``u`` drawn in blocks from NumPy's PCG64, so ``P(x = i)`` is exactly ``p_i`` (to float64
  rounding) and a seed fixes the text.

Everything is float64: a rounding difference between two machines (BLAS kernels, SIMD tanh and exp) then moves
a class boundary by ~1e-16, so the same seed gives the same text on any CPU in all but astronomically rare cases.
"""

import functools

import numpy as np
import torch

from . import rnn
from .errors import UsageError

_BLOCK = 4096  # uniforms drawn at a time; the stream is the same whatever the block size


def _float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64)
    return np.array(x, dtype=np.float64)


def encode_prime(vocab: list[str], text: str) -> list[int]:
    """Ids of ``text``; characters the model never saw are a UsageError that names them."""
    index = {c: i for i, c in enumerate(vocab)}
    missing = sorted(set(text) - index.keys())
    if missing:
        raise UsageError(
            f"--prime has characters not in the model's vocabulary: {''.join(missing)!r}; "
            "use only characters of its training text"
        )
    return [index[c] for c in text]


class Sampler:
    """The network's state plus the rule for drawing the next character.

    Args:
        params: ``Wxh, Whh, Why, bh, by`` (tensors or arrays, any device and dtype).
        h: starting hidden state (H,) or (1, H); zeros by default.
        temperature: logits are divided by it; 0 means greedy.
        top_k: draw only among the ``top_k`` most likely characters (ties with the k-th are kept);
            1 means greedy, ``None`` or at least the vocabulary size means no restriction.
        seed: seeds the uniforms (any non-negative integer); ``None`` draws fresh entropy.
        device: ``None`` runs the matrix-vector product in NumPy; a torch device (e.g. ``"cuda"``) runs it
            there, which pays a host round trip per character and so only helps very large hidden sizes.
    """

    def __init__(self, params: dict, h=None, temperature=1.0, top_k: int | None = None, seed=None, device=None):
        Wxh, Whh, Why, bh, by = (_float64(params[name]) for name in rnn.PARAM_NAMES)
        H, V = Wxh.shape
        self.greedy = temperature == 0 or top_k == 1
        self.inv_temperature = 1.0 if self.greedy else 1.0 / temperature
        self.top_k = top_k if top_k is not None and 1 < top_k < V else None
        self.rng = np.random.default_rng(seed)

        W = np.zeros((H + V, H + 1))
        W[:H, :H], W[H:, :H], W[H:, H] = Whh, Why, by.reshape(-1)
        self.inputs = Wxh.T + bh.reshape(-1)  # row x: Wxh[:, x] + bh
        self.h1 = np.zeros(H + 1)  # [h; 1]
        self.h1[H] = 1.0
        self.state = self.h1[:H]  # h after the text fed or generated so far (a view: advancing writes it in place)
        if h is not None:
            self.state[:] = _float64(h).reshape(-1)
        self.out = np.empty(H + V)  # [Whh h; logits]
        self.pre, self.next_logits = self.out[:H], self.out[H:]
        self.cdf = np.empty(V)
        if device is None:
            self.matvec = functools.partial(np.dot, W, self.h1, out=self.out)
        else:
            self.matvec = _device_matvec(W, self.h1, self.out, torch.device(device))
        self.matvec()

    def advance(self, x: int) -> None:
        """Move the state over character ``x``: ``h = tanh(Wxh[:, x] + Whh h + bh)``, then its products."""
        np.add(self.pre, self.inputs[x], out=self.state)
        np.tanh(self.state, out=self.state)
        self.matvec()

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
            uniforms = [0.0] * n if self.greedy else self.rng.random(n).tolist()  # greedy draws none
            for u in uniforms:
                x = choose(u)
                advance(x)
                yield x


def _device_matvec(W: np.ndarray, h1: np.ndarray, out: np.ndarray, device: torch.device):
    """The product ``out = W @ h1`` on a torch device, reading and writing the same host buffers."""
    W_dev = torch.from_numpy(W).to(device)
    h_dev = torch.empty(len(h1), dtype=torch.float64, device=device)
    h_host, out_host = torch.from_numpy(h1), torch.from_numpy(out)

    def matvec():
        h_dev.copy_(h_host)
        out_host.copy_(torch.mv(W_dev, h_dev))

    return matvec


def generate(params: dict, length: int, h=None, prime_ids=(), temperature=1.0, top_k=None, seed=None, device=None):
    """Yield ``length`` new character ids after feeding ``prime_ids`` from state ``h`` (zeros by default).

    Without a prime, the first character is drawn from the model's own output for the starting state.
    """
    sampler = Sampler(params, h, temperature, top_k, seed, device)
    for x in prime_ids:
        sampler.advance(x)
    yield from sampler.generate(length)
