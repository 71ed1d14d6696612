"""Approach 3 by variable projection: L(N, D) = E + A/N^alpha + B/D^beta, with E, A, B >= 0.

For fixed exponents (alpha, beta) the loss is linear in (E, A, B), so the best
non-negative (E, A, B) is a non-negative least-squares problem with three
unknowns, solved exactly: the NNLS solution is the least-squares solution on
one of the 7 non-empty supports, the feasible one with the smallest residual.
What remains is a search over two exponents (variable projection, Golub &
Pereyra 1973; applied to isoFLOP data by Open-Athena's scaling-law-analysis as
"VPNLS"): a grid over alpha, beta in [GRID_LOW, GRID_HIGH], evaluated at once,
then L-BFGS-B on (alpha, beta) from the best grid point with the gradient of the
profiled objective (envelope theorem: the inner solution's own derivative drops out).

Unlike approach 2, this fits the whole surface, so off-centre sampling grids
and an asymmetric surface (alpha != beta) do not bias it. The objective is the
sum of squared residuals of the loss itself (not its logarithm). N is
parameters, D training tokens; both are divided by their geometric means
inside the fit, which keeps the design columns of order one.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize

from analysis.records import Approach3Fit

MIN_POINTS = 6
"""Runs needed for a five-parameter surface (one more than its parameters)."""
GRID_LOW, GRID_HIGH, GRID_STEP = 0.02, 2.0, 0.02
EXPONENT_BOUNDS = (1e-3, 5.0)
SUPPORTS = [support for size in (3, 2, 1) for support in itertools.combinations(range(3), size)]
GRID_CHUNK = 2048
"""Grid points evaluated per batch (bounds memory at GRID_CHUNK x points x 3 floats)."""


def _design(exponents: np.ndarray, log_params: np.ndarray, log_tokens: np.ndarray) -> np.ndarray:
    """Columns [1, N^-alpha, D^-beta] for exponent pairs (G, 2) → (G, P, 3) (N, D already scaled)."""
    alpha, beta = exponents[:, :1], exponents[:, 1:]
    return np.stack([np.ones((exponents.shape[0], log_params.size)), np.exp(-alpha * log_params),
                     np.exp(-beta * log_tokens)], axis=-1)


def profiled_nnls(design: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact non-negative least squares for each of G designs (G, P, 3): coefficients (G, 3) and RSS (G,)."""
    gram = np.einsum("gpi,gpj->gij", design, design)
    moment = np.einsum("gpi,p->gi", design, loss)
    total = float(loss @ loss)
    best_rss = np.full(design.shape[0], np.inf)
    best = np.zeros((design.shape[0], 3))
    for support in SUPPORTS:
        index = np.array(support)
        sub_gram = gram[:, index[:, None], index[None, :]]
        sub_moment = moment[:, index]
        solution = np.einsum("gij,gj->gi", np.linalg.pinv(sub_gram), sub_moment)
        rss = total - np.einsum("gi,gi->g", solution, sub_moment)  # at the least-squares solution
        feasible = np.all(solution >= 0, axis=1) & np.isfinite(rss) & (rss < best_rss)
        best_rss = np.where(feasible, rss, best_rss)
        coefficients = np.zeros_like(best)
        coefficients[:, index] = solution
        best = np.where(feasible[:, None], coefficients, best)
    return best, np.maximum(best_rss, 0.0)


def _objective(exponents: np.ndarray, log_params: np.ndarray, log_tokens: np.ndarray,
               loss: np.ndarray) -> tuple[float, np.ndarray]:
    """Profiled RSS at (alpha, beta) and its gradient (envelope theorem)."""
    design = _design(exponents[None, :], log_params, log_tokens)
    coefficients, _ = profiled_nnls(design, loss)
    residuals = loss - design[0] @ coefficients[0]
    rss = float(residuals @ residuals)
    gradient = np.array([2.0 * coefficients[0, 1] * np.sum(residuals * design[0, :, 1] * log_params),
                         2.0 * coefficients[0, 2] * np.sum(residuals * design[0, :, 2] * log_tokens)])
    return rss, gradient


def fit_vpnls(group: str, params: np.ndarray, tokens: np.ndarray, loss: np.ndarray) -> Approach3Fit | None:
    """Fit the surface to runs (params N, tokens D, loss L > 0); None with fewer than MIN_POINTS runs."""
    if len(params) < MIN_POINTS:
        return None
    log_params = np.log(np.asarray(params, dtype=float))
    log_tokens = np.log(np.asarray(tokens, dtype=float))
    loss = np.asarray(loss, dtype=float)
    params_shift, tokens_shift = float(log_params.mean()), float(log_tokens.mean())
    log_params, log_tokens = log_params - params_shift, log_tokens - tokens_shift
    axis = np.arange(GRID_LOW, GRID_HIGH + GRID_STEP / 2, GRID_STEP)
    grid = np.array(list(itertools.product(axis, axis)))
    rss = np.concatenate([profiled_nnls(_design(grid[start:start + GRID_CHUNK], log_params, log_tokens), loss)[1]
                          for start in range(0, len(grid), GRID_CHUNK)])
    start = grid[int(np.argmin(rss))]
    result = minimize(_objective, start, args=(log_params, log_tokens, loss), jac=True, method="L-BFGS-B",
                      bounds=[EXPONENT_BOUNDS, EXPONENT_BOUNDS], options={"maxiter": 500, "ftol": 1e-10, "gtol": 1e-10})
    exponents = result.x if result.fun <= rss.min() else start
    alpha, beta = (float(value) for value in exponents)
    coefficients, final_rss = profiled_nnls(_design(exponents[None, :], log_params, log_tokens), loss)
    irreducible, scaled_a, scaled_b = (float(value) for value in coefficients[0])
    at_bound = any(np.isclose(value, bound) for value in (alpha, beta) for bound in EXPONENT_BOUNDS)
    return Approach3Fit(group=group, E=irreducible, A=float(scaled_a * np.exp(alpha * params_shift)),
                        B=float(scaled_b * np.exp(beta * tokens_shift)), alpha=alpha, beta=beta, objective=float(final_rss[0]),
                        n_points=len(loss), converged=bool(result.success) and not at_bound, method="vpnls")
