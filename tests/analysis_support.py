"""Synthetic loss surfaces L(N, D) = E + A/N^alpha + B/D^beta and isoFLOP runs on them, for the analysis tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar


@dataclass(frozen=True)
class Surface:
    """A loss surface with known compute-optimal allocation (Hoffmann et al. 2022, Eq. 2 and 4)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @property
    def params_exponent(self) -> float:
        """a in N*(C) ∝ C^a, i.e. beta / (alpha + beta); b = 1 - a for D*."""
        return self.beta / (self.alpha + self.beta)

    def optimal_params(self, budget: float) -> float:
        """N*(C) under C = 6ND, found numerically along the isoFLOP line (independent of any closed form)."""
        def loss_at(log_params: float) -> float:
            return self.loss(10.0**log_params, budget / (6.0 * 10.0**log_params))

        guess = 0.5 * np.log10(budget / 6.0)
        result = minimize_scalar(loss_at, bracket=(guess - 3.0, guess + 3.0), tol=1e-12)
        return float(10.0**result.x)

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta


CHINCHILLA = Surface(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
"""Chinchilla's fitted surface (Hoffmann et al. 2022, Eq. 10)."""


def surface_runs(surface: Surface, budgets, half_width_decades: float, n_sizes: int, noise_std: float = 0.0,
                 seed: int = 0, center_of: Callable[[float], float] | None = None, method: str = "synthetic") -> pd.DataFrame:
    """Runs on isoFLOP lines C = 6ND: ``n_sizes`` log-spaced sizes per budget around ``center_of(budget)``
    (log10 params; default the true optimum), loss from the surface plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    center_of = center_of or (lambda budget: float(np.log10(surface.optimal_params(budget))))
    rows = []
    for budget in budgets:
        center = center_of(budget)
        for log_params in np.linspace(center - half_width_decades, center + half_width_decades, n_sizes):
            params = 10.0**log_params
            tokens = budget / (6.0 * params)
            rows.append(dict(method=method, budget=budget, params=params, tokens=tokens,
                             loss=surface.loss(params, tokens) + noise_std * rng.standard_normal()))
    return pd.DataFrame(rows)
