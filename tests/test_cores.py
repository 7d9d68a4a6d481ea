"""charrnn on several threads (charrnn/cells/parallel.py): the blocks cover every stream and row once, the C window
loops of the LSTM and the GRU compute the reference's math on any split of the streams, the products in blocks of
rows equal whole ones, and training on 1 or 2 threads is the same model up to the order of sums, resumed across a
change of thread count too."""

import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn import network, optim
from charrnn.cells import fast, gru, lstm, native, parallel
from tests.train_helpers import corpus, newest, tiny_args, train

F64 = torch.float64
window_kernels = pytest.mark.skipif(native.kernel("product_f32") is None,
                                    reason="native.c's window loops need a C compiler and an AVX-512 CPU")  # fmt: skip


def fixed_examples(n: int):
    """The same ``n`` examples every run; each example sets the threads it needs through the fixture."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


@pytest.fixture
def threads():
    """``threads(n)``: charrnn on n threads, torch on one (as train.py runs them); both restored afterwards."""
    before = torch.get_num_threads(), parallel.threads()

    def use(n):
        torch.set_num_threads(1)
        parallel.set_threads(n)

    yield use
    torch.set_num_threads(before[0])
    parallel.set_threads(before[1])


@fixed_examples(300)
@given(size=st.integers(1, 200), n=st.integers(1, 9))
def test_blocks_cover_every_row_once(size, n, threads):
    threads(n)
    parts = parallel.blocks(size)
    assert [first for first, _ in parts] == [0] + [end for _, end in parts[:-1]] and parts[-1][1] == size
    sizes = [end - first for first, end in parts]
    assert len(parts) == min(size, n) and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1  # every thread has one


def test_run_shares_the_parts_keeps_their_order_and_raises(threads):
    threads(3)
    ran_on = set()

    def work(i):
        ran_on.add(threading.get_ident())
        time.sleep(0.01)  # long enough that every thread takes parts
        return i * i

    assert parallel.run(work, list(range(12))) == [i * i for i in range(12)]
    assert threading.get_ident() in ran_on and len(ran_on) == 3

    def fails(i):
        if i == 5:
            raise ValueError("part 5")
        return i

    with pytest.raises(ValueError, match="part 5"):
        parallel.run(fails, list(range(8)))


def pack_in_parts(W: torch.Tensor, parts: list) -> torch.Tensor:
    """``W`` packed by native.c's ``pack_panels_f32_part`` over ``parts`` (blocks of panels, parallel.run_parts),
    into a buffer of NaN: a part left out leaves NaN."""
    N, K = W.shape
    packed = torch.full((-(-N // native.PANEL) * native.PANEL * K,), float("nan"))

    def args(panels):
        first, end = panels
        rows = min(N, end * native.PANEL) - first * native.PANEL
        return [W[first * native.PANEL :].data_ptr(), K, 1, packed[first * native.PANEL * K :].data_ptr(), rows, K]

    parallel.run_parts(native.kernel("pack_panels_f32_part"), args, parts)
    return packed


@window_kernels
@pytest.mark.parametrize("n", [2, 3])
def test_c_parts_run_each_part(n, threads):
    """C parts posted to the helpers (native.c's run_parts, serve), one panel a part: every part runs, each writing
    its own panels, as the whole packed in one call (checked against the packed layout itself)."""
    threads(n)
    N, K = 37 * native.PANEL - 5, 13
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(4))
    for _ in range(20):  # helpers spinning, asleep, or busy with the previous run when it is posted
        packed = pack_in_parts(W, [(i, i + 1) for i in range(37)])
        rows = packed.view(37, K, native.PANEL).transpose(1, 2).reshape(-1, K)  # row 32 p + j: W's, zero past N
        assert torch.equal(rows[:N], W) and not rows[N:].any()


@window_kernels
def test_python_and_c_runs_in_turn_keep_every_helper(threads, monkeypatch):
    """Python runs and C runs posted in quick turns, all shared (a helper may find the next run posted before it has
    read the last): every result right, and afterwards both threads still take parts."""
    threads(2)
    monkeypatch.setattr(parallel._way, "next", lambda: True)
    W = torch.randn(100, 9)
    for i in range(2000):
        assert parallel.run(lambda part: part * 2, [i, i + 1]) == [2 * i, 2 * i + 2]
        if i % 100 == 0:
            assert torch.equal(pack_in_parts(W, [(0, 2), (2, 4)]), native.pack_panels(W))
        else:
            pack_in_parts(W, [(0, 2), (2, 4)])
    ran_on = set()
    parallel.run(lambda part: time.sleep(0.05) or ran_on.add(threading.get_ident()), [0, 1])
    assert len(ran_on) == 2


def test_run_never_waits_for_a_helper_that_has_not_started(threads):
    """A helper kept off its core (here: busy with another job) takes no part, and the caller does them all
    without waiting for it (Python parts and C parts): the window goes on at one thread's speed, not the slowest
    thread's."""
    threads(2)
    inside, release, left = threading.Event(), threading.Event(), threading.Event()

    def held():  # the one helper of two threads, held until the runs below are done (or 10 s passed)
        inside.set()
        release.wait(10)
        left.set()

    parallel._team(1, parallel._cpus).post(held)
    assert inside.wait(10)
    try:
        ran_on = set()
        assert parallel.run(lambda i: ran_on.add(threading.get_ident()) or i, list(range(4))) == [0, 1, 2, 3]
        assert ran_on == {threading.get_ident()}
        if native.kernel("pack_panels_f32_part") is not None:
            W = torch.randn(200, 9)
            assert torch.equal(pack_in_parts(W, [(0, 3), (3, 5), (5, 7)]), native.pack_panels(W))
        assert not left.is_set()  # both runs ended while the helper was still held: neither waited for it
    finally:
        release.set()


def test_parts_run_in_the_callers_autograd_mode(threads):
    """torch keeps grad mode per thread: a helper's part runs under the caller's ``no_grad`` or ``inference_mode``
    (else a block writing into an inference tensor fails, and one multiplying a weight that requires grad builds a
    graph)."""
    threads(2)
    w, ran_on = torch.ones(3, requires_grad=True), set()

    def slow(i):
        time.sleep(0.01)  # the caller does not take every part before the helper starts
        ran_on.add(threading.get_ident())
        return (w * i).requires_grad, torch.is_inference_mode_enabled()

    for mode, expected in ((torch.no_grad, (False, False)), (torch.inference_mode, (False, True)),
                           (torch.enable_grad, (True, False))):  # fmt: skip
        with mode():
            assert set(parallel.run(slow, list(range(1, 9)))) == {expected}
    assert len(ran_on) == 2


@pytest.fixture
def quick_probes(monkeypatch):
    """``_Way`` probing in stretches of 4 steps, 20 ms apart."""
    monkeypatch.setattr(parallel._Way, "STEPS", 4)
    monkeypatch.setattr(parallel._Way, "SECONDS", 0.0)
    monkeypatch.setattr(parallel._Way, "PROBE_SECONDS", 0.02)
    monkeypatch.setattr(parallel._Way, "LONGEST_SECONDS", 0.02)


def runs_on(slow_helper: bool, runs: int) -> list[set]:
    """For each of ``runs`` steps of one run of 2 parts, the threads that ran them: a part takes 2 ms on the caller,
    and on a helper 2 ms or (``slow_helper``, as a core shared with a busy process gives) 30 ms."""
    caller, threads_of_run = threading.get_ident(), []

    def work(part):
        on_helper = threading.get_ident() != caller
        time.sleep(0.03 if on_helper and slow_helper else 0.002)
        ran.add(threading.get_ident())

    for _ in range(runs):
        ran = set()
        parallel.run(work, [0, 1])
        parallel.step_ended()
        threads_of_run.append(ran)
    return threads_of_run


def test_the_faster_way_is_taken_shared_or_alone(threads, quick_probes):
    """Where a helper is as fast as the caller, the parts stay shared (2 ms a run against 4 alone); where it is slow
    (30 ms a part), the caller takes them alone after the first probe, and shares again once the helper is fast."""
    threads(2)
    shared = runs_on(slow_helper=False, runs=60)
    assert parallel._way.shared and sum(len(ran) == 2 for ran in shared[-30:]) > 15  # probes run some alone
    slow = runs_on(slow_helper=True, runs=60)
    assert not parallel._way.shared and sum(len(ran) == 1 for ran in slow[-30:]) > 15
    again = runs_on(slow_helper=False, runs=60)
    assert parallel._way.shared and sum(len(ran) == 2 for ran in again[-30:]) > 15


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_adagrad_in_blocks_is_the_same_bits(dtype, threads, monkeypatch):
    """charrnn's Adagrad on 2 threads cuts its weights, laid end to end, into blocks (above ``BLOCK_ELEMENTS``): the
    same element-wise update, so the same bits as one thread's, with a block boundary inside a tensor; and the
    update by hand (torch's operations, which a GPU and a machine without native.c run), to rounding."""
    g = torch.Generator().manual_seed(3)
    shapes = [(300, 500), (65, 300), (1, 7), (400, 300)]  # 290,000 weights: blocks split inside tensors
    start = [torch.randn(shape, generator=g, dtype=dtype) for shape in shapes]
    grads = [[torch.randn(shape, generator=g, dtype=dtype) for shape in shapes] for _ in range(3)]
    results = {}
    for n in (1, 2, "by hand"):
        threads(1 if n == "by hand" else n)
        if n == "by hand":
            monkeypatch.setattr(native, "kernel", lambda name: None)
        params = [p.clone() for p in start]
        opt = optim.Adagrad(params, lr=0.1, initial_accumulator_value=0.03)
        for step_grads in grads:
            for p, grad in zip(params, step_grads):
                p.grad = grad
            opt.step()
        results[n] = params
    assert sum(p.numel() for p in start) // optim.BLOCK_ELEMENTS >= 2
    mem = [0.03 + sum(step[i] ** 2 for step in grads) for i in range(len(shapes))]
    for i, before in enumerate(start):
        assert torch.equal(results[1][i], results[2][i]) and not torch.equal(results[1][i], before)
        tolerance = (1e-6 if dtype == torch.float32 else 1e-14) * results["by hand"][i].abs().max()
        assert (results[1][i] - results["by hand"][i]).abs().max() <= tolerance
        assert torch.allclose(opt.state[results["by hand"][i]]["mem"], mem[i])  # the torch path's sum of squares


def layer_run(cell, dtype, xw, state, dh, math):
    """A layer's forward and backward through ``math`` (a path's forward and backward), from one parameter draw;
    ``xw`` a tensor, or a ``fast.OneHot`` of ``dtype``."""
    H = state.shape[-1]
    p = cell.init_layer(H, H, torch.Generator().manual_seed(4), F64)
    p = {k: (v + 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(8), dtype=F64)).to(dtype)
         for k, v in p.items()}  # fmt: skip
    forward, backward = math
    xw = xw if isinstance(xw, fast.OneHot) else xw.to(dtype, copy=True)  # the forward overwrites a tensor xw
    acts, new_state = forward(p, xw, state.to(dtype))
    dxw, grads = backward(p, acts, dh.to(dtype))
    return {**acts, "state": new_state, "dxw": dxw, **{f"d{k}": v for k, v in grads.items()}}


@window_kernels
@pytest.mark.parametrize("cell", [lstm, gru], ids=["lstm", "gru"])
def test_window_loops_equal_the_reference_on_any_split(cell, threads, kernel_calls):
    """The float32 C window loops against the float64 reference loops (lstm.py, gru.py), at 11 streams of 37 units
    (an 8-row block and single rows; vectors and their tails) with pre-activations up to +-1000 (exp overflows): equal
    to float32 rounding. On 1 and 3 threads (one block; three, of single rows) every stream's activations and input
    gradients are the same bits (the same kernel on the same rows); the weight gradients to rounding."""
    g = torch.Generator().manual_seed(5)
    T, B, H = 7, 11, 37
    xw = torch.randn(T, B, cell.GATES * H, generator=g, dtype=F64) * 3
    xw[0, 0] = torch.linspace(-1000, 1000, cell.GATES * H, dtype=F64)
    state = torch.randn(B, cell.NUM_STATES, H, generator=g, dtype=F64)
    dh = torch.randn(T, B, H, generator=g, dtype=F64)
    reference = layer_run(cell, F64, xw, state, dh, (cell.forward, cell.backward))
    runs = {}
    for n, blocks in ((1, 1), (3, 3)):
        threads(n)
        kernel_calls.clear()
        runs[n] = layer_run(cell, torch.float32, xw, state, dh, fast.WINDOWS[cell])
        windows = {name: count for name, count in kernel_calls.items() if "window" in name}
        assert windows == {f"{cell.__name__.rsplit('.')[-1]}_{way}_window_f32_part": blocks
                                for way in ("forward", "backward")}  # fmt: skip
        for k, expected in reference.items():
            assert (runs[n][k].double() - expected).abs().max() <= 2e-5 * max(1.0, expected.abs().max()), (n, k)
    for k in reference:
        if not k.startswith("dW") and k != "dbhn":
            assert torch.equal(runs[1][k], runs[3][k]), k


@window_kernels
@fixed_examples(60)
@given(cell=st.sampled_from([lstm, gru]), T=st.integers(1, 6), B=st.integers(1, 20), H=st.integers(1, 40),
       n=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_window_loops_at_every_shape(cell, T, B, H, n, seed, threads):
    """Any window length (one step included), any number of streams split any way, any width: the reference's
    results to float32 rounding."""
    threads(n)
    g = torch.Generator().manual_seed(seed)
    xw = torch.randn(T, B, cell.GATES * H, generator=g, dtype=F64) * 2
    state = torch.randn(B, cell.NUM_STATES, H, generator=g, dtype=F64)
    dh = torch.randn(T, B, H, generator=g, dtype=F64)
    reference = layer_run(cell, F64, xw, state, dh, (cell.forward, cell.backward))
    ours = layer_run(cell, torch.float32, xw, state, dh, fast.WINDOWS[cell])
    for k, expected in reference.items():
        assert (ours[k].double() - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max()), k


@window_kernels
@fixed_examples(40)
@given(cell=st.sampled_from([lstm, gru]), T=st.integers(1, 6), B=st.integers(1, 20), H=st.integers(1, 40),
       V=st.integers(1, 9), n=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_window_loops_gather_and_scatter_the_first_layers_rows(cell, T, B, H, V, n, seed, threads):
    """The first layer's input as rows of a table picked by characters (``fast.OneHot``): the loops gather them as
    they go and add each row's gradient into the table, and give what the float64 reference gives on the gathered
    projection, its gradient added up by character independently (index_add_), to float32 rounding; the activations
    the same bits as the loops given the projection whole. Few characters (V <= 9): most rows share a table row."""
    threads(n)
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, cell.GATES * H, generator=g, dtype=F64) * 2
    chars = torch.randint(V, (T, B), generator=g)
    state = torch.randn(B, cell.NUM_STATES, H, generator=g, dtype=F64)
    dh = torch.randn(T, B, H, generator=g, dtype=F64)
    xw = table[chars]  # (T, B, G*H)
    reference = layer_run(cell, F64, xw, state, dh, (cell.forward, cell.backward))
    whole = layer_run(cell, torch.float32, xw, state, dh, fast.WINDOWS[cell])
    one_hot = fast.OneHot(table.float(), chars)
    ours = layer_run(cell, torch.float32, one_hot, state, dh, fast.WINDOWS[cell])
    expected = torch.zeros_like(table).index_add_(0, chars.reshape(-1), reference["dxw"].reshape(T * B, -1))
    assert isinstance(ours["dxw"], fast.OneHot) and torch.equal(ours["dxw"].chars, chars)
    assert (ours["dxw"].table.double() - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
    for k in ("h", "gates", "state"):
        assert torch.equal(ours[k], whole[k]), k
        assert (ours[k].double() - reference[k]).abs().max() <= 1e-5 * max(1.0, reference[k].abs().max()), k


@window_kernels
def test_gru_window_loop_propagates_nan(threads):
    """A NaN pre-activation reaches the GRU's state and gradients (the divergence guard looks for it there)."""
    threads(2)
    T, B, H = 3, 2, 21
    xw, state, dh = torch.zeros(T, B, 3 * H, dtype=F64), torch.zeros(B, 1, H, dtype=F64), torch.ones(T, B, H, dtype=F64)
    xw[1, 0, 5] = float("nan")
    out = layer_run(gru, torch.float32, xw, state, dh, fast.GRU_WINDOWS)
    assert out["state"][0].isnan().any() and not out["state"][1].isnan().any()
    assert out["dWhh"].isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_products_in_blocks_of_rows_equal_whole_ones(dtype, threads):
    """A window's products on 3 threads (rows in blocks; oneDNN's in float32, torch's in float64) against the same
    products on one thread and against float64: ``x W^T + b (+ add)`` and ``D^T X``."""
    g = torch.Generator().manual_seed(2)
    rows = 6 * parallel.SPLIT_ROWS + 5  # a block per thread on three
    x, W, b = (torch.randn(*shape, generator=g, dtype=F64) for shape in ((rows, 40), (70, 40), (70,)))
    add, D = torch.randn(rows, 70, generator=g, dtype=F64), torch.randn(rows, 30, generator=g, dtype=F64)
    exact = {"product": x @ W.t() + b + add, "gradient": D.t() @ x}
    results = {}
    for n in (1, 3):
        threads(n)
        assert len(parallel.row_blocks(rows)) == n
        assert parallel.row_blocks(rows, torch.device("meta")) == [(0, rows)]  # off the CPU: whole
        product = native.weight_product(W.to(dtype), rows, b.to(dtype))
        results[n] = {"product": product(x.to(dtype), add.to(dtype)),
                      "gradient": native.gradient_product(D.to(dtype), x.to(dtype))}  # fmt: skip
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for k, expected in exact.items():
        for n in (1, 3):
            assert results[n][k].shape == expected.shape
            assert (results[n][k].double() - expected).abs().max() <= tolerance * expected.abs().max(), (n, k)


def train_steps(cell, dtype, steps=3, L=2, B=16, T=20, H=24, V=11):
    """``(loss, params)`` after ``steps`` of network.train_step (charrnn's Adagrad) from one seed: the window's
    products in blocks of rows on more than one thread (T * B = 320 rows), the C window loops where they run."""
    g = torch.Generator().manual_seed(1)
    arch = network.Architecture(V, H, cell, L, dropout=0.1)
    params = arch.init_params(g, dtype)
    opt = optim.Adagrad(params.values(), lr=0.05, initial_accumulator_value=0.03)
    state = arch.zero_state(B, dtype)
    for step in range(steps):
        inputs, targets = torch.randint(V, (B, T), generator=g), torch.randint(V, (B, T), generator=g)
        masks = arch.dropout_masks(3, step, 0, B, T, dtype, None)
        loss, state = network.train_step(arch, params, opt, inputs, targets, state, masks=masks)
    return loss, params


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_training_on_one_or_two_threads_is_the_same_model(cell, dtype, threads):
    """Three training steps on 1 and on 2 threads: the same loss and weights to the dtype's rounding (only the order
    of the sums over blocks of rows differs; the C window loops give each stream the same bits on any split)."""
    (loss_1, params_1), (loss_2, params_2) = (threads(n) or train_steps(cell, dtype) for n in (1, 2))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert abs(float(loss_1) - float(loss_2)) <= tolerance * abs(float(loss_1))
    for name, p in params_1.items():
        assert (params_2[name] - p).abs().max() <= tolerance * p.abs().max(), name


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_shared_or_alone_is_the_same_bits(cell, threads, monkeypatch):
    """On 2 threads the caller may run a step's parts alone (next to a busy process, ``parallel._Way``): three
    training steps with every part shared and with every part alone (the window loops and the gathers then in one
    block) give the same bits."""
    results = []
    for shared in (True, False):
        threads(2)
        monkeypatch.setattr(parallel._way, "next", lambda shared=shared: shared)
        results.append(train_steps(cell, torch.float32))
    (loss_shared, params_shared), (loss_alone, params_alone) = results
    assert torch.equal(loss_shared, loss_alone)
    for name, p in params_shared.items():
        assert torch.equal(params_alone[name], p), name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resumes_across_a_change_of_thread_count(cell, tmp_path, threads):
    """train.py to step 12 on 2 threads, against to step 6 on 2 threads and resumed to 12 on 1: the same weights
    and Adagrad memory to float32 rounding (the sums over blocks differ in order, so bits are not compared)."""
    text = tmp_path / "input.txt"
    text.write_text(corpus(20000))
    model = ("--model.cell", cell, "--model.num_layers", 2, "--data.batch_size", 16, "--data.seq_length", 20)
    assert train(tiny_args(text, tmp_path / "whole", *model, "--threads", 2, steps=12)) == 0
    assert train(tiny_args(text, tmp_path / "split", *model, "--threads", 2, steps=6)) == 0
    resume = ("--ckpt_path", "last", "--threads", 1)
    assert train(tiny_args(text, tmp_path / "split", *model, *resume, steps=12)) == 0
    whole, split = newest(tmp_path / "whole"), newest(tmp_path / "split")
    assert whole["global_step"] == split["global_step"] == 12
    for name, p in whole["state_dict"].items():
        assert (split["state_dict"][name] - p).abs().max() <= 1e-4 * max(1.0, p.abs().max()), name
    mems = [[s["mem"] for s in ckpt["optimizer_states"][0]["state"].values()] for ckpt in (whole, split)]
    for a, b in zip(*mems):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()
