"""Speed and memory benchmarks behind ``isoflop bench kernels|layers|checkpoint``.

They live in the ``isoflop`` package (not beside the code they measure) because
they are commands: they parse flags and write reports through
:mod:`isoflop.commands.common`, and ``models`` and ``kernels`` import nothing
from ``isoflop``.
"""
