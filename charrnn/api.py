"""charrnn as a Python library: a trained checkpoint that samples, streams, scores, beam-searches and keeps a session.

    import charrnn
    m = charrnn.load("runs")                      # a .ckpt, or a run directory (its newest last.ckpt)
    m.sample(200, prime="ROMEO:", temperature=0.8, seed=1, stop=["\\n\\n"])
    m.score("some text").nats                     # nats per character, as validation measures it

Imports no Lightning, so it starts about as fast as ``import torch``. Sampling is sampling.Sampler, the code path of
sample.py (the same checkpoint, prime, settings and seed give sample.py's text); scoring and beam search run the
batched forward pass of training and validation (network.forward). A bad argument is a UsageError, a ValueError,
in the words of the scripts' ``error:`` lines (which name an argument by its sample.py or score.py flag).
docs/api.md and docs/sampling-control.md describe every choice.
"""

import dataclasses
import math
import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from . import checkpoint, network
from .errors import UsageError
from .sampling import Sampler, encode_prime
from .text import VAL_CHUNK, val_streams

CONTEXT = 4096  # characters of a session's past text kept for stop strings (so a stop string is at most this long)
PIECE = 64  # characters generated between looks for a stop string, and per chunk that stream() yields


def load(path) -> "Model":
    """The model of a checkpoint: a ``.ckpt`` file, or a run directory meaning its newest ``last.ckpt``."""
    path = checkpoint.resolve(os.fspath(path))
    ckpt = checkpoint.load(path)
    net = checkpoint.network_of(ckpt, path)
    best = (ckpt.get("callbacks") or {}).get("BestCheckpoint") or {}
    val_loss = best.get("val_loss") if isinstance(best, dict) else None
    step = ckpt.get("global_step")
    return Model(
        path=path, arch=net.arch, params=net.params, vocab=net.vocab, step=step if type(step) is int else None,
        val_loss=float(val_loss) if isinstance(val_loss, float) and math.isfinite(val_loss) else None,
    )  # fmt: skip


def check_sampling(length: int, temperature: float = 1.0, top_k: int | None = None, seed: int | None = None) -> None:
    """A UsageError unless these are settings sampling can use (sample.py checks its flags with this too)."""
    _count("--length", length, 0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise UsageError(f"--temperature must be a number, got {temperature!r}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise UsageError(f"--temperature must be a finite number >= 0 (0 means greedy), got {temperature}")
    if temperature > 0 and not math.isfinite(1 / temperature):
        raise UsageError(f"--temperature {temperature} is too small to divide the logits by; use 0 for greedy")
    if top_k is not None:
        _count("--top-k", top_k, 1)
    if seed is not None:
        _count("--seed", seed, 0)


def _count(flag: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UsageError(f"{flag} must be a whole number, got {value!r}")
    if value < least:
        raise UsageError(f"{flag} must be {least} or more, got {value}")


@dataclasses.dataclass(frozen=True)
class Score:
    """How well the model predicts a text: each character after the first, given the text before it.

    ``log_probs`` (len(text) - 1,): the natural log-probability of ``text[1:]``, each given the text before it;
    NaN where the character is not in the vocabulary (not scored). ``chars + unknown == len(text) - 1``.
    """

    chars: int  # characters scored
    nats: float  # mean -log p per scored character
    log_probs: np.ndarray
    unknown: int  # characters of text[1:] not in the vocabulary, not scored
    unknown_chars: frozenset  # the distinct characters of the text not in the vocabulary

    @property
    def bits(self) -> float:
        return self.nats / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats)


@dataclasses.dataclass(frozen=True)
class Beam:
    """A beam search's result: ``text`` (the new characters, after the prime) and its total log-probability."""

    text: str
    log_prob: float

    @property
    def nats_per_char(self) -> float:
        return -self.log_prob / len(self.text) if self.text else math.nan


@dataclasses.dataclass(frozen=True)
class SessionState:
    """A snapshot of a Session (copies: restoring one does not change it)."""

    hidden: np.ndarray  # (L * K, H)
    rng: dict  # the uniforms' generator state
    context: str  # the last CONTEXT characters, for stop strings


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A checkpoint's network, ready to use. ``step``: the optimizer steps it was trained for; ``val_loss``: the
    lowest validation loss of its run when it was written (best.ckpt's own), None without validation."""

    path: str
    arch: network.Architecture
    params: dict
    vocab: list[str]
    step: int | None = None
    val_loss: float | None = None
    _cast: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def session(self, seed: int | None = None, device=None, half: bool = False) -> "Session":
        """A text that grows by ``feed`` and ``sample``, with the network's state after it (see Session)."""
        return Session(self, seed, device, half)

    def stream(self, length: int, prime: str = "", temperature: float = 1.0, top_k: int | None = None,
               seed: int | None = None, stop: Iterable[str] | str = (), device=None,
               half: bool = False) -> Iterator[str]:  # fmt: skip
        """``sample``'s text in chunks, each yielded as soon as it is generated."""
        check_sampling(length, temperature, top_k, seed)
        session = self.session(seed, device, half)
        session.feed(prime, "--prime")
        return session.stream(length, temperature, top_k, stop)

    def sample(self, length: int, prime: str = "", temperature: float = 1.0, top_k: int | None = None,
               seed: int | None = None, stop: Iterable[str] | str = (), device=None,
               half: bool = False) -> str:  # fmt: skip
        """Up to ``length`` new characters after ``prime`` (not included), drawn at ``temperature`` (0: greedy)
        among the ``top_k`` most likely; the text sample.py prints after the prime for the same settings and seed.
        It ends right after the first stop string that ends inside the new text (it may start in the prime).
        ``device`` (e.g. "cuda") and ``half`` are sample.py's --device and --half."""
        return "".join(self.stream(length, prime, temperature, top_k, seed, stop, device, half))

    def score(self, text: str, streams: int = 1, dtype: torch.dtype | None = None) -> Score:
        """How well the model predicts ``text``: every character after the first from the text before it, from the
        zero state, as validation does. ``streams``: the predictions cut into that many contiguous pieces, each
        from the zero state, laid out as validation lays out its text (64 streams: the run's ``val/loss``).
        Unknown characters are not scored, and read as a zero input vector (layer 0's input is its bias alone).
        ``dtype``: the arithmetic (default: the weights' own, the run's precision)."""
        if not isinstance(text, str):
            raise UsageError(f"the text to score must be a str, got {type(text).__name__}")
        _count("--streams", streams, 1)
        if len(text) < 2:
            raise UsageError("the text to score has fewer than 2 characters; the first is context, not scored")
        V = len(self.vocab)
        ids, unknown_chars = self._ids(text)
        x, y, mask = val_streams(torch.from_numpy(ids), streams)
        mask &= y < V
        log_probs = self._log_probs(x, y.clamp(max=V - 1), dtype).flatten()[: len(text) - 1]
        log_probs = log_probs.double().numpy()
        mask = mask.flatten()[: len(text) - 1].numpy()
        log_probs[~mask] = np.nan
        chars = int(mask.sum())
        if chars == 0:
            raise UsageError("no character of the text after the first is in the model's vocabulary; nothing to score")
        nats = -float(log_probs[mask].sum()) / chars
        return Score(chars, nats, log_probs, len(text) - 1 - chars, frozenset(unknown_chars))

    def log_prob(self, text: str, prime: str = "") -> float:
        """The natural log-probability of ``text`` right after ``prime``, from the zero state (with no prime the
        first character is predicted from the zero state itself), in float64."""
        prime_ids, ids = encode_prime(self.vocab, prime), encode_prime(self.vocab, text, "the text")
        if not ids:
            return 0.0
        first = torch.log_softmax(self._params(torch.float64)["by"].view(-1), -1)[ids[0]] if not prime_ids else 0.0
        both = torch.tensor(prime_ids + ids).view(1, -1)
        if both.shape[1] < 2:
            return float(first)
        log_probs = self._log_probs(both[:, :-1], both[:, 1:], torch.float64)[0]
        return float(first + log_probs[max(0, len(prime_ids) - 1) :].sum())

    def beam(self, prime: str = "", length: int = 200, width: int = 8) -> Beam:
        """The most likely ``length`` characters after ``prime`` that a beam of ``width`` hypotheses finds.

        Plain beam search may lose the greedy continuation and end below it; here the greedy hypothesis stays in the
        beam at every step (replacing the worst if it fell out), so width K never ends below width 1, which is the
        greedy text (sample.py --greedy). Float64, from the zero state.
        """
        _count("--length", length, 0)
        _count("--beam", width, 1)
        params, V = self._params(torch.float64), len(self.vocab)
        prime_ids = encode_prime(self.vocab, prime)
        state = self.arch.zero_state(1, torch.float64)
        with torch.no_grad():
            if prime_ids:
                logits, state = network.logits(self.arch, params, torch.tensor([prime_ids]), state)
                logits = logits[:, -1]
            else:
                logits = params["by"].view(1, V)  # the zero state's scores: Why @ 0 + by
            totals, greedy, steps = torch.zeros(1, dtype=torch.float64), 0, []
            for t in range(length):
                candidates = (totals[:, None] + torch.log_softmax(logits, -1)).flatten()  # (k * V,)
                top = torch.topk(candidates, min(width, len(candidates))).indices
                best_greedy = greedy * V + int(logits[greedy].argmax())
                found = (top == best_greedy).nonzero()
                if len(found) == 0:
                    top[-1] = best_greedy  # the greedy hypothesis replaces the worst
                greedy = int(found[0]) if len(found) else len(top) - 1
                rows, chars = top // V, top % V
                steps.append((rows, chars))
                totals = candidates[top]
                if t + 1 < length:
                    logits, state = network.logits(self.arch, params, chars.view(-1, 1), state[rows])
                    logits = logits[:, 0]
        best = int(totals.argmax())
        ids = []
        for rows, chars in reversed(steps):  # follow the back-pointers
            ids.append(int(chars[best]))
            best = int(rows[best])
        return Beam("".join(self.vocab[i] for i in reversed(ids)), float(totals.max()))

    def _ids(self, text: str) -> tuple[np.ndarray, set]:
        """Ids of ``text``, the vocabulary's size where a character is not in it; and those characters."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        V = len(self.vocab)
        table = np.full(max(ord(c) for c in self.vocab) + 1, V, dtype=np.int64)
        table[[ord(c) for c in self.vocab]] = np.arange(V)
        ids = np.where(points < len(table), table[np.minimum(points, len(table) - 1)], V)
        return ids, {chr(p) for p in np.unique(points[ids == V])}

    def _params(self, dtype: torch.dtype | None) -> dict:
        """The weights in ``dtype`` (default: their own), layer 0's input weights with a zero column for id V: an
        unknown character is a zero input vector."""
        dtype = dtype or self.params["Why"].dtype
        if dtype not in self._cast:
            params = {name: p.to(dtype) for name, p in self.params.items()}
            params["Wxh"] = torch.cat([params["Wxh"], params["Wxh"].new_zeros(len(params["Wxh"]), 1)], 1)
            self._cast[dtype] = params
        return self._cast[dtype]

    def _log_probs(self, inputs: torch.Tensor, targets: torch.Tensor, dtype) -> torch.Tensor:
        """log p of ``targets`` (S, T) given ``inputs`` (S, T) up to them, every stream from the zero state: the
        forward pass in validation's chunks, the state carried from one to the next."""
        params = self._params(dtype)
        state = self.arch.zero_state(inputs.shape[0], params["Why"].dtype)
        out = torch.empty(inputs.shape, dtype=params["Why"].dtype)
        with torch.no_grad():
            for start in range(0, inputs.shape[1], VAL_CHUNK):
                cut = slice(start, start + VAL_CHUNK)
                x, y = inputs[:, cut], targets[:, cut]
                out[:, cut], state = network.target_log_probs(self.arch, params, x, y, state)  # (S, C) each
        return out


class Session:
    """A growing text and the network's state after it: ``feed`` what a user typed, ``sample`` a continuation, and
    both go on from there (for a server that receives only what was typed since the last request).

    A session of seed s fed p, then sampling n characters, gives ``Model.sample(n, prime=p, seed=s)``. Every drawn
    character uses one uniform, so the uniforms go on where the text stops (also at a stop string). ``state()``
    is a cheap snapshot (the hidden state, the generator's state and the last CONTEXT characters) that
    ``restore`` returns to.
    """

    def __init__(self, model: Model, seed: int | None = None, device=None, half: bool = False):
        if seed is not None:
            _count("--seed", seed, 0)
        self.model = model
        self._sampler = Sampler(model.arch.cell, model.params, seed=seed, device=device, half=half)
        self._context = ""

    def feed(self, text: str, source: str = "the fed text") -> None:
        """Advance the state over ``text`` (characters of the vocabulary only)."""
        for x in encode_prime(self.model.vocab, text, source):
            self._sampler.advance(x)
        self._context = (self._context + text)[-CONTEXT:]

    def sample(self, length: int, temperature: float = 1.0, top_k: int | None = None,
               stop: Iterable[str] | str = ()) -> str:  # fmt: skip
        """Up to ``length`` new characters from the state (see Model.sample); the state moves past them."""
        return "".join(self.stream(length, temperature, top_k, stop))

    def stream(self, length: int, temperature: float = 1.0, top_k: int | None = None,
               stop: Iterable[str] | str = ()) -> Iterator[str]:  # fmt: skip
        """``sample``'s text in chunks as it is generated; the state is past each chunk when it is yielded."""
        check_sampling(length, temperature, top_k)
        stops = self._stops(stop)
        self._sampler.configure(temperature, top_k)
        return self._pieces(length, stops)

    @property
    def path(self) -> str:
        """Which loop generates (native.c's or NumPy's), in which precision, and why: ``sample.py --verbose``."""
        return self._sampler.path

    def state(self) -> SessionState:
        sampler = self._sampler
        return SessionState(sampler.state, dict(sampler.rng.bit_generator.state), self._context)

    def restore(self, snapshot: SessionState) -> None:
        self._sampler.state = snapshot.hidden
        self._sampler.rng.bit_generator.state = snapshot.rng
        self._context = snapshot.context

    def _stops(self, stop) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise UsageError(f"--stop strings must be non-empty text, got {s!r}")
            if len(s) > CONTEXT:
                raise UsageError(f"--stop strings must be at most {CONTEXT} characters, got one of {len(s)}")
            missing = sorted(set(s) - set(self.model.vocab))
            if missing:
                raise UsageError(
                    f"--stop {s!r} has characters not in the model's vocabulary: {''.join(missing)!r}; it could "
                    "never occur"
                )  # fmt: skip
        return stops

    def _pieces(self, length: int, stops: list[str]) -> Iterator[str]:
        sampler, vocab = self._sampler, self.model.vocab
        done = 0
        while done < length:
            n = min(PIECE, length - done)
            if stops:
                before = self.state()
            piece = "".join(vocab[x] for x in sampler.generate(n))
            end = _first_stop_end(self._context, piece, stops) if stops else None
            if end is not None:  # generate the piece again up to the stop: the state and uniforms end there
                self.restore(before)
                piece = "".join(vocab[x] for x in sampler.generate(end))
            self._context = (self._context + piece)[-CONTEXT:]
            done += len(piece)
            yield piece
            if end is not None:
                return


def _first_stop_end(context: str, piece: str, stops: list[str]) -> int | None:
    """Where in ``piece`` the first stop string ending inside it ends (None if none does); one may start in
    ``context``, the text before the piece."""
    ends = []
    for s in stops:
        head = context[max(0, len(context) - len(s) + 1) :] if len(s) > 1 else ""
        at = (head + piece).find(s)
        if at >= 0:
            ends.append(at + len(s) - len(head))
    return min(ends) if ends else None
