"""The time a PEER forward+backward cannot beat on this machine, for ``isoflop bench layers``.

    bound = step matmul FLOPs / matmul rate  +  step bytes / memory bandwidth

Both rates are measured in the same run as the layer (:func:`rate_probes`,
timed interleaved with the layers so that machine load hits them alike):

- matmul rate: a 2048 x 2048 x 2048 fp32 matmul into a preallocated output
  (2·2048³ FLOPs).
- memory bandwidth: the faster of a 128 MiB copy (bytes read + written) and a
  gather of 128 MiB of random 1 KiB rows from a 64 MiB table (read + written),
  both into preallocated outputs.

Step matmul FLOPs (:func:`peer_step_matmul_flops`): the layer's forward FLOPs
per token from its config (query 2·d·h·d_key, sub-key scores 2·h·n·d_key,
experts 2·2·d·h·k; ``PEERConfig.costs``) times the tokens times the project's
training factor 3 (backward = 2 x forward; ``isoflop.flops``).

Step bytes (:func:`peer_step_bytes`), what any implementation must move:
the expert table rows the step touches, read in forward and again in backward
and their gradients written (3 passes per table: 6 x rows x d for U and V,
9 with the GLU table W); the per-token activations x and dy read,
y and dx written (4 x T x d); the other parameters read twice and their
gradients written (3 x params); per (token, head, k) pair the int64 expert id
and the router score read in forward and backward and the score's gradient
written (2 x (8 + 4) + 4 bytes). Intermediates a fused kernel keeps in cache
(queries, sub-key scores, gathered rows) are not counted.

Why the sum and not the max of the two terms: on the CPU the step's matmuls
and its table-row traffic run as separate ops one after the other, each near
one roof (the matmuls are compute-bound, the gathers and gradient rows are
memory-bound), so their times add. The max would be the bound of a single fused
kernel overlapping both, which no CPU path here is; it is smaller, so the sum
is the tighter honest target for this hardware.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from isoflop.flops import TRAINING_FLOPS_PER_FORWARD_FLOP
from models.ffw.base import FFWLayer

MATMUL_SIZE = 2048  # square fp32 matmul of the rate probe
COPY_BYTES = 128 * 2**20  # copy probe: bytes copied (read once, written once)
GATHER_ROW_ELEMENTS = 256  # gather probe: fp32 rows of 1 KiB
GATHER_TABLE_ROWS = 2**16  # 64 MiB table
GATHER_ROWS = 2**17  # 128 MiB gathered
PAIR_BYTES = 2 * (8 + 4) + 4  # per (token, head, k): id and score read twice, score gradient written


@dataclass(frozen=True)
class StepBound:
    """A PEER step's bound and the measurements it comes from (all SI units)."""

    matmul_flops_per_second: float
    copy_bytes_per_second: float
    gather_bytes_per_second: float
    step_matmul_flops: float
    step_bytes: float
    touched_rows: int

    @property
    def bandwidth_bytes_per_second(self) -> float:
        """The faster of the two memory probes."""
        return max(self.copy_bytes_per_second, self.gather_bytes_per_second)

    @property
    def matmul_seconds(self) -> float:
        return self.step_matmul_flops / self.matmul_flops_per_second

    @property
    def memory_seconds(self) -> float:
        return self.step_bytes / self.bandwidth_bytes_per_second

    @property
    def seconds(self) -> float:
        """The bound: matmul time plus memory time (see the module docstring for why the sum)."""
        return self.matmul_seconds + self.memory_seconds

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "bandwidth_bytes_per_second": self.bandwidth_bytes_per_second,
                "matmul_seconds": self.matmul_seconds, "memory_seconds": self.memory_seconds,
                "seconds": self.seconds}


def rate_probes(device: torch.device) -> dict[str, tuple[Callable[[], None], float]]:
    """Probe steps for the matmul rate and the memory bandwidth: name -> (step, work per step).

    Work is FLOPs for ``matmul`` and bytes moved (read + written) for ``copy`` and ``gather``.
    Every output is preallocated, so no probe pays for fresh pages.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    left, right, product = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, generator=generator)
                            for _ in range(3))
    source = torch.empty(COPY_BYTES // 4, device=device).uniform_(generator=generator)
    destination = torch.empty_like(source)
    table = torch.randn(GATHER_TABLE_ROWS, GATHER_ROW_ELEMENTS, device=device, generator=generator)
    row_ids = torch.randint(0, GATHER_TABLE_ROWS, (GATHER_ROWS,), device=device, generator=generator)
    gathered = torch.empty(GATHER_ROWS, GATHER_ROW_ELEMENTS, device=device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def matmul() -> None:
        torch.mm(left, right, out=product)
        synchronize()

    def copy() -> None:
        destination.copy_(source)
        synchronize()

    def gather() -> None:
        torch.index_select(table, 0, row_ids, out=gathered)
        synchronize()

    return {"matmul": (matmul, 2.0 * MATMUL_SIZE ** 3), "copy": (copy, 2.0 * COPY_BYTES),
            "gather": (gather, 2.0 * gathered.numel() * gathered.element_size())}


def peer_step_matmul_flops(layer: FFWLayer, tokens: int) -> float:
    """Matmul FLOPs of one forward+backward of ``layer`` on ``tokens`` tokens (3 x forward)."""
    return TRAINING_FLOPS_PER_FORWARD_FLOP * layer.config.costs(layer.d_model).forward_flops * tokens


def peer_step_bytes(layer: FFWLayer, tokens: int, touched_rows: int) -> float:
    """Bytes one forward+backward of the PEER ``layer`` must move (module docstring)."""
    tables = [table for table in (layer.down_table, layer.up_table, layer.gate_table) if table is not None]
    table_ids = {id(table) for table in tables}
    item = tables[0].element_size()
    other_parameters = sum(p.numel() * p.element_size() for p in layer.parameters() if id(p) not in table_ids)
    pairs = tokens * layer.config.n_heads * layer.config.top_k
    return float(3 * len(tables) * touched_rows * layer.d_model * item + 4 * tokens * layer.d_model * item
                 + 3 * other_parameters + pairs * PAIR_BYTES)


def touched_expert_rows(layer: FFWLayer, x: torch.Tensor) -> int:
    """Distinct experts the PEER ``layer`` retrieves for the tokens ``x`` (B, T, d)."""
    with torch.no_grad():
        _, expert_index = layer.retrieval(x)
    return int(torch.unique(expert_index).numel())


def peer_step_bound(layer: FFWLayer, x: torch.Tensor, rates: dict[str, float]) -> StepBound:
    """The bound of one forward+backward of ``layer`` on ``x`` (B, T, d) from measured ``rates``
    (per second: ``matmul`` FLOPs, ``copy`` and ``gather`` bytes, as named by :func:`rate_probes`)."""
    tokens = x.numel() // layer.d_model
    touched_rows = touched_expert_rows(layer, x)
    return StepBound(rates["matmul"], rates["copy"], rates["gather"], peer_step_matmul_flops(layer, tokens),
                     peer_step_bytes(layer, tokens, touched_rows), touched_rows)
