"""Fine-tuning (``train.py --init_from CHECKPOINT``): a new run that starts from another run's weights, on any text.

The network is the checkpoint's: a flag given for the cell, hidden size, depth or dropout that says otherwise is
refused (one left at its default is no contradiction). The vocabulary is the checkpoint's, followed by the new
text's characters it lacks (text.vocabulary), so every old id keeps its meaning. Only the new characters' weights
are new: their input columns drawn as the cell draws them, their output rows zero with a bias low enough that,
from any state, they take less than ``NEW_MASS`` of the probability together. So before its first step the
fine-tuned model gives every old character within ``NEW_MASS`` of the probability the checkpoint gave it.

Everything else is a new run's: step 0, a fresh optimizer and schedule, its own ``version_N``.
"""

import math

import torch

from . import checkpoint
from .errors import UsageError

ARCHITECTURE_FLAGS = ("cell", "hidden_size", "num_layers", "dropout")  # the network's fields that are flags
NEW_MASS = 0.005  # the new characters' probability, together, at most, before the first step
FLOOR_ITERATIONS = 200  # of new_output_bias's ascent: within ~0.05 nats of the best floor for a 256-unit LSTM


def read(path: str) -> checkpoint.Network:
    """The network of ``--init_from``'s checkpoint (a .ckpt file or a run directory, as sample.py takes)."""
    return checkpoint.load_network(path)


def take_architecture(model_config, network: checkpoint.Network, given, source: str) -> None:
    """Put the checkpoint's network into ``model_config`` (the ``--model`` settings); ``given``: the settings given
    explicitly (on the command line or in a --config file), any of which that contradicts it is a UsageError."""
    for name in ARCHITECTURE_FLAGS:
        saved = getattr(network.arch, name)
        value = given.get(f"model.{name}")
        if value is not None and value != saved:
            raise UsageError(
                f"--model.{name} {value} contradicts --init_from {source}, which has {name.replace('_', ' ')} "
                f"{saved}; leave --model.{name} out (the network is the checkpoint's)"
            )
        model_config[name] = saved


def new_output_bias(Why: torch.Tensor, by: torch.Tensor, new: int) -> float:
    """The output bias of ``new`` characters whose output rows are zero: low enough that from any state they take
    less than NEW_MASS of the probability together, and no lower (the lower, the longer they take to learn).

    The old characters' logits are ``z = by + Why h`` with every unit of h in [-1, 1] (tanh, o * tanh(c), or a mix
    of tanh values). For any distribution q over them, ``logsumexp(z) >= q.z + H(q) >= q.by - |Why^T q|_1 + H(q)``
    (Gibbs' inequality, then the worst h), so every q gives a floor under the old characters' log-sum-exp in every
    state, and a bias b gives the new characters less than ``new * exp(b - floor)``. q is found by gradient ascent
    (the bound is concave in q, and at its maximum equals the true minimum over the states); every q tried is a
    valid floor, so the highest is taken.
    """
    Why, by = Why.detach().double(), by.detach().double().view(-1)
    scores = torch.zeros_like(by, requires_grad=True)  # q = softmax(scores), uniform first
    ascent = torch.optim.Adam([scores], lr=0.1)
    floor = -math.inf
    with torch.enable_grad():
        for _ in range(FLOOR_ITERATIONS):
            q, log_q = torch.softmax(scores, 0), torch.log_softmax(scores, 0)
            bound = q @ by - (Why.t() @ q).abs().sum() - q @ log_q
            floor = max(floor, bound.item())
            ascent.zero_grad()
            (-bound).backward()
            ascent.step()
    return floor - math.log(new / NEW_MASS)


def extended_params(old: dict, fresh: dict) -> dict:
    """The fine-tuned model's first weights: ``old`` (the checkpoint's, V characters) where ``fresh`` (the new
    model's initialisation, V' >= V characters) has the same entries; the new characters' input columns of layer
    0's ``Wxh`` (G*H, V') stay as drawn, their rows of ``Why`` (V', H) are zero and of ``by`` (V', 1) the bias of
    ``new_output_bias``. Plain tensors, in ``fresh``'s dtype."""
    V, new = old["by"].shape[0], fresh["by"].shape[0] - old["by"].shape[0]
    out = {}
    for name, value in fresh.items():
        value = value.detach().clone()
        value[tuple(slice(0, n) for n in old[name].shape)] = old[name]
        out[name] = value
    if new:
        out["Why"][V:] = 0
        out["by"][V:] = new_output_bias(old["Why"], old["by"], new)
    return out


def summary(source: str, network: checkpoint.Network, vocab: list[str]) -> str:
    """The line train.py prints at the start of a fine-tuned run: where from, and the characters it adds."""
    new = vocab[len(network.vocab) :]
    added = f"{len(new)} new: {''.join(new)!r}" if new else "no new ones"
    return f"fine-tuning: from {source}, its {len(network.vocab)} characters keeping their ids, {added}"


def start_from(model, network: checkpoint.Network) -> None:
    """Set ``model``'s parameters (a CharRNN built for the extended vocabulary) to ``extended_params``."""
    params = extended_params(network.params, model.params)
    with torch.no_grad():
        for name, value in params.items():
            model.params[name].copy_(value)
