"""Text generation: the one sampling implementation, used by sample.py and by the samples written in training."""

import torch

from . import rnn


def choose(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, generator=None) -> int:
    """Pick the next character id from ``logits`` (V,): greedy when temperature is 0, else a draw from
    softmax(logits / temperature), restricted to the ``top_k`` most likely characters when given."""
    if temperature == 0 or top_k == 1:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, 0), 1, generator=generator))


@torch.no_grad()
def generate(params: dict, length: int, h=None, prime_ids=(), temperature=1.0, top_k=None, generator=None):
    """Yield ``length`` new character ids.

    The prime ids are fed through the network first to set the state. Without a prime, generation starts from
    ``h`` (zeros by default) and a first character drawn from the model's own output for that state.
    """
    H = params["Whh"].shape[0]
    h = torch.zeros(1, H, dtype=params["Whh"].dtype, device=params["Whh"].device) if h is None else h.view(1, H)
    if len(prime_ids):
        hs = rnn.hidden_states(params, torch.as_tensor(prime_ids, device=h.device).view(1, -1), h)
        h = hs[-1]
    logits = rnn.logits_of(params, h).view(-1)
    for _ in range(length):
        x = choose(logits, temperature, top_k, generator)
        yield x
        h, logits = rnn.step_logits(params, x, h)
