"""Analysis of isoFLOP sweeps: collect → fits → figures/tables → report.

- :mod:`analysis.options`: the options, defaults and checks several modules share.
- :mod:`analysis.collect` / :mod:`analysis.csv_input` (+ :mod:`analysis.grouping`): a tidy
  DataFrame, one row per run, from a sweep directory (run.json + result.json) or a CSV of
  published points grouped by its identity columns.
- :mod:`analysis.parabola`, :mod:`analysis.fits`: parabola of the metric in log10(params) and
  log10(tokens) per (group, budget), explicit fit status, bootstrap replicates (Hoffmann et al.
  2022, approach 2); :mod:`analysis.intervals`: the one rule for their intervals.
- :mod:`analysis.powerlaw`: N*(C) = G·C^a, D*(C) = H·C^b across budgets, predictions.
- :mod:`analysis.diagnostics`: where each optimum sits in its sampled sizes.
- :mod:`analysis.fixed_backbone`: studies on one pinned backbone (one model per method and budget),
  reported by their runs' losses instead of parabolas.
- :mod:`analysis.vpnls`, :mod:`analysis.approach3`: L(N, D) = E + A/N^alpha + B/D^beta
  (approach 3) by variable projection, or by L-BFGS.
- :mod:`analysis.figures`, :mod:`analysis.scaling_figure`, :mod:`analysis.ablations`
  (+ :mod:`analysis.figure_style`), :mod:`analysis.tables` (+ :mod:`analysis.formatting`),
  :mod:`analysis.report`: isoFLOP and scaling figures (He 2024 Figures 1, 3, 4), Tables 1–2, report.md.
- :mod:`analysis.output`: the report directory, written as a whole.
- :mod:`analysis.command`: ``isoflop analyze``.

Importing this package is cheap: submodules load pandas, scipy and matplotlib only when imported.
"""
