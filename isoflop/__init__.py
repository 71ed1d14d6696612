"""isoflop: isoFLOP scaling studies end to end (plan, train, analyse).

Importing this package is cheap: no torch, pandas or matplotlib.
"""

__version__ = "0.1.0"
