"""The Pascanu regulariser against a direct autograd computation, and weight penalties."""

import pytest
import torch

import rnnlab
from rnnlab.training.regularizers import OmegaProbe, pascanu_omega, weight_penalty

T, N, I, H = 7, 3, 2, 5
ACT = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}


def unrolled(form, nonlinearity, W, W_in, b, u, s0):
    """States of an explicitly unrolled network; every state is a graph node."""
    act = ACT[nonlinearity]
    states, s = [], s0
    for t in range(T):
        if form == "elman":
            s = act(u[t] @ W_in.t() + s @ W.t() + b)
        else:
            s = act(s) @ W.t() + u[t] @ W_in.t() + b
        states.append(s)
    outputs = states if form == "elman" else [act(x) for x in states]
    return states, outputs


def direct_omega(form, nonlinearity, W, W_in, b, u, s0, target):
    """Omega from its definition: dE/ds_{k+1} by autograd through the unrolled graph, then
    the vector-Jacobian product of one step with dE/ds_{k+1} and s_k held constant."""
    root = s0.clone().requires_grad_(True)  # makes every state a node of the graph
    states, outputs = unrolled(form, nonlinearity, W.detach(), W_in, b, u, root)
    E = sum(((y - target[t]) ** 2).sum() for t, y in enumerate(outputs))
    dE = torch.autograd.grad(E, states)
    act = ACT[nonlinearity]
    omega = 0.0
    prev = [s0] + [s.detach() for s in states[:-1]]
    for k in range(T):
        s_k = prev[k].detach().requires_grad_(True)
        if form == "elman":
            a = u[k] @ W_in.t() + s_k @ W.t() + b
            # phi'(a_{k+1}) is held constant (the Elman analogue of the paper's choice)
            deriv = (1 - act(a) ** 2 if nonlinearity == "tanh" else act(a) * (1 - act(a))).detach()
            nxt = (a - a.detach()) * deriv  # linear in s_k and W, slope phi'
        else:
            deriv = 1 - act(s_k) ** 2 if nonlinearity == "tanh" else act(s_k) * (1 - act(s_k))
            nxt = (s_k * deriv.detach()) @ W.t()  # d x_{k+1}/d x_k = W diag(sigma'(x_k))
        (vjp,) = torch.autograd.grad(nxt, s_k, grad_outputs=dE[k].detach(), create_graph=True)
        ratio = vjp.norm(dim=-1) / dE[k].norm(dim=-1)
        omega = omega + ((ratio - 1) ** 2)
    return omega.mean(), outputs, E


@pytest.mark.parametrize("form", ["elman", "pascanu"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid"])
def test_omega_and_its_gradient_match_a_direct_computation(form, nonlinearity):
    torch.manual_seed(0)
    dt = torch.float64
    W = (torch.randn(H, H, dtype=dt) * 0.7).requires_grad_(True)
    W_in, b = torch.randn(H, I, dtype=dt), torch.randn(H, dtype=dt) * 0.1
    u, s0 = torch.randn(T, N, I, dtype=dt), torch.randn(N, H, dtype=dt) * 0.5
    target = torch.rand(T, N, H, dtype=dt)

    expected, _, _ = direct_omega(form, nonlinearity, W, W_in, b, u, s0, target)
    (expected_grad,) = torch.autograd.grad(expected, W)

    _, outputs = unrolled(form, nonlinearity, W.detach(), W_in, b, u, s0)
    outputs = torch.stack(outputs).requires_grad_(True)
    E = ((outputs - target) ** 2).sum()
    (direct_grads,) = torch.autograd.grad(E, outputs)
    omega = pascanu_omega(W, outputs, s0, direct_grads, form, nonlinearity)
    (grad,) = torch.autograd.grad(omega, W)
    torch.testing.assert_close(omega, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad, expected_grad, atol=1e-10, rtol=1e-10)
    assert omega > 0 and grad.abs().sum() > 0


def test_probe_captures_an_rnn_layer_in_training():
    torch.manual_seed(0)
    rnn = rnnlab.RNN(I, H, dtype=torch.float64)
    head = torch.nn.Linear(H, 1, dtype=torch.float64)
    probe = OmegaProbe(rnn, "elman")
    x = torch.randn(T, N, I, dtype=torch.float64)
    h0 = torch.randn(1, N, H, dtype=torch.float64)
    hs, _ = rnn(x[:3], h0)  # two calls, as truncated BPTT with k2 > k1 makes
    hs2, _ = rnn(x[3:], hs[-1:].clone())
    loss = head(torch.cat([hs, hs2])).pow(2).sum()
    loss.backward()
    omega = probe.omega()
    outputs = torch.cat([hs, hs2]).detach().requires_grad_(True)
    (direct,) = torch.autograd.grad(head(outputs).pow(2).sum(), outputs)
    expected = pascanu_omega(rnn.weight_hh_l0, outputs, h0[0], direct, "elman", "tanh")
    torch.testing.assert_close(omega, expected, atol=1e-12, rtol=0)
    with torch.no_grad():
        rnn(x)
    assert probe.omega() is None  # nothing recorded outside training graphs
    probe.close()
    with pytest.raises(ValueError, match="single-layer"):
        OmegaProbe(rnnlab.RNN(I, H, num_layers=2), "elman")


def test_weight_penalty_skips_biases():
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(-2.0)
        lin.bias.fill_(5.0)
    assert weight_penalty(lin.named_parameters(), l1=0.5).item() == pytest.approx(0.5 * 12)
    assert weight_penalty(lin.named_parameters(), l2=0.1).item() == pytest.approx(0.1 * 24)
    assert weight_penalty(lin.named_parameters()) == 0.0
