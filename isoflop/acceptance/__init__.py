"""``isoflop gpu-acceptance``: every check a CUDA machine must pass, as one command.

- :mod:`isoflop.acceptance.steps`: what runs (GPU tests, bf16 training of a
  dense, an expert-choice MoE and a PEER model, the kernel benchmarks at the
  PEER paper's size, multi-GPU equivalence), at GPU sizes or, for a rehearsal
  on the CPU, at toy sizes with the same flags.
- :mod:`isoflop.acceptance.runner`: runs each step's commands in their own
  process group under a time limit, so one hang costs one step.
- :mod:`isoflop.acceptance.report`: the one JSON file with every figure, and
  its one-screen summary.
"""
