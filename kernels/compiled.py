"""C kernels beside this file, compiled on first use and loaded with ctypes (CPU only).

A few CPU hot spots of the product-key layers are loops that PyTorch runs as many
small or unfused ops (``row_topk.c``: top-k of short rows; ``prefix_norm.c``: the
causal query normalisation). Each is a plain C file with no Python or torch
headers, so it builds in about a second with the system's C compiler (``$CC``,
else ``cc``) and these flags:

- ``-O3 -fno-math-errno -ffp-contract=off``: a product and a sum are rounded each
  on its own, as PyTorch's elementwise ops round them, unless the C asks for
  ``fmaf``;
- x86-64-v3 (AVX2 + FMA) and generic clones on x86-64, chosen by the CPU's
  features when loaded (``vector_clones.h``);
- ``-fopenmp`` where the compiler has it. The library then shares PyTorch's OpenMP
  runtime and threads: PyTorch's Linux wheels load their ``libgomp.so.1`` into the
  global namespace, and the loader gives this library the one already loaded under
  that name. (Threads of its own would compete with PyTorch's, which keep spinning
  for a while after each parallel op; on the 2-core machine two such threads made a
  PEER step slower than one.)

The library goes to ``<cache>/compiled/<name>-<hash>.so`` in the cache folder of
:mod:`isoflop.token_cache` (``$ISOFLOP_CACHE_DIR`` or ``~/.cache/isoflop``; a
private temporary folder, removed at exit, when that is off or not writable). The
hash covers the source, the flags and the machine type; the file is renamed into
place whole, so processes that compile at once never load half a library, and one
that does not load is built again.

Where a library cannot be built or loaded (no compiler), :func:`load` warns once and
returns None, and its callers run their PyTorch path (same results, slower).
``ISOFLOP_COMPILED_KERNELS=off`` makes every caller take the PyTorch path.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

FLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-pthread")
OPENMP_FLAG = "-fopenmp"
SWITCH_ENV = "ISOFLOP_COMPILED_KERNELS"


def enabled() -> bool:
    """False when ``ISOFLOP_COMPILED_KERNELS=off`` (read at every call, so a process can compare)."""
    return os.environ.get(SWITCH_ENV) != "off"


@functools.cache
def _folder() -> Path:
    """Where libraries are kept: the shared cache's ``compiled/`` or, failing that, a temporary folder."""
    from isoflop.token_cache import cache_root

    root = cache_root()
    if root is not None:
        folder = root / "compiled"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
    folder = Path(tempfile.mkdtemp(prefix="isoflop-compiled-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # a loaded library stays mapped when unlinked
    return folder


def _build(compiler: str, source: Path, target: Path) -> None:
    """Compile ``source`` into ``target`` (with OpenMP where the compiler has it), renamed into place once whole."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        for openmp in ([OPENMP_FLAG], []):
            result = subprocess.run([compiler, *FLAGS, *openmp, "-o", str(partial), str(source), "-lm"],
                                    capture_output=True, timeout=120)
            if result.returncode == 0:
                break
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise subprocess.SubprocessError(f"{compiler} failed: {message[-1] if message else result.returncode}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The library built from ``kernels/<name>.c``, or None (with one warning) where it cannot be had."""
    source = Path(__file__).with_name(f"{name}.c")
    compiler = shutil.which(os.environ.get("CC", "cc"))
    problem = "no C compiler found ($CC or cc)"
    if not source.is_file():
        compiler, problem = None, f"its source {source} is missing"
    if compiler is not None:
        headers = b"".join(header.read_bytes() for header in sorted(source.parent.glob("*.h")))
        key = hashlib.sha256(source.read_bytes() + headers
                             + repr((FLAGS, platform.machine(), platform.system())).encode())
        target = _folder() / f"{name}-{key.hexdigest()[:16]}.so"
        for attempt in range(2):  # a library that does not load (e.g. truncated) is built again once
            try:
                if attempt or not target.exists():
                    _build(compiler, source, target)
                return ctypes.CDLL(str(target))
            except (OSError, subprocess.SubprocessError) as error:
                problem = f"{target} could not be built or loaded ({error})"
    warnings.warn(f"compiled CPU kernel {name!r} unavailable: {problem}; using PyTorch ops (same results, slower)",
                  RuntimeWarning, stacklevel=2)
    return None

