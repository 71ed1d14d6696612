"""How numbers are written in tables, the report and figures.

Budgets are written as a reader writes them: ``6e18``, ``1e12`` in text and
``$6\\times10^{18}$``, ``$10^{12}$`` in LaTeX and figures (mathtext); counts
(experts, heads, points) as integers; other numbers with 4 significant digits.
"""

from __future__ import annotations

import math

MISSING = "–"


def _mantissa_exponent(value: float) -> tuple[str, int]:
    exponent = int(math.floor(math.log10(abs(value))))
    mantissa = f"{value / 10.0**exponent:.3g}"
    if mantissa == "10":  # 9.995e18 rounds up to the next decade
        mantissa, exponent = "1", exponent + 1
    return mantissa, exponent


def budget_text(budget: float) -> str:
    """6e18 → '6e18', 1e12 → '1e12', 3.5e19 → '3.5e19' (a number pandas and Python read back)."""
    if budget is None or not math.isfinite(budget) or budget <= 0:
        return MISSING if budget is None or math.isnan(budget) else str(budget)
    mantissa, exponent = _mantissa_exponent(budget)
    return f"{mantissa}e{exponent}"


def budget_latex(budget: float) -> str:
    """6e18 → '$6\\times10^{18}$', 1e12 → '$10^{12}$' (LaTeX and matplotlib mathtext)."""
    if budget is None or not math.isfinite(budget) or budget <= 0:
        return MISSING
    mantissa, exponent = _mantissa_exponent(budget)
    return rf"$10^{{{exponent}}}$" if mantissa == "1" else rf"${mantissa}\times10^{{{exponent}}}$"


def number_text(value: object) -> str:
    """A table cell: integers as integers, other numbers with 4 significant digits, missing as an en dash."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) == "bool":
        return str(bool(value))
    if isinstance(value, (int, float)) or hasattr(value, "dtype"):
        try:
            number = float(value)  # numpy scalars, pandas NA
        except (TypeError, ValueError):
            return MISSING
        if math.isnan(number):
            return MISSING
        if isinstance(value, int) or (hasattr(value, "dtype") and "int" in str(value.dtype)):
            return str(int(number))
        return f"{number:.4g}"
    return str(value)


def interval_text(low: float, high: float, digits: int = 3, marked: bool = False) -> str:
    """'[2.19e+08, 2.44e+08]' with ``digits`` significant digits; '†' appended when ``marked`` (unreliable)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return MISSING
    return f"[{low:.{digits}g}, {high:.{digits}g}]" + ("†" if marked else "")
