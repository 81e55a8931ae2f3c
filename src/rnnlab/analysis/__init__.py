"""See vanishing and exploding gradients: exact measurements, plots and experiments.

Seeds 000 (eqs. 10-14), 002 (figures 5, 6) and 004 (Pascanu et al. 2013) explain why
recurrent networks are hard to train; this package measures it on any rnnlab layer or
model, exactly (autograd on an unrolled float64 copy, no estimates):

* :func:`gradient_norms_through_time` -- ||dE/dh_k|| for every step k and layer, for a
  loss at the last step or the summed loss, with the fitted per-step log-rate;
  :func:`gradient_heatmap` -- ||dE_t/dh_k|| over (t, k).
* :func:`step_jacobians`, :func:`jacobian_products` -- ds_t/ds_k as products of exact step
  Jacobians, their singular values against the lag t - k.
* :func:`recurrent_spectra`, :func:`power_method` -- eigenvalues and spectral radius of
  W_hh (per gate block), and h_t = (W^t)^T h_0 measured.
* :func:`snapshot` -- the numbers above as one flat dict, for a training monitor.
* :func:`diagnose` -- all of it for one model, with plots and JSON (``rnnlab diagnose``).
* :mod:`rnnlab.analysis.surface` -- the one-unit network's error surface (seed 004).
* :mod:`rnnlab.analysis.plots` -- the figures; :mod:`rnnlab.analysis.reports` -- the
  experiments (``rnnlab diagnose report NAME``).
"""

from rnnlab.analysis.diagnosis import Diagnosis, diagnose
from rnnlab.analysis.gradients import (
    GradientFlow,
    fit_log_rate,
    fraction_vanished,
    gradient_heatmap,
    gradient_norms_through_time,
)
from rnnlab.analysis.jacobians import (
    JacobianProducts,
    jacobian_products,
    state_jacobian,
    step_jacobians,
)
from rnnlab.analysis.monitor import snapshot
from rnnlab.analysis.spectra import PowerIteration, Spectrum, power_method, recurrent_spectra
from rnnlab.analysis.surface import error_surface, gradient_descent, one_unit_error
from rnnlab.analysis.unroll import linear_readout, unroll

__all__ = [
    "Diagnosis",
    "GradientFlow",
    "JacobianProducts",
    "PowerIteration",
    "Spectrum",
    "diagnose",
    "error_surface",
    "fit_log_rate",
    "fraction_vanished",
    "gradient_descent",
    "gradient_heatmap",
    "gradient_norms_through_time",
    "jacobian_products",
    "linear_readout",
    "one_unit_error",
    "power_method",
    "recurrent_spectra",
    "snapshot",
    "state_jacobian",
    "step_jacobians",
    "unroll",
]
