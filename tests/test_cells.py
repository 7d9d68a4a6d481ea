"""The cells' hand-written BPTT (charrnn/cells, charrnn/stack.py) against autograd through nn.RNN / nn.LSTM / nn.GRU
and against finite differences in float64; the dropout masks; the NumPy sampling step against the torch forward.
(The one-layer rnn trains bit-identically to charrnn's earlier model: tests/test_old_checkpoints.py.)"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn import sampling, stack
from charrnn.cells import CELLS, fast, gru, lstm, native, native_build, parallel, rnn

F64 = torch.float64
NN_LSTM_ORDER = [lstm.I, lstm.F, lstm.G, lstm.O]  # nn.LSTM's gate k is our gate NN_LSTM_ORDER[k]


def make_case(cell, L, B, T, H, V, p=0.0, seed=0):
    """Parameters moved off their initialisation so every gate is partly saturated, a random carried state (h and
    c), random text, and dropout masks for ``p`` > 0."""
    g = torch.Generator().manual_seed(seed)
    params = stack.init_params(cell, V, H, L, generator=g, dtype=F64)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=F64) for k, v in params.items()}
    inputs = torch.randint(V, (B, T), generator=g)
    targets = torch.randint(V, (B, T), generator=g)
    state = 0.5 * torch.randn(B, L * cell.NUM_STATES, H, generator=g, dtype=F64)
    masks = stack.dropout_masks(p, seed, 7, 0, B, T, L, H, dtype=F64)
    return params, inputs, targets, state, masks


def torch_layer(name, p, in_size, H):
    """nn.RNN / nn.LSTM / nn.GRU with the layer's weights copied (rows reordered to PyTorch's gate order), and the
    map of its gradients' rows back to our gate order."""
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[name](in_size, H, dtype=F64)
    order = NN_LSTM_ORDER if name == "lstm" else list(range(module.weight_hh_l0.shape[0] // H))
    to_nn = lambda w: torch.cat([w[k * H : (k + 1) * H] for k in order])  # noqa: E731
    back = lambda w: torch.cat([w[order.index(k) * H : (order.index(k) + 1) * H] for k in range(len(order))])  # noqa: E731
    bias_hh = torch.zeros_like(module.bias_hh_l0)
    if name == "gru":
        bias_hh[2 * H :] = p["bhn"].view(-1)
    with torch.no_grad():
        module.weight_ih_l0.copy_(to_nn(p["Wxh"]))
        module.weight_hh_l0.copy_(to_nn(p["Whh"]))
        module.bias_ih_l0.copy_(to_nn(p["bh"].view(-1)))
        module.bias_hh_l0.copy_(bias_hh)
    return module, back


def reference(name, params, inputs, targets, state, masks):
    """Loss, gradients (as our parameters) and new state by autograd through single-layer nn modules stacked with
    the same dropout masks, a linear output layer and cross-entropy summed over time, averaged over streams."""
    B, T = inputs.shape
    V, H = params["Why"].shape
    L, K = stack.num_layers(params), CELLS[name].NUM_STATES
    x = torch.nn.functional.one_hot(inputs.t(), V).to(F64)
    modules, new_state = [], []
    for layer in range(L):
        p = stack.layer_params(params, layer)
        module, rows = torch_layer(name, p, x.shape[-1], H)
        modules.append((module, rows))
        s = state[:, layer * K : (layer + 1) * K].transpose(0, 1).contiguous()
        out, last = module(x, (s[:1], s[1:]) if K == 2 else s)
        new_state += [last[0][0], last[1][0]] if K == 2 else [last[0]]
        x = out if masks is None else out * masks[layer]
    Why = params["Why"].clone().requires_grad_()
    by = params["by"].clone().requires_grad_()
    logits = x @ Why.t() + by.view(-1)
    loss = torch.nn.functional.cross_entropy(logits.reshape(T * B, V), targets.t().reshape(-1), reduction="sum")
    (loss / B).backward()
    grads = {"Why": Why.grad, "by": by.grad}
    for layer, (module, rows) in enumerate(modules):
        g = {"Wxh": rows(module.weight_ih_l0.grad), "Whh": rows(module.weight_hh_l0.grad),
             "bh": rows(module.bias_ih_l0.grad).unsqueeze(1)}  # fmt: skip
        if name == "gru":
            g["bhn"] = module.bias_hh_l0.grad[2 * H :].unsqueeze(1)
        grads.update({stack.param_name(k, layer): v for k, v in g.items()})
    return loss.detach(), grads, torch.stack(new_state, 1).detach()


# The LSTM twice: with its C kernel (CPU) and with the torch loop that GPUs and compiler-less machines run.
VARIANTS = ["rnn", "lstm", "lstm/torch-loop", "gru"]


def cell_variant(variant, request):
    name, _, loop = variant.partition("/")
    if loop:
        request.getfixturevalue("without_native")
    return name


CONFIGS = [  # (L, B, dropout)
    (1, 1, 0.0),
    (1, 4, 0.0),
    (3, 1, 0.0),
    (3, 3, 0.3),
    (2, 2, 0.5),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("L,B,p", CONFIGS)
def test_gradients_equal_autograd(variant, L, B, p, request):
    name = cell_variant(variant, request)
    cell = CELLS[name]
    params, inputs, targets, state, masks = make_case(cell, L, B, T=9, H=6, V=7, p=p)
    loss, grads, new_state = stack.loss_and_grads(cell, params, inputs, targets, state, masks)
    ref_loss, ref_grads, ref_state = reference(name, params, inputs, targets, state, masks)

    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert new_state.shape == state.shape
    assert (new_state - ref_state).abs().max() <= 1e-12
    assert grads.keys() == params.keys() == ref_grads.keys()
    for k, expected in ref_grads.items():
        assert grads[k].shape == params[k].shape
        rel = (grads[k] - expected).abs().max() / expected.abs().max()
        assert rel <= 1e-10, f"{k}: relative error {rel:.1e}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("L,B,p", [(1, 1, 0.0), (3, 3, 0.3)])
def test_gradients_equal_finite_differences(variant, L, B, p, request):
    name = cell_variant(variant, request)
    cell = CELLS[name]
    params, inputs, targets, state, masks = make_case(cell, L, B, T=5, H=4, V=5, p=p, seed=1)
    _, grads, _ = stack.loss_and_grads(cell, params, inputs, targets, state, masks)
    g, eps = torch.Generator().manual_seed(2), 1e-6
    for k, param in params.items():
        flat = param.view(-1)
        for i in torch.randperm(flat.numel(), generator=g)[:4].tolist():  # a few entries of every tensor
            saved = flat[i].item()
            flat[i] = saved + eps
            plus = stack.loss_and_grads(cell, params, inputs, targets, state, masks)[0] / B
            flat[i] = saved - eps
            minus = stack.loss_and_grads(cell, params, inputs, targets, state, masks)[0] / B
            flat[i] = saved
            numeric = (plus - minus).item() / (2 * eps)
            analytic = grads[k].reshape(-1)[i].item()
            assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(numeric)), f"{k}[{i}]: {analytic} vs {numeric}"


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.parametrize("name", CELLS)
def test_float32_through_onednn_equals_float64(name):
    """On the CPU in float32 the LSTM's recurrent products and every layer's input products and weight gradients
    above the first run through oneDNN (charrnn/cells/native.py): loss, state and gradients equal float64's to
    float32 precision, for every cell in 3 layers with dropout."""
    assert native._onednn_usable(torch.zeros(1)) and not native._onednn_usable(torch.zeros(1, dtype=F64))
    cell = CELLS[name]
    params, inputs, targets, state, masks = make_case(cell, 3, 4, T=20, H=40, V=9, p=0.3)
    expected = stack.loss_and_grads(cell, params, inputs, targets, state, masks)
    f32 = {k: v.float() for k, v in params.items()}
    loss, grads, new_state = stack.loss_and_grads(cell, f32, inputs, targets, state.float(), masks.float())
    assert abs(loss.double() - expected[0]) <= 1e-5 * abs(expected[0])
    assert (new_state.double() - expected[2]).abs().max() <= 1e-4
    for k, want in expected[1].items():
        rel = (grads[k].double() - want).abs().max() / want.abs().max()
        assert grads[k].dtype == torch.float32 and rel <= 1e-4, f"{k}: relative error {rel:.1e}"


def test_parameter_shapes_cost_no_import():
    """Loading a checkpoint asks for the parameters' shapes; computing them must not pull in torch._dynamo (1.2 s)."""
    code = (
        "import sys; from charrnn import stack; from charrnn.cells import CELLS\n"
        "shapes = [stack.param_shapes(cell, 65, 512, 2) for cell in CELLS.values()]\n"
        "assert shapes[1]['Whh_1'] == (2048, 512), shapes\n"
        "assert 'torch._dynamo' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    for cell in CELLS.values():
        for L in (1, 3):
            drawn = stack.init_params(cell, 11, 7, L)
            assert stack.param_shapes(cell, 11, 7, L) == {k: tuple(p.shape) for k, p in drawn.items()}


def test_forward_matches_loss_path_and_exposes_activations():
    cell = CELLS["lstm"]
    params, inputs, targets, state, _ = make_case(cell, 2, 3, T=6, H=5, V=7)
    logits, new_state, acts = stack.forward(cell, params, inputs, state)
    loss, _, loss_state = stack.loss_and_grads(cell, params, inputs, targets, state)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss, ref, rtol=1e-13, atol=0)
    assert torch.equal(new_state, loss_state)
    assert [tuple(a["h"].shape) for a in acts] == [(7, 3, 5)] * 2 and acts[1]["gates"].shape == (6, 3, 4, 5)
    assert torch.equal(acts[1]["c"][-1], new_state[:, 3])


def test_dropout_masks_are_a_function_of_seed_step_and_global_stream():
    p, L, T, H = 0.3, 2, 20, 64
    everyone = stack.dropout_masks(p, 11, 5, 0, 8, T, L, H)
    assert everyone.shape == (L, T, 8, H)
    for first, B in [(0, 4), (4, 4), (3, 2)]:  # a process's block of streams draws what the whole batch drew there
        assert torch.equal(stack.dropout_masks(p, 11, 5, first, B, T, L, H), everyone[:, :, first : first + B])
    assert everyone.unique().tolist() == [0.0, torch.tensor(1 / 0.7).item()]  # inverted dropout, float32
    keep = (everyone > 0).double().mean().item()
    assert abs(keep - 0.7) < 0.01  # 20480 units: standard deviation 0.003
    for other in [stack.dropout_masks(p, 12, 5, 0, 8, T, L, H), stack.dropout_masks(p, 11, 6, 0, 8, T, L, H)]:
        assert (other != everyone).double().mean() > 0.3  # another seed or step: independent masks (0.42 expected)
    assert (everyone[0] != everyone[1]).double().mean() > 0.3  # layers, times and streams differ too
    assert (everyone[:, 0] != everyone[:, 1]).double().mean() > 0.3
    assert (everyone[:, :, 0] != everyone[:, :, 1]).double().mean() > 0.3
    assert stack.dropout_masks(0.0, 11, 5, 0, 8, T, L, H) is None
    big = stack.dropout_masks(p, 2**40 + 1, 2**33, 2**31, 2, 3, 1, 4, dtype=torch.float64)  # 64-bit counters work
    assert big.dtype == torch.float64 and not torch.equal(big, stack.dropout_masks(p, 1, 2**33, 2**31, 2, 3, 1, 4))


@pytest.mark.parametrize("name", CELLS)
def test_numpy_step_equals_torch_forward(name):
    cell = CELLS[name]
    params, inputs, _, state, _ = make_case(cell, 2, 1, T=300, H=16, V=11, seed=5)
    logits, new_state, _ = stack.forward(cell, params, inputs, state)
    stepper = sampling.NumpyStack(cell, params, state[0].numpy())
    got = np.stack([stepper.advance(x).copy() for x in inputs[0].tolist()])
    np.testing.assert_allclose(got, logits[0].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stepper.state(), new_state[0].numpy(), rtol=0, atol=1e-12)


REFERENCE = (lstm.forward, lstm.backward)


def lstm_layer_run(dtype, xw, state, dh, math=REFERENCE):
    """One LSTM layer's forward and backward through ``math`` (a path's forward and backward, fast.py)."""
    H = xw.shape[-1] // 4
    p = {k: v.to(dtype) for k, v in lstm.init_layer(H, H, torch.Generator().manual_seed(4), F64).items()}
    forward, backward = math
    acts, new_state = forward(p, xw.to(dtype, copy=True), state.to(dtype))  # the forward overwrites xw
    dxw, grads = backward(p, acts, dh.to(dtype))
    return {**acts, "state": new_state, "dxw": dxw, "dWhh": grads["Whh"]}


step_kernels = pytest.mark.skipif(native.kernel("lstm_forward_float64") is None, reason="native.c did not build")


@step_kernels
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-13), (torch.float32, 2e-5)])
def test_lstm_kernel_equals_torch_loop(dtype, tolerance, kernel_calls):
    """The per-step C path against the reference loops, at a width whose units take both the kernel's vector and its
    remainder path (37 = 2 x 16 + 5), with pre-activations from -1000 to 1000 so that exp overflows to infinity in
    both directions."""
    g = torch.Generator().manual_seed(3)
    T, B, H = 6, 3, 37
    xw = torch.randn(T, B, 4 * H, generator=g, dtype=F64) * 3
    xw[0, 0] = torch.linspace(-1000, 1000, 4 * H, dtype=F64)
    state, dh = torch.randn(B, 2, H, generator=g, dtype=F64), torch.randn(T, B, H, generator=g, dtype=F64)
    ours = lstm_layer_run(dtype, xw, state, dh, fast.LSTM_STEPS)
    suffix = native_build.DTYPES[dtype]
    assert kernel_calls == {f"lstm_forward_{suffix}": T, f"lstm_backward_{suffix}": T}
    loop = lstm_layer_run(dtype, xw, state, dh)
    for k, expected in loop.items():
        assert (ours[k] - expected).abs().max() <= tolerance * max(1.0, expected.abs().max()), k


@pytest.mark.parametrize(
    "dtype,path",
    [
        (torch.float32, "reference"),
        (torch.float64, "reference"),
        (torch.float32, "steps"),
        (torch.float64, "steps"),
        (torch.float32, "windows"),
    ],
)
def test_lstm_propagates_nan(dtype, path, kernel_calls):
    """A NaN pre-activation reaches the state and the gradients (the divergence guard looks for it there), on every
    path; the C paths prove their kernel ran."""
    windows = "lstm_forward_window_f32_part"
    kernel = {"steps": f"lstm_forward_{native_build.DTYPES[dtype]}", "windows": windows}.get(path)
    if kernel is not None and native.kernel(kernel) is None:
        pytest.skip(f"native.c's {kernel} is not built here")
    T, B, H = 3, 2, 21
    xw, state, dh = torch.zeros(T, B, 4 * H), torch.zeros(B, 2, H), torch.ones(T, B, H)
    xw[1, 0, 5] = float("nan")
    math = {"reference": REFERENCE, "steps": fast.LSTM_STEPS, "windows": fast.LSTM_WINDOWS}[path]
    out = lstm_layer_run(dtype, xw, state, dh, math)
    assert out["state"][0].isnan().any() and not out["state"][1].isnan().any()
    assert out["dWhh"].isnan().any()
    assert (kernel_calls.get(kernel, 0) > 0) if kernel else not any(name.startswith("lstm_") for name in kernel_calls)


def test_compute_path_without_native_is_plain_torch(without_native, monkeypatch):
    """With CHARRNN_NATIVE=0 every cell trains with its reference loops, and the path says so."""
    for name, cell in CELLS.items():
        chosen = fast.path(cell, torch.float32, "cpu")
        assert (chosen.name, chosen.why) == (
            "plain torch",
            "no C loop for this cell" if cell is rnn else "CHARRNN_NATIVE=0",
        )
        ran = []
        monkeypatch.setattr(cell, "forward", lambda *a, real=cell.forward: ran.append("forward") or real(*a))
        monkeypatch.setattr(cell, "backward", lambda *a, real=cell.backward: ran.append("backward") or real(*a))
        params, inputs, targets, state, _ = make_case(cell, 2, 3, T=5, H=6, V=7)
        stack.loss_and_grads(cell, params, inputs, targets, state)
        assert ran == ["forward", "forward", "backward", "backward"], name


window_kernels = pytest.mark.skipif(
    native.kernel("product_f32") is None,
    reason="native.c's float32 products need a C compiler and an AVX-512 CPU",
)


@pytest.fixture
def one_thread():
    """torch and charrnn's own threads (cells/parallel.py) one each: every window loop in one block."""
    threads, own = torch.get_num_threads(), parallel.threads()
    torch.set_num_threads(1)
    parallel.set_threads(1)
    yield
    torch.set_num_threads(threads)
    parallel.set_threads(own)


@window_kernels
@settings(max_examples=150, deadline=None, derandomize=True, database=None)  # the same examples every run
@given(M=st.integers(1, 20), N=st.integers(1, 70), K=st.integers(1, 40), add=st.booleans(), transposed=st.booleans(),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_recurrent_product_at_every_shape(M, N, K, add, transposed, seed):
    """``product_f32`` (8-row blocks and single rows, 32-column panels with masked tails), with and without the added
    term, from W and from a transposed view: within float32 rounding of the float64 product, and nothing written
    outside ``out``'s M x N corner of its wider rows."""
    g = torch.Generator().manual_seed(seed)
    x, extra = torch.randn(M, K + 3, generator=g)[:, :K], torch.randn(M, N + 5, generator=g)[:, :N]
    W = torch.randn(K, N, generator=g).t() if transposed else torch.randn(N, K, generator=g)
    packed = native.pack_panels(W)
    out = torch.full((M, N + 7), float("nan"))
    native._library().product_f32(x.data_ptr(), x.stride(0), packed.data_ptr(), out.data_ptr(), out.stride(0),
                                  extra.data_ptr() if add else None, extra.stride(0), M, N, K)  # fmt: skip
    exact = x.double() @ W.double().t() + (extra.double() if add else 0)
    bound = (K + 2) * 2.0**-24 * (x.double().abs() @ W.double().abs().t() + extra.double().abs())
    assert ((out[:, :N].double() - exact).abs() <= bound).all()
    assert out[:, N:].isnan().all()


@window_kernels
def test_lstm_without_avx512_takes_the_per_step_path(monkeypatch, one_thread):
    """native.c built as for a CPU without AVX-512 (``CHARRNN_CFLAGS=-mno-avx512f``, a new build in the cache) has
    no window loops, and the LSTM trains with C steps between oneDNN's products."""
    monkeypatch.setenv("CHARRNN_CFLAGS", "-mno-avx512f")
    native._library.cache_clear()
    try:
        assert native._library() is not None and native.kernel("product_f32") is None
        assert str(fast.path(lstm, torch.float32)) == "C steps with oneDNN products, 1 thread (no AVX-512)"
        assert str(fast.path(gru, torch.float32)) == "oneDNN step products, torch loop, 1 thread (no AVX-512)"
    finally:
        native._library.cache_clear()


@window_kernels
def test_lstm_window_loop_equals_per_step_kernel(one_thread, kernel_calls):
    """The whole-window C loop (float32 products in C) against the per-step one (products between C steps), at 11
    streams (an 8-row block and three single rows) of 37 units: the same activations and gradients to float32
    rounding."""
    assert str(fast.path(lstm, torch.float32)) == "C window loops, 1 thread"
    assert str(fast.path(lstm, torch.float64)) == "C steps with torch products, 1 thread (float64)"
    assert str(fast.path(gru, torch.float32)) == "C window loops, 1 thread"
    g = torch.Generator().manual_seed(5)
    T, B, H = 7, 11, 37
    xw = torch.randn(T, B, 4 * H, generator=g, dtype=F64) * 3
    state, dh = torch.randn(B, 2, H, generator=g, dtype=F64), torch.randn(T, B, H, generator=g, dtype=F64)
    windows = lstm_layer_run(torch.float32, xw, state, dh, fast.LSTM_WINDOWS)
    assert kernel_calls == {"pack_panels_f32_part": 2, "lstm_forward_window_f32_part": 1,
                            "lstm_backward_window_f32_part": 1}  # fmt: skip
    per_step = lstm_layer_run(torch.float32, xw, state, dh, fast.LSTM_STEPS)
    for k, expected in per_step.items():
        assert (windows[k] - expected).abs().max() <= 2e-5 * max(1.0, expected.abs().max()), k


@window_kernels
def test_training_runs_the_path_it_names(one_thread, kernel_calls):
    """stack.loss_and_grads of a float32 LSTM on one thread runs the C window loops that fast.path names: once per
    layer each way."""
    assert fast.path(lstm, torch.float32).name == "C window loops"
    params, inputs, targets, state, _ = make_case(lstm, 2, 3, T=5, H=6, V=7)
    stack.loss_and_grads(lstm, {k: v.float() for k, v in params.items()}, inputs, targets, state.float())
    assert kernel_calls["lstm_forward_window_f32_part"] == 2 and kernel_calls["lstm_backward_window_f32_part"] == 2
