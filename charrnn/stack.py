"""A network of L layers of one cell (charrnn/cells), with dropout and the shared output layer, as plain tensors.

Parameters: layer 0 ``Wxh`` (G*H, V), ``Whh`` (G*H, H), ``bh`` (G*H, 1) and the cell's extras, layer i >= 1 the
same names with the suffix ``_i`` and input size H; the output layer ``Why`` (V, H), ``by`` (V, 1). So the
one-layer ``rnn`` has exactly min-char-rnn's parameters, and the operations of charrnn's earlier single-layer
model in the same order: it trains bit-identically (tests/test_old_checkpoints.py).

State: one tensor (B, L * K, H), streams first; row j is layer j // K's state j % K (h, then c for the LSTM).

Dropout, where char-rnn puts it: on the input of every layer above the first and on the top layer's output before
the output layer; never on the recurrent connection. Mask l multiplies layer l's output. The masks are a pure
function of (seed, step, global stream index, layer, time, unit), so N processes of B streams draw exactly what one
process of N * B streams draws, and a resumed run draws what the uninterrupted one would have.
"""

import torch

from .cells import fast, native, parallel


def param_name(name: str, layer: int) -> str:
    return name if layer == 0 else f"{name}_{layer}"


def num_layers(params: dict) -> int:
    return sum(1 for name in params if name == "Whh" or name.startswith("Whh_"))


def layer_params(params: dict, layer: int) -> dict:
    """Layer ``layer``'s parameters under their unsuffixed names (``Wxh_2`` -> ``Wxh``)."""
    out = {}
    for name, p in params.items():
        base, _, index = name.partition("_")
        if name not in ("Why", "by") and int(index or 0) == layer:
            out[base] = p
    return out


def init_params(cell, vocab_size: int, hidden_size: int, num_layers: int = 1, generator=None, dtype=torch.float32):
    """Drawn layer by layer (``Wxh``, ``Whh``, biases, extras), then ``Why``, ``by``: the one-layer ``rnn`` draws
    exactly what min-char-rnn's initialisation draws. Returned weights first, then biases (one layer's ``rnn``:
    ``Wxh, Whh, Why, bh, by``, the order of its parameters, and of the optimizer's state, in every checkpoint
    charrnn has written)."""
    V, H = vocab_size, hidden_size
    params = {}
    for layer in range(num_layers):
        for name, p in cell.init_layer(V if layer == 0 else H, H, generator, dtype).items():
            params[param_name(name, layer)] = p
    params["Why"] = cell.init_weight(V, H, H, generator, dtype)
    params["by"] = torch.zeros(V, 1, dtype=dtype)
    return dict(sorted(params.items(), key=lambda item: not item[0].startswith("W")))  # stable: weights first


def param_shapes(cell, vocab_size: int, hidden_size: int, num_layers: int = 1) -> dict:
    """Parameter name -> shape, in the order ``init_params`` returns them, by arithmetic alone (loading a checkpoint
    asks for them; meta tensors would import torch._dynamo, 1.2 s of ``sample.py``'s start-up)."""
    shapes = {}
    for layer in range(num_layers):
        for name, shape in cell.layer_shapes(vocab_size if layer == 0 else hidden_size, hidden_size).items():
            shapes[param_name(name, layer)] = shape
    shapes.update(Why=(vocab_size, hidden_size), by=(vocab_size, 1))
    return dict(sorted(shapes.items(), key=lambda item: not item[0].startswith("W")))


def zero_state(cell, batch: int, num_layers: int, hidden_size: int, dtype=torch.float32, device=None):
    return torch.zeros((batch, num_layers * cell.NUM_STATES, hidden_size), dtype=dtype, device=device)


def _product(x: torch.Tensor, W: torch.Tensor, bias=None) -> torch.Tensor:
    """``x @ W^T (+ bias)`` for a window's rows: through oneDNN with W packed on the CPU in float32 (faster than MKL
    there: charrnn/cells/native.py), else torch's."""
    return native.weight_product(W, len(x), bias)(x)


def _layers_forward(cell, params: dict, inputs: torch.Tensor, state: torch.Tensor, masks=None):
    """Every layer over the window: ``(layers, acts, xs, new_state, path)``; ``xs[l]`` is layer l's input for l >= 1
    (after dropout) and ``xs[L]`` the top output that the output layer sees; ``path`` the cell's forward and
    backward that ran (fast.path: native.c's loops on the CPU where they can, else the cell's own)."""
    B, T = inputs.shape
    K = cell.NUM_STATES
    layers = [layer_params(params, layer) for layer in range(num_layers(params))]
    path = fast.path(cell, params["Why"].dtype, params["Why"].device)
    acts, xs, states = [], [None], []
    for layer, p in enumerate(layers):
        if layer == 0:
            xw = _one_hot_projection(p["Wxh"], p["bh"], inputs.t())  # (T, B, G*H) as rows of a table
            xw = xw if path.one_hot else xw.rows()
        else:
            xw = _product(xs[layer].reshape(T * B, -1), p["Wxh"], p["bh"].view(-1)).view(T, B, -1)  # (T, B, G*H)
        a, s = path.forward(p, xw, state[:, layer * K : (layer + 1) * K])
        acts.append(a)
        states.append(s)
        xs.append(a["h"][1:] if masks is None else a["h"][1:] * masks[layer])
    return layers, acts, xs, torch.cat(states, 1), path


def _one_hot_projection(Wxh: torch.Tensor, bh: torch.Tensor, chars: torch.Tensor) -> fast.OneHot:
    """``onehot(chars) Wxh^T + bh`` (T, B, G*H) for the first layer, as rows of ``Wxh^T + bh`` (V, G*H) picked by
    ``chars`` (T, B): the window loops gather each step's rows as they reach it (native.c), the other paths the
    whole projection in one pass (``OneHot.rows``: a gather, then the bias added, took 1.6x as long)."""
    table = Wxh.t().contiguous().add_(bh.view(-1))  # (V, G*H), contiguous: its rows gather fast
    return fast.OneHot(table, chars)


def _one_hot_grads(dxw, chars: torch.Tensor, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dWxh, dbh)`` of the first layer from the gradient w.r.t. its input projection: a ``OneHot`` whose table
    the window loops added each row's gradient into, or ``dxw`` (T, B, G*H), whose rows are scattered into Wxh^T
    here (both contiguous: index_add_ runs about 9x slower into a transposed view or from strided rows). dbh, the
    sum of every row, is the sum of dWxh's columns (one pass over ``dxw``, not two)."""
    if isinstance(dxw, fast.OneHot):
        dWxh_t = dxw.table
    else:
        rows = dxw.reshape(-1, dxw.shape[-1])
        dWxh_t = rows.new_zeros((V, rows.shape[1])).index_add_(0, chars.reshape(-1), rows.contiguous())
    return dWxh_t.t().contiguous(), dWxh_t.sum(0).unsqueeze(1)


def _output_layer(params: dict, h_out: torch.Tensor, targets: torch.Tensor, B: int):
    """The output layer over a window's rows, in blocks of rows on charrnn's threads: ``(loss, dWhy, dby, dh)``
    from the top outputs ``h_out`` (rows, H) and their ``targets`` (rows,): the cross-entropy summed over the rows,
    its gradients averaged over the ``B`` streams, and dh (rows, H), the gradient w.r.t. ``h_out``."""
    dh = torch.empty_like(h_out)

    def block(rows):
        first, end = rows
        h, target = h_out[first:end], targets[first:end]
        log_probs = torch.log_softmax(logits_of(params, h), dim=1)  # (rows, V)
        loss = -log_probs.gather(1, target.unsqueeze(1)).sum()
        dy = log_probs.exp_()  # softmax backward, scaled for the per-stream mean: dy = (p - onehot(target)) / B
        dy[torch.arange(end - first, device=dy.device), target] -= 1.0
        dy.mul_(1.0 / B)
        torch.mm(dy, params["Why"], out=dh[first:end])
        return loss, dy.t() @ h, dy.sum(0)

    loss, dWhy, dby = parallel.run_summed(block, parallel.row_blocks(len(h_out), h_out.device))
    return loss, dWhy, dby.unsqueeze(1), dh


def logits_of(params: dict, h: torch.Tensor) -> torch.Tensor:
    """Unnormalised next-character scores (..., V) for top-layer outputs (..., H)."""
    return torch.addmm(params["by"].view(-1), h.reshape(-1, h.shape[-1]), params["Why"].t()).view(*h.shape[:-1], -1)


def forward(cell, params: dict, inputs: torch.Tensor, state: torch.Tensor):
    """The forward pass without dropout (validation, visualisation): ``(logits, new_state, acts)``.

    ``logits`` is (B, T, V); ``acts[l]`` is layer l's activations, time-major: ``h`` (T + 1, B, H) with the starting
    state first, and for the LSTM ``c`` (T + 1, B, H) and ``gates`` (T, B, 4, H) in the order (o, i, f, g).
    """
    _, acts, xs, new_state, _ = _layers_forward(cell, params, inputs, state)
    return logits_of(params, xs[-1].transpose(0, 1)), new_state, acts


def loss_and_grads(
    cell, params: dict, inputs: torch.Tensor, targets: torch.Tensor, state: torch.Tensor, dropout_masks=None
):
    """Cross-entropy over a (B, T) batch and its gradients, by hand-written backpropagation through time.

    Returns ``(loss, grads, new_state)``: ``loss`` summed over all B * T characters
    (a 0-d tensor, never synchronised to the host here); ``grads`` the gradients of the loss summed over time and
    averaged over the B streams; ``new_state`` (B, L * K, H) to carry into the next window. ``dropout_masks``:
    ``dropout_masks(...)``'s (L, T, B, H) masks, or None for no dropout.
    """
    B, T = inputs.shape
    masks = dropout_masks
    layers, acts, xs, new_state, path = _layers_forward(cell, params, inputs, state, masks)
    h_out = xs[-1].reshape(T * B, -1)  # time-major rows: row t * B + b
    loss, dWhy, dby, dh = _output_layer(params, h_out, targets.t().reshape(-1), B)
    grads = {"Why": dWhy, "by": dby}
    dh = dh.view(T, B, -1)
    for layer in range(len(layers) - 1, -1, -1):
        p = layers[layer]
        if masks is not None:
            dh.mul_(masks[layer])
        dxw, g = path.backward(p, acts[layer], dh)  # (T, B, G*H), or the first layer's OneHot
        if layer == 0:
            g["Wxh"], g["bh"] = _one_hot_grads(dxw, inputs.t(), p["Wxh"].shape[1])
        else:
            dxw_flat = dxw.reshape(T * B, -1)
            g["bh"] = dxw_flat.sum(0).unsqueeze(1)
            g["Wxh"] = native.gradient_product(dxw_flat, xs[layer].reshape(T * B, -1))
            dh = _product(dxw_flat, p["Wxh"].t()).view(T, B, -1)  # (T, B, H)
        grads.update({param_name(name, layer): v for name, v in g.items()})
    return loss, {name: grads[name] for name in params}, new_state


def _hash32(x):
    """Chris Wellons' lowbias32 bijection on 32-bit values, held in Python ints or int64 tensors (in place); both
    multipliers are below 2^31, so no product leaves int64."""
    x ^= x >> 16
    x *= 0x21F0AAAD
    x &= 0xFFFFFFFF
    x ^= x >> 15
    x *= 0x735A2D97
    x &= 0xFFFFFFFF
    x ^= x >> 15
    return x


def dropout_masks(
    p: float,
    seed: int,
    step: int,
    first_stream: int,
    B: int,
    T: int,
    num_layers: int,
    H: int,
    dtype=torch.float32,
    device=None,
):
    """Inverted-dropout masks (L, T, B, H) for streams ``first_stream ... first_stream + B - 1``: 0 where a unit is
    dropped, 1 / (1 - p) where kept; None when ``p`` is 0.

    Unit (layer, t, u) of global stream s is kept when a hash of (seed, step, s, layer, t, u) is at least p * 2^32:
    the same bits whichever process, batch split or device computes them.
    """
    if p == 0:
        return None
    key = 0
    for word in (seed, step):  # 64-bit counters folded in 32 bits at a time
        for part in (word & 0xFFFFFFFF, (word >> 32) & 0xFFFFFFFF):
            key = _hash32(key ^ part)
    streams = torch.arange(first_stream, first_stream + B, dtype=torch.int64, device=device)
    stream_keys = _hash32(_hash32(streams) ^ key)
    units = _hash32(torch.arange(num_layers * T * H, dtype=torch.int64, device=device)).view(num_layers, T, 1, H)
    bits = _hash32(units ^ stream_keys.view(1, 1, B, 1))
    keep = bits >= round(p * 2**32)
    return keep.to(dtype).mul_(1.0 / (1.0 - p))
