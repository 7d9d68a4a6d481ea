"""The one-layer tanh RNN's hand-written BPTT (network.py, the default model) against min-char-rnn's forward written
with torch.autograd and against finite differences, in float64. Every cell and depth: tests/test_cells.py."""

import pytest
import torch

from charrnn import network

SHAPES = [  # (B, T, H, V)
    (1, 25, 100, 65),
    (1, 1, 3, 2),
    (4, 7, 13, 11),
    (3, 10, 8, 30),
]


def make_case(B, T, H, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = network.Architecture(V, H).init_params(generator=g, dtype=torch.float64)
    # Larger than the 0.01 init so tanh saturates a little and every term of the gradient matters.
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
    inputs = torch.randint(V, (B, T), generator=g)
    targets = torch.randint(V, (B, T), generator=g)
    h0 = 0.5 * torch.randn(B, 1, H, generator=g, dtype=torch.float64)  # a carried, non-zero state
    return params, inputs, targets, h0


def loss_and_grads(params, inputs, targets, h0):
    return network.loss_and_grads(network.Architecture(*params["Why"].shape), params, inputs, targets, h0)


def reference_loss(params, inputs, targets, h0):
    """min-char-rnn's forward written step by step with autograd ops: loss summed over time, mean over streams."""
    h, loss = h0[:, 0], 0.0
    for t in range(inputs.shape[1]):
        h = torch.tanh(params["Wxh"][:, inputs[:, t]].t() + h @ params["Whh"].t() + params["bh"].t())
        logits = h @ params["Why"].t() + params["by"].t()
        loss = loss + torch.nn.functional.cross_entropy(logits, targets[:, t], reduction="sum")
    return loss, h


@pytest.mark.parametrize("B,T,H,V", SHAPES)
def test_gradients_equal_autograd(B, T, H, V):
    params, inputs, targets, h0 = make_case(B, T, H, V)
    loss, grads, h_last = loss_and_grads(params, inputs, targets, h0)

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    ref_loss, ref_h = reference_loss(leaves, inputs, targets, h0)
    (ref_loss / B).backward()

    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(h_last[:, 0], ref_h.detach(), rtol=1e-10, atol=1e-12)
    for name in params:
        expected = leaves[name].grad
        assert grads[name].shape == expected.shape
        rel = (grads[name] - expected).abs().max() / expected.abs().max()
        assert rel < 1e-10, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize("B,T,H,V", [(1, 6, 5, 4), (3, 4, 6, 5)])
def test_gradients_equal_finite_differences(B, T, H, V):
    params, inputs, targets, h0 = make_case(B, T, H, V, seed=1)
    _, grads, _ = loss_and_grads(params, inputs, targets, h0)
    eps = 1e-6
    for name in params:
        flat = params[name].view(-1)
        for i in range(flat.numel()):  # every entry: the models are tiny
            saved = flat[i].item()
            flat[i] = saved + eps
            plus = loss_and_grads(params, inputs, targets, h0)[0] / B
            flat[i] = saved - eps
            minus = loss_and_grads(params, inputs, targets, h0)[0] / B
            flat[i] = saved
            numeric = (plus - minus).item() / (2 * eps)
            analytic = grads[name].reshape(-1)[i].item()
            assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), f"{name}[{i}]: {analytic} vs {numeric}"


def test_forward_pass_matches_loss_path():
    params, inputs, targets, h0 = make_case(2, 9, 7, 6, seed=2)
    arch = network.Architecture(6, 7)
    logits, state, [acts] = network.forward(arch, params, inputs, h0)
    loss, _, h_last = loss_and_grads(params, inputs, targets, h0)
    hs = acts["h"]
    assert hs.shape == (10, 2, 7) and logits.shape == (2, 9, 6)
    torch.testing.assert_close(hs[0], h0[:, 0])
    assert torch.equal(state, h_last) and torch.equal(hs[-1], h_last[:, 0])
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 6), targets.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss, ref, rtol=1e-13, atol=0)
