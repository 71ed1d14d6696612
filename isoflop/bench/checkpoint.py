"""Checkpoint save and load at a large state: extra host memory and seconds per GB, before vs after.

``isoflop bench checkpoint [--gb 2]`` builds a training state shaped like a
PEER run's (two large expert tables, small layers, Adam's two moments per
parameter, the step, RNG states) of ``--gb`` GB, then saves it as a
checkpoint and loads it back (verify, then read into the live tensors, as a
resume does), side by side with two methods:

- ``whole`` (isoflop 0.1, kept here as the baseline): the state is serialised
  into memory (``torch.save`` into a buffer), hashed, written; loading reads
  the file whole for its SHA-256, then ``torch.load`` makes a full copy that
  is copied into the live tensors;
- ``streamed`` (:mod:`isoflop.checkpoint`): ``torch.distributed.checkpoint``
  files, hashed while they stream, read in place into the live tensors.

Each method runs in a fresh process holding the state; its extra host memory
is the peak resident set size during the operation (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs`` just before) minus the resident set size
before it, so the state itself is not counted. Writes are fsynced; the load
follows the save, so both methods read from the page cache alike. A ``--gb``
that the free memory (twice the state: ``whole`` holds a serialised copy) or
the disk (both checkpoints) cannot hold is refused before anything is built.
Not a test: the numbers are for comparing the two methods in one run on one
machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from isoflop.commands.common import positive_number, writable_file, write_output_file
from isoflop.errors import UserError

METHODS = ("whole", "streamed")
BYTES_PER_GB = 1e9
TABLE_WIDTH = 512  # d of the expert tables: rows of 2 KiB in fp32
SMALL_LAYERS = {"ffw.query": (TABLE_WIDTH, 256), "embedding": (4096, 256)}
SMALLEST_STATE_BYTES = 3 * 4 * (sum(math.prod(shape) for shape in SMALL_LAYERS.values()) + 2 * TABLE_WIDTH)
"""The state with one row per expert table: the small layers, parameters and two Adam moments, fp32."""
MEMORY_PER_STATE = 2
"""Peak host memory of a measurement over the state: ``whole`` holds a full serialised copy beside it."""
DISK_PER_STATE = 2
"""Disk the checkpoints take over the state: each method's checkpoint stays until both are measured."""


def training_state(total_bytes: float) -> dict[str, Any]:
    """A PEER-like training state of about ``total_bytes``, at least :data:`SMALLEST_STATE_BYTES`
    (parameters and two Adam moments, fp32): the expert tables take what the small layers leave."""
    table_bytes = max(0.0, total_bytes - SMALLEST_STATE_BYTES) / 3
    rows = 1 + math.ceil(table_bytes / 2 / (TABLE_WIDTH * 4))
    generator = torch.Generator().manual_seed(0)
    shapes = {"ffw.experts_down": (rows, TABLE_WIDTH), "ffw.experts_up": (rows, TABLE_WIDTH), **SMALL_LAYERS}
    model = {name: torch.rand(shape, generator=generator) for name, shape in shapes.items()}
    moments = {index: {"step": torch.tensor(10.0), "exp_avg": torch.rand(tensor.shape, generator=generator),
                       "exp_avg_sq": torch.rand(tensor.shape, generator=generator)}
               for index, tensor in enumerate(model.values())}
    return {"model": model,
            "optimizer": {"state": moments, "param_groups": [{"lr": 1e-3, "params": list(moments)}]},
            "step": 10, "data": {"kind": "packed", "sequences_consumed": 640},
            "rng": {"torch": torch.get_rng_state()}}


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a nested state."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(value) for value in state)
    return 0


def _copy_into(live: Any, loaded: Any) -> None:
    """Copy the tensors of ``loaded`` into the same places of ``live`` (what ``load_state_dict`` does)."""
    if isinstance(live, torch.Tensor):
        live.copy_(loaded)
    elif isinstance(live, dict):
        for key, value in live.items():
            _copy_into(value, loaded[key])


def _resident_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measured(operation: Any) -> dict[str, float]:
    """Seconds and extra peak resident bytes of ``operation()``."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _resident_bytes("VmRSS")
    start = time.perf_counter()
    operation()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra_bytes": float(_resident_bytes("VmHWM") - before)}


def _save_whole(folder: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    folder.mkdir(parents=True)
    with buffer.getbuffer() as payload:
        with open(folder / "state.pt", "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        (folder / "manifest.json").write_text(json.dumps({"sha256": hashlib.sha256(payload).hexdigest()}))


def _load_whole(folder: Path, live: dict[str, Any]) -> None:
    expected = json.loads((folder / "manifest.json").read_text())["sha256"]
    if hashlib.sha256((folder / "state.pt").read_bytes()).hexdigest() != expected:
        raise RuntimeError(f"{folder}: checksum mismatch")
    _copy_into(live, torch.load(folder / "state.pt", map_location="cpu", weights_only=False))


def measure(method: str, total_bytes: float, folder: Path) -> dict[str, Any]:
    """Save then load a state of ``total_bytes`` with ``method`` under ``folder`` (a fresh process's work)."""
    from isoflop import checkpoint
    from isoflop.distributed import DistributedContext

    state = training_state(total_bytes)
    if method == "whole":
        save = _measured(lambda: _save_whole(folder / "step_000001", state))
        load = _measured(lambda: _load_whole(folder / "step_000001", state))
    else:
        context = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        saved: list[Path] = []
        save = _measured(lambda: saved.append(checkpoint.save(folder, 1, "bench", state, context)))

        def resume() -> None:
            problem = checkpoint.verify(saved[0], "bench")
            if problem is not None:
                raise RuntimeError(f"{saved[0]}: {problem}")
            checkpoint.load(saved[0], live_state=state)

        load = _measured(resume)
    return {"method": method, "state_bytes": state_bytes(state), "save": save, "load": load}


def _measure_in_fresh_process(method: str, total_bytes: float, folder: Path) -> dict[str, Any]:
    code = ("import json, sys; from pathlib import Path; from isoflop.bench.checkpoint import measure; "
            f"print(json.dumps(measure({method!r}, {total_bytes!r}, Path({str(folder)!r}))))")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"the {method} measurement failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def smallest_gb() -> float:
    """The smallest ``--gb`` accepted: :data:`SMALLEST_STATE_BYTES` in GB, rounded up to 3 decimals."""
    return math.ceil(SMALLEST_STATE_BYTES / BYTES_PER_GB * 1000) / 1000


def state_size(text: str) -> float:
    """argparse type of ``--gb``: a positive number of GB, at least :func:`smallest_gb`."""
    gb = positive_number(float, "GB such as 2")(text)
    if gb < smallest_gb():
        raise argparse.ArgumentTypeError(f"{text!r} GB is below the smallest state this benchmark builds "
                                         f"({smallest_gb():g} GB: its small layers and their Adam moments); "
                                         f"pass --gb {smallest_gb():g} or more")
    return gb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gb", type=state_size, default=2.0,
                        help=f"size of the training state in GB (1e9 bytes; default 2; at least {smallest_gb():g})")
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder to write the checkpoints in (default: a temporary folder, removed after)")
    parser.add_argument("--json", type=writable_file, metavar="PATH", help="also write the results to this JSON file")


def _largest_fitting(free_bytes: float, per_state: int) -> str | None:
    """``--gb N``, the largest state (2 decimals, rounded down) whose ``per_state`` copies fit in
    ``free_bytes``, or None when even the smallest state does not fit."""
    largest = math.floor(free_bytes / per_state / BYTES_PER_GB * 100) / 100
    return f"--gb {largest:g}" if largest >= smallest_gb() else None


def check_room(gb: float, folder: Path) -> None:
    """Refuse, before anything is allocated, a state the host memory or the disk of ``folder`` cannot hold.

    Raises:
        UserError: naming the limit and the largest ``--gb`` that fits.
    """
    import psutil

    available = psutil.virtual_memory().available
    if gb * BYTES_PER_GB * MEMORY_PER_STATE > available:
        fitting = _largest_fitting(available, MEMORY_PER_STATE)
        raise UserError(f"--gb {gb:g}: the measurement needs about {MEMORY_PER_STATE}x the state in memory "
                        f"({gb * MEMORY_PER_STATE:g} GB) and {available / BYTES_PER_GB:.2f} GB is available; "
                        + (f"pass {fitting} or less" if fitting else "free memory first"))
    free = shutil.disk_usage(folder).free
    if gb * BYTES_PER_GB * DISK_PER_STATE > free:
        fitting = _largest_fitting(free, DISK_PER_STATE)
        raise UserError(f"--gb {gb:g}: the two checkpoints need about {gb * DISK_PER_STATE:g} GB on disk and "
                        f"{folder} has {free / BYTES_PER_GB:.2f} GB free; "
                        + (f"pass {fitting} or less, or --dir on a larger disk" if fitting
                           else "pass --dir on a disk with more space"))


def run(args: argparse.Namespace) -> int:
    if not Path("/proc/self/clear_refs").exists():
        raise UserError("isoflop bench checkpoint measures peak memory through /proc (Linux); run it on Linux")
    if args.dir is not None and not args.dir.is_dir():
        raise UserError(f"--dir {args.dir}: no such folder; create it or pass an existing one")
    check_room(args.gb, args.dir if args.dir is not None else Path(tempfile.gettempdir()))
    total_bytes = args.gb * BYTES_PER_GB
    results = []
    with tempfile.TemporaryDirectory(prefix="isoflop-bench-checkpoint-", dir=args.dir) as scratch:
        for method in METHODS:
            results.append(_measure_in_fresh_process(method, total_bytes, Path(scratch) / method))
    print(f"state {results[0]['state_bytes'] / BYTES_PER_GB:.2f} GB (PEER-like: expert tables and Adam moments, fp32)")
    print(f"{'method':<10}{'save s/GB':>11}{'save extra':>12}{'load s/GB':>11}{'load extra':>12}")
    for result in results:
        gb = result["state_bytes"] / BYTES_PER_GB
        print(f"{result['method']:<10}"
              + "".join(f"{result[step]['seconds'] / gb:>11.2f}{result[step]['extra_bytes'] / result['state_bytes']:>11.2f}x"
                        for step in ("save", "load")), flush=True)
    if args.json is not None:
        write_output_file(args.json, json.dumps({"results": results}, indent=2) + "\n", "--json")
    return 0
