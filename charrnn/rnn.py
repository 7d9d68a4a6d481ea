"""The tanh RNN of min-char-rnn as plain tensor math: forward and hand-written BPTT (generation: sampling.py).

Shapes follow min-char-rnn so the two read side by side: Wxh (H, V), Whh (H, H), Why (V, H), bh (H, 1),
by (V, 1). A batch is B parallel streams of T characters; hidden states are (B, H) rows.

Only the recurrence is a loop over time. The input projection is a column gather of Wxh, and everything that
does not depend on the recurrence (output layer, softmax and its backward, weight-gradient reductions, the
input-gradient scatter) is done once for all T steps as a few large matrix products.
"""

import torch

PARAM_NAMES = ("Wxh", "Whh", "Why", "bh", "by")


def init_params(vocab_size: int, hidden_size: int, generator=None, dtype=torch.float32) -> dict:
    """min-char-rnn's initialisation: weights ``randn * 0.01``, zero biases (drawn in the same order)."""
    V, H = vocab_size, hidden_size

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype) * 0.01

    return {
        "Wxh": randn(H, V),
        "Whh": randn(H, H),
        "Why": randn(V, H),
        "bh": torch.zeros(H, 1, dtype=dtype),
        "by": torch.zeros(V, 1, dtype=dtype),
    }


def hidden_states(params: dict, inputs: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Run the recurrence over ``inputs`` (B, T) from ``h0`` (B, H); return all states (T + 1, B, H), h0 first."""
    Whh_t = params["Whh"].t()
    B, T = inputs.shape
    # Column gather of Wxh plus bh for every step at once: (T, B, H). Rows of a contiguous Wxh^T gather fast.
    xh = torch.nn.functional.embedding(inputs.t(), params["Wxh"].t().contiguous()).add_(params["bh"].view(-1))
    hs = torch.empty((T + 1, B, h0.shape[1]), dtype=h0.dtype, device=h0.device)
    hs[0] = h0
    # Per-step views made once: indexing inside the loop costs more than a small step's matrix product.
    h, x = hs.unbind(0), xh.unbind(0)
    for t in range(T):
        torch.addmm(x[t], h[t], Whh_t, out=h[t + 1]).tanh_()
    return hs


def logits_of(params: dict, h: torch.Tensor) -> torch.Tensor:
    """Unnormalised next-character scores (..., V) for hidden states (..., H)."""
    return torch.addmm(params["by"].view(-1), h.reshape(-1, h.shape[-1]), params["Why"].t()).view(
        *h.shape[:-1], -1
    )


def loss_and_grads(params: dict, inputs: torch.Tensor, targets: torch.Tensor, h0: torch.Tensor):
    """Cross-entropy over a (B, T) batch and its gradients, by hand-written backpropagation through time.

    Returns ``(loss, grads, h_last)``: ``loss`` is summed over all B * T characters (a 0-d tensor, never
    synchronised to the host here); ``grads`` (a dict like ``params``) are the gradients of the loss summed over
    time and averaged over the B streams, so B = 1 is exactly min-char-rnn's gradient and the [-5, 5] clip keeps
    its meaning at any batch size; ``h_last`` (B, H) is the state to carry into the next window.
    """
    B, T = inputs.shape
    Whh, Why = params["Whh"], params["Why"]
    hs = hidden_states(params, inputs, h0)
    h_out = hs[1:].reshape(T * B, -1)  # time-major rows: row t * B + b
    flat_targets = targets.t().reshape(-1)

    logits = logits_of(params, h_out)
    log_probs = torch.log_softmax(logits, dim=1)
    loss = -log_probs.gather(1, flat_targets.unsqueeze(1)).sum()

    # Softmax backward, scaled for the per-stream mean: dy = (p - onehot(target)) / B.
    dy = log_probs.exp_()
    dy[torch.arange(T * B, device=dy.device), flat_targets] -= 1.0
    dy.mul_(1.0 / B)
    dWhy = dy.t() @ h_out
    dby = dy.sum(0).unsqueeze(1)

    # Only this loop depends on the recurrence: dh_raw[t] = (dh_out[t] + dh_raw[t + 1] @ Whh) * (1 - h[t]^2).
    dh = (dy @ Why).view(T, B, -1)
    dtanh = 1.0 - hs[1:] * hs[1:]
    dh_raw = torch.empty_like(dh)
    d_out, d_tanh, d_raw = dh.unbind(0), dtanh.unbind(0), dh_raw.unbind(0)
    torch.mul(d_out[T - 1], d_tanh[T - 1], out=d_raw[T - 1])
    for t in range(T - 2, -1, -1):
        torch.addmm(d_out[t], d_raw[t + 1], Whh, out=d_raw[t]).mul_(d_tanh[t])

    dh_raw_flat = dh_raw.view(T * B, -1)
    dWhh = dh_raw_flat.t() @ hs[:-1].reshape(T * B, -1)
    dbh = dh_raw_flat.sum(0).unsqueeze(1)
    dWxh_t = torch.zeros_like(params["Wxh"].t())  # (V, H): scatter rows, then view as Wxh's shape
    dWxh_t.index_add_(0, inputs.t().reshape(-1), dh_raw_flat)
    grads = {"Wxh": dWxh_t.t().contiguous(), "Whh": dWhh, "Why": dWhy, "bh": dbh, "by": dby}
    return loss, grads, hs[T]

