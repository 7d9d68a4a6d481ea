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

import functools

import numpy as np
import torch

from .cells import native


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


def _layers_forward(cell, params: dict, inputs: torch.Tensor, state: torch.Tensor, masks=None):
    """Every layer over the window: ``(layers, acts, xs, new_state)``; ``xs[l]`` is layer l's input for l >= 1
    (after dropout) and ``xs[L]`` the top output that the output layer sees."""
    B, T = inputs.shape
    K = cell.NUM_STATES
    layers = [layer_params(params, layer) for layer in range(num_layers(params))]
    acts, xs, states = [], [None], []
    for layer, p in enumerate(layers):
        if layer == 0:  # one-hot input: a column gather of Wxh (rows of a contiguous Wxh^T gather fast)
            xw = torch.nn.functional.embedding(inputs.t(), p["Wxh"].t().contiguous()).add_(p["bh"].view(-1))
        else:
            x = xs[layer].reshape(T * B, -1)
            xw = native.weight_product(p["Wxh"], T * B, p["bh"].view(-1))(x).view(T, B, -1)
        a, s = cell.forward(p, xw, state[:, layer * K : (layer + 1) * K])
        acts.append(a)
        states.append(s)
        xs.append(a["h"][1:] if masks is None else a["h"][1:] * masks[layer])
    return layers, acts, xs, torch.cat(states, 1)


def logits_of(params: dict, h: torch.Tensor) -> torch.Tensor:
    """Unnormalised next-character scores (..., V) for top-layer outputs (..., H)."""
    return torch.addmm(params["by"].view(-1), h.reshape(-1, h.shape[-1]), params["Why"].t()).view(
        *h.shape[:-1], -1
    )


def forward(cell, params: dict, inputs: torch.Tensor, state: torch.Tensor):
    """The forward pass without dropout (validation, visualisation): ``(logits, new_state, acts)``.

    ``logits`` is (B, T, V); ``acts[l]`` is layer l's activations, time-major: ``h`` (T + 1, B, H) with the starting
    state first, and for the LSTM ``c`` (T + 1, B, H) and ``gates`` (T, B, 4, H) in the order (o, i, f, g).
    """
    _, acts, xs, new_state = _layers_forward(cell, params, inputs, state)
    return logits_of(params, xs[-1].transpose(0, 1)), new_state, acts


def loss_and_grads(cell, params: dict, inputs: torch.Tensor, targets: torch.Tensor, state: torch.Tensor,
                   dropout_masks=None):
    """Cross-entropy over a (B, T) batch and its gradients, by hand-written backpropagation through time.

    Returns ``(loss, grads, new_state)``: ``loss`` summed over all B * T characters
    (a 0-d tensor, never synchronised to the host here); ``grads`` the gradients of the loss summed over time and
    averaged over the B streams; ``new_state`` (B, L * K, H) to carry into the next window. ``dropout_masks``:
    ``dropout_masks(...)``'s (L, T, B, H) masks, or None for no dropout.
    """
    B, T = inputs.shape
    masks = dropout_masks
    layers, acts, xs, new_state = _layers_forward(cell, params, inputs, state, masks)
    h_out = xs[-1].reshape(T * B, -1)  # time-major rows: row t * B + b
    flat_targets = targets.t().reshape(-1)

    logits = logits_of(params, h_out)
    log_probs = torch.log_softmax(logits, dim=1)
    loss = -log_probs.gather(1, flat_targets.unsqueeze(1)).sum()

    # Softmax backward, scaled for the per-stream mean: dy = (p - onehot(target)) / B.
    dy = log_probs.exp_()
    dy[torch.arange(T * B, device=dy.device), flat_targets] -= 1.0
    dy.mul_(1.0 / B)
    grads = {"Why": dy.t() @ h_out, "by": dy.sum(0).unsqueeze(1)}

    dh = (dy @ params["Why"]).view(T, B, -1)
    for layer in range(len(layers) - 1, -1, -1):
        p = layers[layer]
        if masks is not None:
            dh.mul_(masks[layer])
        dxw, g = cell.backward(p, acts[layer], dh)
        dxw_flat = dxw.reshape(T * B, -1)
        g["bh"] = dxw_flat.sum(0).unsqueeze(1)
        if layer == 0:  # the gather's backward: scatter rows into Wxh^T, then view it as Wxh's shape
            # Both contiguous: index_add_ runs about 9x slower into a transposed view or from strided rows.
            dWxh_t = dxw_flat.new_zeros(p["Wxh"].shape[::-1])
            dWxh_t.index_add_(0, inputs.t().reshape(-1), dxw_flat.contiguous())
            g["Wxh"] = dWxh_t.t().contiguous()
        else:
            g["Wxh"] = native.gradient_product(dxw_flat, xs[layer].reshape(T * B, -1))
            dh = native.weight_product(p["Wxh"].t(), T * B)(dxw_flat).view(T, B, -1)
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


def dropout_masks(p: float, seed: int, step: int, first_stream: int, B: int, T: int, num_layers: int, H: int,
                  dtype=torch.float32, device=None):
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
        self.h1, self.c, self.outs, self.weights, self.matvecs, self.recs, self.aboves, self.steps = ([] for _ in range(8))
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
