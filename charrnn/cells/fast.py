"""The cells' training loops on the CPU's fast paths, behind the cells' own ``forward(p, xw, state)`` and
``backward(p, acts, dh_out)``, and ``path``: the one place that chooses between them and the plain torch references
in rnn.py, lstm.py and gru.py (charrnn/stack.py asks it for every layer; train.py's start-up summary prints it).

From fastest: the LSTM's and the GRU's whole window loops in C, products by the packed Whh included (float32,
AVX-512: ``LSTM_WINDOWS``, ``GRU_WINDOWS``); the LSTM's per-step elementwise work in one C call between oneDNN's
products (any x86 CPU, float32 or float64: native.c's ``lstm_forward_<dtype>``); the GRU's torch loop with each
step's product through oneDNN; the references. Why each one pays: charrnn/cells/native.py and BENCHMARKS.md,
section 7. Every path computes what the reference computes (tests/test_cells.py, tests/test_cores.py).

The first layer's input is one character a stream and step: its input projection comes to the window loops as a
``OneHot`` (rows of Wxh^T + bh, picked by the characters), which they gather step by step, and they add its gradient
into the table as they produce it, each thread for its own streams (a pass of its own ran on one thread, bound by
memory: BENCHMARKS.md, section 13).

Threads: a window's streams are independent until the weight gradients sum over them, so the window loops run on
charrnn's threads (parallel.py), each taking a block of streams, with no synchronisation inside the window; the
weight gradients after them run in blocks of rows (native.py). The kernels read a block's rows in place (native.c),
and each stream's results are the same bits however the streams are split. The torch loops of the other paths run
on torch's threads.
"""

import functools
from typing import Callable, NamedTuple

import torch

from . import gru, lstm, native, native_build, parallel


class Path(NamedTuple):
    name: str  # what runs, in the user's words
    why: str  # why not a faster path ("" when none is faster)
    forward: Callable
    backward: Callable
    threads: int | None = None  # the threads its loops run on (None off the CPU)
    product_threads: int | None = None  # the threads of the window's large products, where more
    one_hot: bool = False  # whether forward takes the first layer's input projection as a OneHot (it gathers)

    def __str__(self) -> str:
        threads = "" if self.threads is None else f", {self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.product_threads:
            threads += f", large products on {self.product_threads}"
        return f"{self.name}{threads} ({self.why})" if self.why else f"{self.name}{threads}"


class OneHot(NamedTuple):
    """The first layer's input projection (T, B, G*H) as what it is: rows of ``table`` (V, G*H), Wxh^T + bh, picked
    by ``chars`` (T, B), the window's characters. The window loops take it so, gathering each step's rows as they
    go (native.c), and give its gradient the same shape: ``table`` then holds the table's gradient, each row's
    gradient added into the row of its character."""

    table: torch.Tensor
    chars: torch.Tensor

    def rows(self) -> torch.Tensor:
        """The projection itself (T, B, G*H), for the loops that take it whole."""
        T, B = self.chars.shape
        return torch.index_select(self.table, 0, self.chars.reshape(-1)).view(T, B, -1)


def _window_loop(name: str, buffers: tuple, T: int, H: int) -> None:
    """native.c's window loop ``name`` over every stream, in blocks on charrnn's threads (parallel.py). ``buffers``
    in the kernel's order: contiguous tensors with streams on dim -2 ((T, S, .) or (S, .)), each block given its
    rows, 1-d ones (``packed``, the packed weight; biases; tables) given whole, and None as NULL."""
    S = buffers[0].shape[-2]

    def args(block):
        first, end = block
        rows = (0 if b is None else b.data_ptr() + (first * b.stride(-2) * b.element_size() if b.dim() > 1 else 0)
                for b in buffers)  # fmt: skip
        return [*rows, T, end - first, H, S]

    parallel.run_parts(native.kernel(f"{name}_part"), args, parallel.blocks(S), rowwise=True)


def _first_layer(xw):
    """``(gates, table, chars)`` for a forward window loop from its input projection ``xw``: for a ``OneHot``, an
    empty (T, B, G*H) buffer to gather into, its table (1-d: given whole) and its characters as (T, B, 1) (streams
    on dim -2); for a tensor, the tensor itself, and no table."""
    if isinstance(xw, OneHot):
        gates = torch.empty((*xw.chars.shape, xw.table.shape[1]), dtype=xw.table.dtype)
        return gates, xw.table.contiguous().view(-1), xw.chars.contiguous().unsqueeze(2)  # the table whole
    return xw.contiguous(), None, None


def _scatter_tables(acts: dict, B: int, GH: int):
    """For a backward whose forward gathered (``acts["one_hot"]``), what its loop adds the input's gradient into:
    ``(tables, table_of, chars)``, a zeroed (V, G*H) table for each block of streams (``parallel.blocks``: as many
    as the threads, on whichever way the blocks run), 1-d; each stream's table as its offset in them (B, 1); the
    characters (T, B, 1). Else Nones."""
    one_hot = acts.get("one_hot")
    if one_hot is None:
        return None, None, None
    blocks, V = parallel.blocks(B), one_hot.table.shape[0]
    tables = torch.zeros((len(blocks), V, GH), dtype=one_hot.table.dtype)
    table_of = torch.tensor([i * V * GH for i, (first, end) in enumerate(blocks) for _ in range(first, end)])
    return tables.view(-1), table_of.unsqueeze(1), one_hot.chars.contiguous().unsqueeze(2)


def _input_gradient(dxw: torch.Tensor, acts: dict, tables: torch.Tensor | None):
    """The gradient w.r.t. the input projection: ``dxw`` for a tensor input, or for a ``OneHot`` one the blocks'
    tables summed in block order, as a ``OneHot``."""
    if tables is None:
        return dxw
    V, GH = acts["one_hot"].table.shape
    total, *others = tables.view(-1, V, GH)
    for table in others:
        total += table
    return OneHot(total, acts["one_hot"].chars)


def _addresses(x: torch.Tensor) -> list[int]:
    """The address of each ``x[t]`` (``x`` contiguous): what native.c's step functions take."""
    step = x.stride(0) * x.element_size()
    return [x.data_ptr() + t * step for t in range(len(x))]


def _step_kernel(direction: str, dtype: torch.dtype):
    return native.kernel(f"lstm_{direction}_{native_build.DTYPES[dtype]}")


def lstm_window_forward(p: dict, xw, state: torch.Tensor):
    """lstm.forward as native.c's ``lstm_forward_window_f32``, each step's product by the packed Whh included;
    ``xw`` a tensor or a ``OneHot``."""
    gates, table, chars = _first_layer(xw)
    T, B, GH = gates.shape
    hs, cs, tanh_c = lstm.new_activations(gates, state)
    packed, rec = native.pack_panels(p["Whh"]), torch.empty((B, GH), dtype=gates.dtype)  # rec: a step's product
    _window_loop("lstm_forward_window_f32", (gates, table, chars, packed, hs, cs, tanh_c, rec), T, GH // lstm.GATES)
    acts, new_state = lstm.activations(gates, hs, cs, tanh_c)
    return {**acts, "one_hot": xw} if table is not None else acts, new_state


def lstm_window_backward(p: dict, acts: dict, dh_out: torch.Tensor):
    """lstm.backward as native.c's ``lstm_backward_window_f32``, each step's product by the packed Whh^T
    included; the input's gradient a ``OneHot`` where the forward's input was one."""
    T, B, H = dh_out.shape
    dh_out = dh_out.contiguous()
    dpre = torch.empty((T, B, lstm.GATES * H), dtype=dh_out.dtype)
    dc, dh = torch.zeros_like(dh_out[0]), torch.empty_like(dh_out[0])  # (B, H): the carried gradients
    gates, packed = acts["gates"].view(T, B, -1), native.pack_panels(p["Whh"].t())
    tables, table_of, chars = _scatter_tables(acts, B, lstm.GATES * H)
    buffers = (dpre, tables, table_of, chars, dc, gates, acts["c"], acts["tanh_c"], dh_out, packed, dh)
    _window_loop("lstm_backward_window_f32", buffers, T, H)
    return _input_gradient(dpre, acts, tables), lstm.recurrent_grads(dpre, acts["h"], native)


def gru_window_forward(p: dict, xw, state: torch.Tensor):
    """gru.forward as native.c's ``gru_forward_window_f32``, each step's product by the packed Whh included; ``xw``
    a tensor or a ``OneHot``."""
    gates, table, chars = _first_layer(xw)
    T, B, GH = gates.shape
    H = GH // gru.GATES
    hs = torch.empty((T + 1, B, H), dtype=gates.dtype)
    hs[0] = state[:, 0]
    ns, h_minus_n, rec = torch.empty_like(hs[1:]), torch.empty_like(hs[1:]), torch.empty((B, GH), dtype=gates.dtype)
    packed, bhn = native.pack_panels(p["Whh"]), p["bhn"].reshape(-1).contiguous()
    _window_loop("gru_forward_window_f32", (gates, table, chars, packed, bhn, hs, ns, h_minus_n, rec), T, H)
    acts, new_state = gru.activations(gates, hs, ns, h_minus_n)
    return {**acts, "one_hot": xw} if table is not None else acts, new_state


def gru_window_backward(p: dict, acts: dict, dh_out: torch.Tensor):
    """gru.backward as native.c's ``gru_backward_window_f32``, each step's product by the packed Whh^T included;
    the input's gradient a ``OneHot`` where the forward's input was one."""
    T, B, H = dh_out.shape
    dh_out = dh_out.contiguous()
    drec, dx_n = torch.empty((T, B, gru.GATES * H), dtype=dh_out.dtype), torch.empty_like(dh_out)
    dh, scratch = torch.zeros_like(dh_out[0]), torch.empty_like(dh_out[0])  # (B, H): dh_{t+1}, dh_out[t] + product
    gates, packed = acts["gates"].view(T, B, -1), native.pack_panels(p["Whh"].t())
    tables, table_of, chars = _scatter_tables(acts, B, gru.GATES * H)
    buffers = (drec, dx_n, tables, table_of, chars, gates, acts["n"], acts["h_minus_n"], dh_out, packed, dh, scratch)
    _window_loop("gru_backward_window_f32", buffers, T, H)
    grads = gru.recurrent_grads(drec, acts["h"], native)
    if tables is not None:
        return _input_gradient(drec, acts, tables), grads
    drec[..., gru.N * H :] = dx_n  # the input projection's gradient: r and z as the recurrent one's, n without r
    return drec, grads


def lstm_step_forward(p: dict, xw: torch.Tensor, state: torch.Tensor):
    """lstm.forward with each step's elementwise work in one C call, after the step's product
    (native.weight_product)."""
    xw = xw.contiguous()
    T, B, GH = xw.shape
    H = GH // lstm.GATES
    hs, cs, tanh_c = lstm.new_activations(xw, state)
    step, recurrent = _step_kernel("forward", xw.dtype), native.weight_product(p["Whh"], B)
    gates, h, c, tc = map(_addresses, (xw, hs, cs, tanh_c))
    for t in range(T):
        rec = recurrent(hs[t])  # (B, 4H)
        step(gates[t], rec.data_ptr(), c[t], c[t + 1], tc[t], h[t + 1], B, H)
    return lstm.activations(xw, hs, cs, tanh_c)


def lstm_step_backward(p: dict, acts: dict, dh_out: torch.Tensor):
    """lstm.backward with each step's elementwise work in one C call, after the step's product (dh = dh_out[t] +
    dpre[t + 1] @ Whh, native.weight_product)."""
    T, B, H = dh_out.shape
    dh_out = dh_out.contiguous()
    dpre, dc = torch.empty((T, B, lstm.GATES * H), dtype=dh_out.dtype), torch.zeros_like(dh_out[0])
    step, recurrent = _step_kernel("backward", dh_out.dtype), native.weight_product(p["Whh"].t(), B)
    gates, c, tc, d_out, d_pre = map(_addresses, (acts["gates"], acts["c"], acts["tanh_c"], dh_out, dpre))
    for t in range(T - 1, -1, -1):
        if t == T - 1:  # no later step: dc is 0, so any finite forget gate will do as the next one
            dh, next_gates = d_out[t], gates[t]
        else:
            dh_t = recurrent(dpre[t + 1], dh_out[t])  # (B, H), alive until the step has read it
            dh, next_gates = dh_t.data_ptr(), gates[t + 1]
        step(d_pre[t], dc.data_ptr(), gates[t], c[t], tc[t], dh, next_gates, B, H)
    return dpre, lstm.recurrent_grads(dpre, acts["h"], native)


LSTM_WINDOWS = (lstm_window_forward, lstm_window_backward)
GRU_WINDOWS = (gru_window_forward, gru_window_backward)
LSTM_STEPS = (lstm_step_forward, lstm_step_backward)
GRU_PRODUCTS = (functools.partial(gru.forward, products=native), functools.partial(gru.backward, products=native))
WINDOWS = {lstm: LSTM_WINDOWS, gru: GRU_WINDOWS}


def _obstacles(dtype: torch.dtype, device: torch.device) -> list[tuple[str, str]]:
    """What stands between a run and native.c, each as (what it rules out, why), in the order they are checked:
    ``"c"`` rules out every C loop, ``"windows"`` the window loops alone."""
    checks = [
        ("c", device.type != "cpu", device.type),
        ("c", native._turned_off(), "CHARRNN_NATIVE=0"),
        ("c", dtype not in native_build.DTYPES, str(dtype).removeprefix("torch.")),
        ("c", device.type == "cpu" and native._library() is None, "native.c not built: no C compiler?"),
        ("windows", dtype != torch.float32, str(dtype).removeprefix("torch.")),
        ("windows", native.kernel("product_f32") is None, "no AVX-512"),
    ]
    return [(rules_out, why) for rules_out, failed, why in checks if failed]


def _onednn(dtype: torch.dtype, device: torch.device) -> bool:
    return device.type == "cpu" and native._onednn_usable(torch.empty(0, dtype=dtype))


def path(cell, dtype: torch.dtype, device="cpu") -> Path:
    """How ``cell``'s layers train in ``dtype`` on ``device`` with torch's present thread count: the fastest path
    that runs here, and what rules out a faster one."""
    device = torch.device(device)
    obstacles = _obstacles(dtype, device)
    c_blocked = [why for rules_out, why in obstacles if rules_out == "c"]
    why = obstacles[0][1] if obstacles else ""
    onednn = _onednn(dtype, device)
    if cell in WINDOWS and not obstacles:
        return Path("C window loops", "", *WINDOWS[cell], parallel.threads(), one_hot=True)
    threads = (None, None)  # off the CPU; on it, torch's loops on torch's threads, large products on charrnn's
    if device.type == "cpu":
        loops, own = torch.get_num_threads(), parallel.threads()
        threads = (loops, own if own > loops else None)
    if cell is lstm and not c_blocked:
        return Path(f"C steps with {'oneDNN' if onednn else 'torch'} products", why, *LSTM_STEPS, *threads)
    if cell is gru and onednn:
        return Path("oneDNN step products, torch loop", why, *GRU_PRODUCTS, *threads)
    if cell is lstm and onednn:  # no C: the reference's loops, its weight gradient through oneDNN
        return Path("torch loop, oneDNN products", why, lstm.forward, functools.partial(lstm.backward, products=native),
                    *threads)  # fmt: skip
    if cell in (lstm, gru):
        return Path("plain torch", why, cell.forward, cell.backward, *threads)
    return Path("plain torch", "no C loop for this cell", cell.forward, cell.backward, *threads)
