"""Parametric loss fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3).

Two fitting methods (``isoflop analyze --approach3 --approach3-method``): ``vpnls``
(the default; :mod:`analysis.vpnls`) and ``lbfgs``, below.

``lbfgs``, as in Appendix D.2 of Hoffmann et al. (2022): with a = log A, b = log B,
e = log E, minimise over (a, b, e, alpha, beta)

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   delta = 1e-3,

with L-BFGS from a grid of initialisations: alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}. To stay fast we evaluate the
objective on the whole grid at once and start L-BFGS from the
:data:`N_STARTS` best grid points, keeping the best optimum. N is parameters,
D is training tokens, L is the loss (nats/token); natural logarithms.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from analysis.records import Approach3Fit

HUBER_DELTA = 1e-3
N_STARTS = 8
MIN_POINTS = 6
INITIAL_GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.01, 5.0),
    "b": np.arange(0.0, 25.01, 5.0),
}


def _huber(residuals: np.ndarray, delta: float) -> np.ndarray:
    absolute = np.abs(residuals)
    return np.where(absolute <= delta, 0.5 * residuals**2, delta * (absolute - 0.5 * delta))


def _terms(theta: np.ndarray, log_params: np.ndarray, log_tokens: np.ndarray) -> np.ndarray:
    """The three log-terms (..., points, 3) for parameters theta (..., 5) = [a, b, e, alpha, beta]."""
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))
    params_term = a - alpha * log_params
    return np.stack([params_term, b - beta * log_tokens, np.broadcast_to(e, params_term.shape)], axis=-1)


def objective(theta: np.ndarray, log_params: np.ndarray, log_tokens: np.ndarray, log_loss: np.ndarray,
              delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Huber objective on log loss and its gradient with respect to [a, b, e, alpha, beta]."""
    terms = _terms(theta, log_params, log_tokens)
    residuals = logsumexp(terms, axis=-1) - log_loss
    weights = softmax(terms, axis=-1)  # d LSE / d term
    slope = np.clip(residuals, -delta, delta)  # d Huber / d residual
    gradient = np.array([
        np.sum(slope * weights[:, 0]),
        np.sum(slope * weights[:, 1]),
        np.sum(slope * weights[:, 2]),
        -np.sum(slope * weights[:, 0] * log_params),
        -np.sum(slope * weights[:, 1] * log_tokens),
    ])
    return float(np.sum(_huber(residuals, delta))), gradient


def fit_approach3(group: str, params: np.ndarray, tokens: np.ndarray, loss: np.ndarray,
                  delta: float = HUBER_DELTA, n_starts: int = N_STARTS) -> Approach3Fit | None:
    """Fit the parametric loss to runs (params, tokens, loss); None when there are fewer than MIN_POINTS runs.

    Args:
        params: parameter counts N; tokens: training tokens D; loss: evaluation loss L (must be > 0).
    """
    if len(params) < MIN_POINTS:
        return None
    log_params = np.log(np.asarray(params, dtype=float))
    log_tokens = np.log(np.asarray(tokens, dtype=float))
    log_loss = np.log(np.asarray(loss, dtype=float))
    grid = np.array([
        [a, b, e, alpha, beta]
        for alpha, beta, e, a, b in itertools.product(*(INITIAL_GRID[key] for key in ("alpha", "beta", "e", "a", "b")))
    ])
    grid_residuals = logsumexp(_terms(grid, log_params, log_tokens), axis=-1) - log_loss
    grid_objective = _huber(grid_residuals, delta).sum(axis=1)
    best = None
    for start in grid[np.argsort(grid_objective)[:n_starts]]:
        result = minimize(objective, start, args=(log_params, log_tokens, log_loss, delta), jac=True, method="L-BFGS-B",
                          options={"maxiter": 3000, "ftol": 1e-15, "gtol": 1e-12})
        if best is None or result.fun < best.fun:
            best = result
    a, b, e, alpha, beta = best.x
    return Approach3Fit(group=group, E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                        beta=float(beta), objective=float(best.fun), n_points=len(params), converged=bool(best.success),
                        method="lbfgs", huber_delta=delta)


def fit_all_approach3(frame, value_column: str = "loss", group_column: str = "method",
                      method: str = "vpnls") -> list[Approach3Fit | str]:
    """Approach-3 fits per group of a tidy frame (params, tokens, value_column); a string explains a skipped group.

    ``method``: ``vpnls`` (:func:`analysis.vpnls.fit_vpnls`) or ``lbfgs`` (:func:`fit_approach3`).
    """
    from analysis.vpnls import MIN_POINTS as VPNLS_MIN_POINTS, fit_vpnls

    fit_group, needed = (fit_vpnls, VPNLS_MIN_POINTS) if method == "vpnls" else (fit_approach3, MIN_POINTS)
    results: list[Approach3Fit | str] = []
    for group, runs in frame.groupby(group_column, sort=True):
        fit = fit_group(str(group), runs["params"].to_numpy(float), runs["tokens"].to_numpy(float),
                        runs[value_column].to_numpy(float))
        results.append(fit if fit is not None else f"{group}: approach 3 needs at least {needed} runs, has {len(runs)}")
    return results
