"""rnnlab.analysis: exact gradient flow, Jacobians, spectra, the one-unit surface, plots,
the training monitor, the reports and ``rnnlab diagnose``.

The exactness tests rebuild every network here, gate by gate, as an explicitly unrolled
autograd graph (no rnnlab cell code), and compare."""

from __future__ import annotations

import doctest
import importlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import rnnlab
from rnnlab.analysis import (
    gradient_heatmap,
    gradient_norms_through_time,
    jacobian_products,
    plots,
    power_method,
    recurrent_spectra,
    reports,
    snapshot,
    step_jacobians,
)
from rnnlab.analysis.surface import (
    error_surface,
    gradient_descent,
    one_unit_error,
    one_unit_gradient,
)
from rnnlab.analysis.unroll import linear_readout
from rnnlab.cli.main import main
from rnnlab.init import spectral_radius
from rnnlab.models import LanguageModel, ModelConfig

ACT = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These graphs are many tiny operations, fastest on one thread (and kinder to a shared
    machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- an independent, explicitly unrolled graph ---------------------------------------------


def naive_step(layer, p, x, state):
    """One step written out gate by gate from the equations (not rnnlab's cell code)."""
    W, U, b = p["weight_ih"], p["weight_hh"], p["bias_ih"] + p["bias_hh"]
    if isinstance(layer, rnnlab.RNN):
        h = ACT[layer.nonlinearity](x @ W.T + state[0] @ U.T + b)
        return h, (h,)
    if isinstance(layer, rnnlab.LSTM):
        h, c = state
        z = x @ W.T + h @ U.T + b
        H = h.shape[1]
        i, f = torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H : 2 * H])
        g, o = torch.tanh(z[:, 2 * H : 3 * H]), torch.sigmoid(z[:, 3 * H :])
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, (h, c)
    h = state[0]
    H = h.shape[1]
    a = x @ W.T + p["bias_ih"]
    Wr, Wz, Wn = U[:H], U[H : 2 * H], U[2 * H :]
    br, bz, bn = p["bias_hh"][:H], p["bias_hh"][H : 2 * H], p["bias_hh"][2 * H :]
    r = torch.sigmoid(a[:, :H] + h @ Wr.T + br)
    z = torch.sigmoid(a[:, H : 2 * H] + h @ Wz.T + bz)
    if layer.form == "torch":
        n = torch.tanh(a[:, 2 * H :] + r * (h @ Wn.T + bn))
    else:
        n = torch.tanh(a[:, 2 * H :] + (r * h) @ Wn.T + bn)
    h = (1 - z) * n + z * h
    return h, (h,)


def explicit_gradients(layer, x, loss):
    """Norms ||dE/dh_k|| per direction name, E from the fixed linear readout of rnnlab."""
    x = x.double()
    T, N = x.shape[:2]
    sizes = layer.state_sizes()
    nodes, result = {}, {}
    inp = x
    for i in range(layer.num_layers):
        outs = []
        for suffix in layer.suffixes:
            p = {k: v.detach().double() for k, v in layer.direction_parameters(i, suffix).items()}
            state = tuple(torch.zeros(N, s, dtype=torch.float64, requires_grad=True) for s in sizes)
            hs, ys = [state[0]], []
            seq = inp if suffix == "" else inp.flip(0)
            for t in range(T):
                y, state = naive_step(layer, p, seq[t], state)
                hs.append(state[0])
                ys.append(y)
            out = torch.stack(ys)
            outs.append(out if suffix == "" else out.flip(0))
            nodes[f"l{i}{suffix}"] = hs
        inp = torch.cat(outs, 2)
    v = linear_readout(inp.shape[2])
    E = v(inp[-1], T - 1) if loss == "last" else sum(v(inp[t], t) for t in range(T))
    flat = [h for hs in nodes.values() for h in hs]
    grads = torch.autograd.grad(E, flat, allow_unused=True)
    start = 0
    for name, hs in nodes.items():
        g = grads[start : start + len(hs)]
        result[name] = np.array([0.0 if x is None else float(x.norm()) for x in g])
        start += len(hs)
    return result


LAYERS = {
    "rnn-tanh": lambda: rnnlab.RNN(4, 6, num_layers=2),
    "rnn-sigmoid": lambda: rnnlab.RNN(4, 6, num_layers=2, nonlinearity="sigmoid"),
    "rnn-relu": lambda: rnnlab.RNN(4, 6, num_layers=2, nonlinearity="relu"),
    "lstm": lambda: rnnlab.LSTM(4, 5, num_layers=2),
    "gru-torch": lambda: rnnlab.GRU(4, 5, num_layers=2),
    "gru-cho": lambda: rnnlab.GRU(4, 5, form="cho"),
    "gru-bidirectional": lambda: rnnlab.GRU(4, 5, bidirectional=True),
}


@pytest.mark.parametrize("loss", ["last", "sum"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradient_norms_equal_autograd_on_an_explicit_unrolled_graph(kind, loss):
    torch.manual_seed(1)
    layer = LAYERS[kind]()
    x = torch.randn(9, 3, 4)
    flow = gradient_norms_through_time(layer, x, loss=loss)
    expected = explicit_gradients(layer, x, loss)
    assert list(flow.norms) == list(expected)
    for name, norms in expected.items():
        assert flow.norms[name].shape == (10,)
        np.testing.assert_allclose(flow.norms[name], norms, rtol=1e-10, atol=1e-300)
    if loss == "last":
        assert flow.norms["l0"][-1] > 0 and math.isfinite(flow.log_rate["l0"])


def test_batch_first_input_and_the_summaries():
    torch.manual_seed(2)
    layer = rnnlab.RNN(3, 8, batch_first=True)
    x = torch.randn(2, 20, 3)
    flow = gradient_norms_through_time(layer, x)
    assert flow.steps == 20
    ref = explicit_gradients(layer, x.transpose(0, 1), "last")  # the same, time-major
    np.testing.assert_allclose(flow.norms["l0"], ref["l0"], rtol=1e-10)
    n = flow.norms["l0"]
    assert flow.ratio["l0"] == pytest.approx(n[0] / n[-1])
    assert flow.fraction_vanished["l0"] == pytest.approx(np.mean(n[:-1] < 1e-6 * n[-1]))
    slope = np.polyfit(np.arange(20, -1, -1), np.log(n), 1)[0]
    assert flow.log_rate["l0"] == pytest.approx(slope)
    assert json.loads(json.dumps(flow.to_json()))["steps"] == 20


def test_language_model_gradient_at_h0_equals_the_fused_models_own():
    """dE/dh_0 of the summed loss = T x the gradient of the model's mean loss (computed by
    the fused hand-derived BPTT) with respect to the initial state."""
    torch.manual_seed(3)
    model = LanguageModel(ModelConfig(vocab_size=7, hidden_size=6, num_layers=2, embedding_dim=5))
    model = model.double()
    idx = torch.randint(7, (3, 12))
    targets = torch.randint(7, (3, 12))
    flow = gradient_norms_through_time(model, idx, targets, loss="sum")
    h0 = torch.zeros(2, 3, 6, dtype=torch.float64, requires_grad=True)
    c0 = torch.zeros(2, 3, 6, dtype=torch.float64, requires_grad=True)
    _, loss, _ = model(idx, (h0, c0), targets)
    (g,) = torch.autograd.grad(loss, h0)
    for layer in range(2):
        assert flow.norms[f"l{layer}"][0] == pytest.approx(12 * float(g[layer].norm()), rel=1e-9)


def test_heatmap_rows_are_the_per_step_losses():
    torch.manual_seed(4)
    layer = rnnlab.LSTM(3, 4)
    x = torch.randn(8, 2, 3)
    heat = gradient_heatmap(layer, x)["l0"]
    assert heat.shape == (8, 9)
    assert np.isnan(heat[0, 2:]).all() and not np.isnan(heat[0, :2]).any()
    last = gradient_norms_through_time(layer, x, loss="last").norms["l0"]
    np.testing.assert_allclose(heat[-1], last, rtol=1e-10)
    # Column sums do not give the summed loss (norms do not add), but each row is exact:
    first3 = explicit_gradients_at(layer, x, t=3)
    np.testing.assert_allclose(heat[2, :4], first3, rtol=1e-10)


def explicit_gradients_at(layer, x, t):
    """||dE_t/dh_k|| for k = 0..t, with E_t the readout at step t (1-based)."""
    short = explicit_gradients(layer, x[:t], "last")
    return short["l0"]


def test_step_jacobian_is_diag_phi_prime_times_w_hh():
    """Seed 000 eq. 12: dh_t/dh_(t-1) = diag(phi'(a_t)) W_hh for the Elman cell."""
    torch.manual_seed(5)
    layer = rnnlab.RNN(3, 5)
    x = torch.randn(6, 2, 3)
    J = step_jacobians(layer, x)
    w_ih, w_hh, b_ih, b_hh = (p.detach().double() for p in layer.layer_parameters(0))
    h = torch.zeros(2, 5, dtype=torch.float64)
    for t in range(6):
        a = x[t].double() @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        h = torch.tanh(a)
        expected = (1 - h**2).unsqueeze(2) * w_hh  # diag(phi') W, for each sequence
        torch.testing.assert_close(J[t], expected, rtol=1e-12, atol=1e-14)


def test_jacobian_product_carries_the_gradient_back_for_the_lstm():
    """(dE/ds_T) J_T ... J_1 = dE/ds_0 with s = [h; c], against autograd."""
    torch.manual_seed(6)
    layer = rnnlab.LSTM(2, 4)
    x = torch.randn(7, 1, 2)
    J = step_jacobians(layer, x)[:, 0]  # (T, 8, 8)
    v = linear_readout(4)
    h0 = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    p = {k: w.detach().double() for k, w in layer.direction_parameters(0).items()}
    state = (h0, c0)
    for t in range(7):
        _, state = naive_step(layer, p, x[t].double(), state)
    hT = state[0]
    gh0, gc0 = torch.autograd.grad(v(hT, 6), [h0, c0])
    g = torch.cat([_readout_gradient(v, 4), torch.zeros(4, dtype=torch.float64)])  # dE/ds_T
    for t in range(6, -1, -1):
        g = g @ J[t]
    torch.testing.assert_close(g, torch.cat([gh0[0], gc0[0]]), rtol=1e-10, atol=1e-14)
    jp = jacobian_products(layer, x)
    product = torch.eye(8, dtype=torch.float64)
    for t in range(6, -1, -1):
        product = product @ J[t]
    s = torch.linalg.svdvals(product)
    np.testing.assert_allclose(jp.singular_values[-1], s[:3].numpy(), rtol=1e-10)
    assert jp.lags.tolist() == list(range(1, 8))


def _readout_gradient(v, size):
    y = torch.zeros(1, size, dtype=torch.float64, requires_grad=True)
    return torch.autograd.grad(v(y, 0), y)[0][0]


@pytest.mark.parametrize("rho", [0.8, 1.25])
def test_linear_rnn_growth_rate_is_log_spectral_radius(rho):
    """A ReLU network whose states stay positive is linear: h_t = W h_(t-1).  With a known
    positive W of spectral radius rho, the measured per-step log-rate of ||dE/dh_k||, of
    the Jacobian product and of the power method all equal ln rho within 1%."""
    torch.manual_seed(7)
    H, T = 16, 150
    w = torch.rand(H, H, dtype=torch.float64) + 0.1
    w = w * (rho / spectral_radius(w))
    layer = rnnlab.RNN(1, H, nonlinearity="relu", dtype=torch.float64)
    with torch.no_grad():
        layer.weight_hh_l0.copy_(w)
        layer.weight_ih_l0.zero_()
        layer.bias_ih_l0.zero_()
        layer.bias_hh_l0.zero_()
    x = torch.zeros(T, 2, 1, dtype=torch.float64)
    h0 = torch.rand(1, 2, H, dtype=torch.float64) + 0.5
    flow = gradient_norms_through_time(layer, x, state=h0)
    assert flow.log_rate["l0"] == pytest.approx(math.log(rho), rel=0.01)
    jp = jacobian_products(layer, x, state=h0)
    assert jp.log_rate == pytest.approx(math.log(rho), rel=0.01)
    pm = power_method(w, steps=100)
    assert pm.growth == pytest.approx(rho, rel=0.01) and pm.radius == pytest.approx(rho)
    assert pm.alignment[-1] > 0.999


def test_spectra_per_gate_block():
    torch.manual_seed(8)
    lstm = rnnlab.LSTM(3, 5, num_layers=2, bidirectional=True)
    spectra = recurrent_spectra(lstm)
    names = [s.name for s in spectra]
    assert names[:5] == ["l0.i", "l0.f", "l0.g", "l0.o", "l0_reverse.i"] and len(names) == 16
    block = lstm.weight_hh_l1_reverse[5:10]  # l1_reverse.f
    assert spectra[13].radius == pytest.approx(spectral_radius(block))
    assert spectra[13].norm >= spectra[13].radius
    assert [s.name for s in recurrent_spectra(rnnlab.GRU(2, 3))] == ["l0.r", "l0.z", "l0.n"]


def test_snapshot_is_flat_json_and_leaves_the_model_alone():
    torch.manual_seed(9)
    model = LanguageModel(ModelConfig(vocab_size=9, cell="gru", hidden_size=8, num_layers=2))
    model.train()
    idx = torch.randint(9, (12, 16))
    record = snapshot(model, (idx, idx.roll(-1, 1)), max_sequences=4)
    json.dumps(record)
    assert set(record) >= {
        "spectral_radius.l0.r",
        "spectral_radius.l1.n",
        "grad_log_rate.l0",
        "grad_ratio.l1",
        "fraction_vanished.l1",
    }
    assert model.training and all(p.grad is None for p in model.parameters())
    layer = rnnlab.RNN(3, 4, batch_first=True)
    with torch.no_grad():  # the trainer may call it anywhere
        record = snapshot(layer, torch.randn(5, 10, 3))
    assert record["grad_log_rate.l0"] < 0 and "spectral_radius.l0" in record


def test_one_unit_surface_gradient_and_the_wall():
    e, g = one_unit_gradient(5.0, -2.0)
    eps = 1e-6
    fd = [
        (
            float(
                one_unit_error(
                    torch.tensor(5.0 + eps, dtype=torch.float64),
                    torch.tensor(-2.0, dtype=torch.float64),
                )
            )
            - e
        )
        / eps,
        (
            float(
                one_unit_error(
                    torch.tensor(5.0, dtype=torch.float64),
                    torch.tensor(-2.0 + eps, dtype=torch.float64),
                )
            )
            - e
        )
        / eps,
    ]
    np.testing.assert_allclose(g, fd, rtol=1e-4)
    free, clipped = gradient_descent(), gradient_descent(clip=1.0)
    assert free.largest_step > 10 * clipped.largest_step
    assert clipped.errors[-1] < 1e-3 < free.errors[-1]
    assert np.allclose(free.points[0], clipped.points[0])


def check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_have_titles_labels_and_legends(tmp_path):
    torch.manual_seed(10)
    rnn, lstm = rnnlab.RNN(2, 6), rnnlab.LSTM(2, 6)
    x = torch.randn(15, 2, 2)
    flows = {
        "Elman": gradient_norms_through_time(rnn, x),
        "LSTM": gradient_norms_through_time(lstm, x),
    }
    surface = error_surface(resolution=40)
    runs = {
        "no clipping": gradient_descent(updates=30),
        "clipped": gradient_descent(updates=30, clip=1.0),
    }
    figures = {
        "flow": plots.plot_gradient_norms({"init": flows}, tmp_path / "a.png", "Flow title"),
        "surface": plots.plot_error_surface(surface, runs, tmp_path / "b.png"),
        "act": plots.plot_activation_derivatives(tmp_path / "c.png"),
        "eig": plots.plot_eigenvalues(
            {"before": recurrent_spectra(rnn)[0]}, tmp_path / "d.png", "Eig title"
        ),
        "heat": plots.plot_heatmap(gradient_heatmap(rnn, x)["l0"], tmp_path / "e.png", "Heat"),
        "jac": plots.plot_jacobian_products(
            {"Elman": jacobian_products(rnn, x)}, tmp_path / "f.png", "Jac title"
        ),
        "power": plots.plot_power_method(
            {"W": power_method(rnn.weight_hh_l0)}, tmp_path / "g.png", "Power title"
        ),
        "train": plots.plot_training_curves(
            {"a": {"run": [1.0, float("nan"), 0.5]}}, tmp_path / "h.png", "Train title"
        ),
    }
    for png in "abcdefgh":
        check_png(tmp_path / f"{png}.png")
    titles = {
        k: (f._suptitle.get_text() if f._suptitle else "")
        + " ".join(ax.get_title() for ax in f.axes)
        for k, f in figures.items()
    }
    assert "Flow title" in titles["flow"] and "Pascanu" in titles["surface"]
    assert "figure 5" in titles["act"] and "figure 6" in titles["act"]
    assert "Eig title" in titles["eig"] and "Heat" in titles["heat"]
    assert "Jac title" in titles["jac"] and "Power title" in titles["power"]
    for name, fig in figures.items():
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_legend() is not None, (name, ax.get_title())


def test_a_line_that_would_hide_another_is_dashed_and_named(tmp_path):
    """Two runs with the same curve (clipping that never fired) would draw one line over
    the other; the second is dashed and its label names its twin.  Different curves keep
    their solid lines and plain labels."""
    from rnnlab.analysis import plots

    same = [2.0, 1.5, 1.2, 1.0]
    fig = plots.plot_training_curves(
        {"loss": {"no clipping": same, "clipped": list(same), "other": [2.0, 1.9, 1.7, 1.6]}},
        tmp_path / "t.png",
        "Twins",
    )
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["no clipping"].get_linestyle() == "-"
    twin = lines["clipped (the same as no clipping)"]
    assert twin.get_linestyle() == "--"
    assert lines["other"].get_linestyle() == "-"
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "clipped (the same as no clipping)" in legend
    flow = plots.plot_gradient_norms(
        {"init": {"a": ([0, 1, 2], [1.0, 0.5, 0.25]), "b": ([0, 1, 2], [1.0, 0.5, 0.25])}},
        tmp_path / "f.png",
        "Flow",
    )
    labels = [line.get_label() for line in flow.axes[0].get_lines()]
    assert labels == ["a", "b (the same as a)"]


def test_plots_work_headless_without_pyplot(tmp_path):
    code = (
        "import sys, torch, rnnlab\n"
        "from rnnlab.analysis import plots\n"
        "plots.plot_activation_derivatives(sys.argv[1])\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.png")], check=True, env=env)
    check_png(tmp_path / "x.png")


def test_reports_run_small(tmp_path):
    small = dict(progress=False, hidden=6, batch=4, updates=3, train_length=6, seeds=2)
    r = reports.vanishing(tmp_path / "v", lengths=(4, 8), cells=("Elman tanh", "GRU"), **small)
    assert "Elman tanh" in r.markdown() and "T = 8" in r.markdown()
    r = reports.exploding(tmp_path / "e", radii=(0.9, 1.5), lengths=(8,), surface=False, **small)
    assert r.markdown().count("clipped to norm 1.0") >= 2  # the surface: test_diagnose_surface
    r = reports.penalties(tmp_path / "p", measure_length=10, **small)
    assert "L2 1e-3" in r.markdown() and "L1 1e-4" in r.markdown()
    r = reports.regulariser(tmp_path / "r", measure_length=10, alphas=(0, 1), **small)
    assert "Ω at the end" in r.markdown()
    for name in "vepr":
        data = json.loads((tmp_path / name / "report.json").read_text())
        assert data["tables"] and all((tmp_path / name / f).exists() for f in ("report.md",))
        for f in data["files"]:
            if f.endswith(".png"):
                check_png(tmp_path / name / f.split("/")[-1])
        # Every trained configuration: both seeds' runs, in order, and what they agree on.
        assert data["data"]["seeds"] == [0, 1] and data["data"]["backend"] == "fused"
        trained = data["data"]["training"]
        assert trained
        for config in trained.values():
            assert [run["seed"] for run in config["runs"]] == [0, 1]
            accuracies = [run["accuracy"] for run in config["runs"]]
            assert config["accuracies"] == accuracies
            learnt = sum(a >= reports.LEARNT for a in accuracies)
            assert config["learnt"] == f"{learnt}/2"
            assert config["median"]["accuracy"] == pytest.approx(sum(accuracies) / 2)
            assert all(len(run["losses"]) == 3 for run in config["runs"])
        rows = data["tables"][-1]["rows"]  # the trained runs (no surface here)
        for row in rows:
            assert row["learnt"].endswith("/2") and row["accuracy per seed"].count(" / ") == 1
    # The two seeds are two different runs (own weights and batches), not copies.
    tanh = json.loads((tmp_path / "v" / "report.json").read_text())["data"]["training"]
    first, second = tanh["Elman tanh"]["runs"]
    assert first["losses"] != second["losses"]


def test_reports_pin_the_backend_and_check_the_seed_count(tmp_path):
    from rnnlab.analysis.tasks import BACKEND, make_recaller

    assert BACKEND == "fused"
    for cell in ("Elman tanh", "LSTM", "GRU"):
        assert make_recaller(cell, 4).rnn.backend == "fused"
    assert make_recaller("GRU", 4, backend="reference").rnn.backend == "reference"
    assert reports.seed_list(5, 3) == [5, 6, 7]
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seeds must be a positive integer"):
            reports.seed_list(0, bad)
    with pytest.raises(ValueError, match="seeds"):  # before any report runs
        next(reports.run_reports(["vanishing"], tmp_path, seeds=0))
    assert not any(tmp_path.iterdir())


def test_report_medians_of_ratios_are_taken_on_a_log_scale():
    assert reports._median([1e-30, 1.0]) == pytest.approx(0.5)
    assert reports._median([1e-30, 1.0], log=True) == pytest.approx(1e-15)
    assert reports._median([0.0, 1e-3, 1.0], log=True) == pytest.approx(1e-3)
    assert math.isnan(reports._median([float("nan")]))


# -- the command -------------------------------------------------------------------------------


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


SMALL = ["--hidden", "8", "--layers", "1", "--length", "12", "--batch", "2"]


def test_diagnose_a_fresh_model_writes_plots_and_json(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "diagnose", "--cell", "gru", *SMALL, "--out", tmp_path)
    assert code == 0
    assert "| l0 |" in out and "spectral radius" in out and "vanished" in out
    data = json.loads((tmp_path / "diagnosis.json").read_text())
    assert data["gradient_norms_last"]["steps"] == 12
    for name in ("gradient_norms", "heatmap", "jacobians", "eigenvalues", "power_method"):
        check_png(tmp_path / f"{name}.png")


def test_diagnose_a_checkpoint(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 40, encoding="utf-8")
    run = tmp_path / "run"
    code, _, _ = run_cli(
        capsys,
        "train",
        "--data",
        text,
        "--cell",
        "rnn",
        "--hidden",
        "8",
        "--layers",
        "1",
        "--embedding",
        "4",
        "--batch-size",
        "4",
        "--seq-len",
        "8",
        "--max-steps",
        "2",
        "--eval-interval",
        "2",
        "--sample-length",
        "0",
        "--no-progress",
        "--out",
        run,
    )
    assert code == 0
    code, out, _ = run_cli(capsys, "diagnose", run, "--length", "10", "--out", tmp_path / "d")
    assert code == 0 and "run (rnn" in out
    assert (tmp_path / "d" / "diagnosis.json").exists()
    code, _, err = run_cli(capsys, "diagnose", run, "--cell", "lstm")
    one_line_error(code, err, "--cell")


def test_diagnose_surface(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "diagnose", "surface", "--out", tmp_path)
    assert code == 0 and "clipped to norm 1.0" in out
    check_png(tmp_path / "surface.png")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["diagnose", "no/such/run"], "checkpoint not found"),
        (["diagnose", "--length", "0"], "--length"),
        (["diagnose", "--length", "-3"], "--length"),
        (["diagnose", "report", "nonsense"], "vanishing, exploding"),
        (["diagnose", "report"], "needs a report name"),
        (["diagnose", "surface", "extra"], "no further argument"),
        # options the chosen form would ignore are refused, not ignored
        (["diagnose", "surface", "--cell", "gru", "--length", "7"], "--cell, --length: 'diag"),
        (["diagnose", "report", "vanishing", "--hidden", "8"], "trains its own configurations"),
        (["diagnose", "--seeds", "2"], "--seeds applies to 'diagnose report' only"),
        (["diagnose", "--cell", "gru", "--nonlinearity", "relu"], "--cell gru has its own gates"),
    ],
)
def test_diagnose_bad_input_is_one_line(argv, fragment, capsys):
    code, _, err = run_cli(capsys, *argv)
    one_line_error(code, err, fragment)


@pytest.mark.parametrize(
    "name",
    [
        "rnnlab.analysis.gradients",
        "rnnlab.analysis.jacobians",
        "rnnlab.analysis.spectra",
        "rnnlab.analysis.surface",
    ],
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
