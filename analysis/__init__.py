"""Analysis of isoFLOP sweeps: collect → fits → figures/tables → report.

- :mod:`analysis.collect` / :mod:`analysis.csv_input`: a tidy DataFrame, one row per run,
  from a sweep directory (run.json + result.json) or a CSV of published points.
- :mod:`analysis.fits`: parabola of the metric in log10(params) and log10(tokens) per
  (method, budget), bootstrap intervals, explicit fit status (Hoffmann et al. 2022, approach 2).
- :mod:`analysis.powerlaw`: N*(C) = G·C^a, D*(C) = H·C^b across budgets, predictions.
- :mod:`analysis.approach3`: L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3).
- :mod:`analysis.figures`, :mod:`analysis.ablations`, :mod:`analysis.tables`, :mod:`analysis.report`:
  He 2024 Figure 1 / 3 / 4 style plots, Tables 1–2, report.md.
- :mod:`analysis.command`: ``isoflop analyze``.

Importing this package is cheap: submodules load pandas, scipy and matplotlib only when imported.
"""
