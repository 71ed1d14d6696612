"""Diagnostics of the sampling grid: is each budget's optimum near the middle of its sampled sizes?

Approach 2 replaces each isoFLOP curve by a parabola in log size. The curve is
not a parabola (on a Chinchilla surface it is a sum of two exponentials in log
N, asymmetric when alpha != beta), so the fitted vertex moves when the sizes
are not centred on the optimum, and more so on wide grids (Open-Athena,
"Problems with Chinchilla Approach 2", 2025). A vertex moving by a different
amount at each budget bends the power law, which biases its exponent.

The diagnostic is the vertex position in the sampled log10 range (0 = the
smallest size, 1 = the largest; :attr:`analysis.records.ParabolaFit.vertex_position`).
A position in the outer :data:`OFF_CENTRE_MARGIN` on either side gets a
warning. On the Chinchilla surface with 9 sizes over +-0.75 decades, moving the
vertex from the middle to 0.15 of the range moves the fitted N* by about 0.01
decades (2%) when alpha = beta and 0.03 decades (7%) when alpha = 0.4,
beta = 0.2 (tests/test_analysis_vpnls.py measures the effect on exponents).
"""

from __future__ import annotations

from analysis.formatting import budget_text
from analysis.records import Optimum

OFF_CENTRE_MARGIN = 0.25
"""Vertex positions below this fraction of the sampled log-range, or above 1 minus it, are off-centre."""


def off_centre_warnings(optima: list[Optimum]) -> list[str]:
    """One warning per (group, budget) whose located N* lies in the outer quarter of its sampled sizes."""
    warnings = []
    for optimum in optima:
        fit = optimum.params_fit
        position = fit.vertex_position
        if fit.status != "ok" or position is None or OFF_CENTRE_MARGIN <= position <= 1.0 - OFF_CENTRE_MARGIN:
            continue
        side = "smaller" if position < 0.5 else "larger"
        warnings.append(f"{optimum.group} at C={budget_text(optimum.budget)}: N* sits at {position:.0%} of the sampled "
                        f"log-size range, off-centre, where approach 2's parabola is biased; add {side} sizes "
                        "around the optimum, or compare with --approach3")
    return warnings
