"""How one checkpoint's state is laid out on disk: torch.distributed.checkpoint (DCP) files, streamed.

:mod:`isoflop.checkpoint` owns the folders (atomic writes, the manifest, the
last-good fallback); this module writes and reads the state inside one folder.

The training state is a nested dict (model, optimizers, data position, RNG
states, running totals). It is flattened to ``/``-separated keys (an int key,
such as an optimizer's parameter index, is written ``#3``) and written with
``torch.distributed.checkpoint.save``, one file per item (``__<rank>_<n>.distcp``)
plus DCP's ``.metadata`` index:

- every tensor of at least :data:`SMALL_TENSOR_BYTES` is an item of its own;
  a plain tensor larger than :data:`CHUNK_BYTES` is cut into row blocks
  (``key@rows<first row>``), so saving or loading it never holds more than one
  block besides the state itself (DCP keeps a written item alive until its file
  is closed, hence one file per item);
- sharded tensors (FSDP2's DTensors) are items too; every rank writes its own
  shards (DCP's collective save), and a load reads what each rank needs;
- everything else (small tensors, numbers, numpy arrays, RNG tuples) is
  pickled into one item, ``@objects``, a uint8 tensor of the pickle's bytes
  (a tensor is written raw; a ``bytes`` item would be pickled again by DCP at
  protocol 2, which stores every byte >= 0x80 as two).

While a file is written its SHA-256 and size are computed from the bytes as
they pass (:class:`HashingFileSystem`); :mod:`isoflop.checkpoint` puts them in
the manifest.

Loading fills the tensors of a live state in place (the model's parameters
are written directly from the file, one block at a time); a saved tensor with
no live counterpart (an optimizer moment before the first step) is allocated
like a template tensor (its parameter: same device, same sharding) or, lacking
one, on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.tensor import DTensor

SMALL_TENSOR_BYTES = 1 << 20
"""Tensors below this size (1 MiB) travel pickled in ``@objects`` instead of a file of their own."""
CHUNK_BYTES = 128 << 20
"""Plain tensors above this size (128 MiB) are written and read in row blocks of about this size."""
OBJECTS_KEY = "@objects"
ROWS_MARK = "@rows"
SEPARATOR = "/"


# ---- flat keys --------------------------------------------------------------------------------

def _key_part(key: Any) -> str:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise TypeError(f"checkpoint state keys must be str or int, got {key!r}")
    if isinstance(key, int):
        return f"#{key}"
    if SEPARATOR in key or key.startswith("#") or "@" in key:
        raise ValueError(f"checkpoint state key {key!r} holds a reserved character (/, # or @)")
    return key


def _key_from_part(part: str) -> str | int:
    return int(part[1:]) if part.startswith("#") else part


def flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts by flat key (dicts are recursed into; anything else is a leaf)."""
    flat: dict[str, Any] = {}
    for key, value in state.items():
        path = f"{prefix}{_key_part(key)}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + SEPARATOR))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[Any, Any]:
    """The nested dict of :func:`flatten`'s keys."""
    nested: dict[Any, Any] = {}
    for path, value in flat.items():
        parts = [_key_from_part(part) for part in path.split(SEPARATOR)]
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _row_blocks(tensor: torch.Tensor) -> list[int]:
    """First rows of the blocks a plain tensor is written in ([0]: one block)."""
    if tensor.dim() == 0 or tensor.nbytes <= CHUNK_BYTES or tensor.shape[0] < 2:
        return [0]
    rows = max(1, CHUNK_BYTES // max(1, tensor.nbytes // tensor.shape[0]))
    return list(range(0, tensor.shape[0], rows))


def items_for_saving(state: Mapping[str, Any]) -> dict[str, Any]:
    """The DCP state dict of ``state``: tensor items (row blocks of large ones) and ``@objects``."""
    items: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    for key, value in flatten(state).items():
        if isinstance(value, DTensor):
            items[key] = value
        elif isinstance(value, torch.Tensor) and value.nbytes >= SMALL_TENSOR_BYTES:
            value = value.detach()
            starts = _row_blocks(value)
            if len(starts) == 1:
                items[key] = value
                continue
            for first, last in zip(starts, [*starts[1:], value.shape[0]]):
                items[f"{key}{ROWS_MARK}{first}"] = value[first:last]
        else:
            objects[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    items[OBJECTS_KEY] = torch.frombuffer(bytearray(pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL)),
                                          dtype=torch.uint8)
    return items


# ---- writing: files hashed while they stream ----------------------------------------------------

class _HashingWriter(io.RawIOBase):
    """A writable file that hashes (SHA-256) and counts what passes through it, and
    notes the first ``OSError`` of the file system (torch's serializer, which writes
    through it, reports a failed write as a RuntimeError of its own)."""

    def __init__(self, stream: Any, errors: list[OSError]) -> None:
        super().__init__()
        self._stream = stream
        self._errors = errors
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def _noting_errors(self, call: Any, *arguments: Any) -> Any:
        try:
            return call(*arguments)
        except OSError as error:
            self._errors.append(error)
            raise

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        written = self._noting_errors(self._stream.write, view)
        self.size += written
        return written

    def tell(self) -> int:
        return self._stream.tell()

    def fileno(self) -> int:
        return self._stream.fileno()

    def flush(self) -> None:
        self._noting_errors(self._stream.flush)

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes first
        finally:
            self._stream.close()


class HashingFileSystem(FileSystem):
    """DCP's file system, recording ``{file name: (bytes, sha256)}`` of every file it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.digests: dict[str, tuple[int, str]] = {}
        self.errors: list[OSError] = []

    @contextlib.contextmanager
    def create_stream(self, path: str | Path, mode: str) -> Iterator[io.IOBase]:
        with super().create_stream(path, mode) as stream:
            if "w" not in mode:
                yield stream
                return
            hashing = _HashingWriter(stream, self.errors)
            yield hashing  # type: ignore[misc]
        self.digests[Path(path).name] = (hashing.size, hashing.sha256.hexdigest())

    def rename(self, path: str | Path, new_path: str | Path) -> None:
        super().rename(path, new_path)
        if Path(path).name in self.digests:
            self.digests[Path(new_path).name] = self.digests.pop(Path(path).name)


@contextlib.contextmanager
def _single_process_notice_silenced() -> Iterator[None]:
    """DCP warns that it saves "in a single process" every time it does so on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
        yield


def write_state(folder: Path, state: Mapping[str, Any], *, sharded: bool) -> dict[str, tuple[int, str]]:
    """Write ``state`` into ``folder`` (DCP); returns this rank's files' (bytes, SHA-256).

    ``sharded``: every rank of the process group calls this together (FSDP);
    otherwise one process writes the whole state alone.
    Raises the first underlying error of a failed save (e.g. ``OSError`` ENOSPC).
    """
    from torch.distributed.checkpoint.api import CheckpointException

    file_system = HashingFileSystem()
    writer = FileSystemWriter(folder, single_file_per_rank=False, sync_files=True)
    writer.fs = file_system
    try:
        with _single_process_notice_silenced():
            dcp.save(items_for_saving(state), storage_writer=writer, no_dist=not sharded)
    except (Exception, CheckpointException) as error:
        cause = file_system.errors[0] if file_system.errors else _underlying(error)
        if cause is error:
            raise
        raise cause from None
    return file_system.digests


def _underlying(error: BaseException) -> BaseException:
    """The first error a (possibly nested) DCP ``CheckpointException`` wraps, an OSError first."""
    from torch.distributed.checkpoint.api import CheckpointException

    if not isinstance(error, CheckpointException):
        return error
    causes = [_underlying(failure[0] if isinstance(failure, tuple) else failure)
              for failure in error.failures.values()]
    return next((cause for cause in causes if isinstance(cause, OSError)), causes[0] if causes else error)


# ---- reading ------------------------------------------------------------------------------------

def _prefixes(key: str) -> Iterator[str]:
    """``a/b/c`` -> ``a/b/c``, ``a/b``, ``a``."""
    parts = key.split(SEPARATOR)
    for end in range(len(parts), 0, -1):
        yield SEPARATOR.join(parts[:end])


def _target(key: str, shape: tuple[int, ...], dtype: torch.dtype, live: Mapping[str, Any],
            like: Mapping[str, Any]) -> torch.Tensor:
    """Where the saved tensor ``key`` is read into: the live tensor of that key, else a new
    tensor like the template at ``key`` or its nearest parent key, else a new CPU tensor."""
    for source in (live.get(key), *(like.get(prefix) for prefix in _prefixes(key))):
        if isinstance(source, torch.Tensor) and tuple(source.shape) == shape and source.dtype == dtype:
            return source.detach() if source is live.get(key) else torch.empty_like(source)
    return torch.empty(shape, dtype=dtype)


def read_state(folder: Path, live_state: Mapping[str, Any] | None = None, like: Mapping[str, Any] | None = None,
               *, sharded: bool = False) -> dict[Any, Any]:
    """The nested state written by :func:`write_state` into ``folder``.

    Tensors of ``live_state`` with the saved shape and dtype are filled in place
    (and returned); other tensors are allocated (see :func:`_target`; ``like``
    is a nested dict of template tensors, e.g. each optimizer-state entry's
    parameter). ``sharded``: every rank calls this together (FSDP).
    """
    live = {key: value for key, value in flatten(live_state or {}).items() if isinstance(value, torch.Tensor)}
    templates = flatten(like or {})
    metadata = FileSystemReader(folder).read_metadata().state_dict_metadata
    blocks: dict[str, list[tuple[int, str, TensorStorageMetadata]]] = {}
    request: dict[str, Any] = {OBJECTS_KEY: torch.empty(tuple(metadata[OBJECTS_KEY].size), dtype=torch.uint8)}
    for item_key, item in metadata.items():
        if isinstance(item, TensorStorageMetadata) and item_key != OBJECTS_KEY:
            base, mark, first = item_key.partition(ROWS_MARK)
            blocks.setdefault(base, []).append((int(first) if mark else 0, item_key, item))
    wholes: dict[str, torch.Tensor] = {}
    for base, parts in blocks.items():
        parts.sort(key=lambda part: part[0])
        first_item = parts[0][2]
        shape = (sum(item.size[0] for _, _, item in parts), *first_item.size[1:]) if len(parts) > 1 \
            else tuple(first_item.size)
        whole = wholes[base] = _target(base, shape, first_item.properties.dtype, live, templates)
        for first, item_key, item in parts:
            request[item_key] = whole if len(parts) == 1 else whole.narrow(0, first, item.size[0])
    with _single_process_notice_silenced():
        dcp.load(request, storage_reader=FileSystemReader(folder), no_dist=not sharded)
    flat: dict[str, Any] = pickle.loads(request[OBJECTS_KEY].numpy().tobytes())
    flat.update(wholes)
    return unflatten(flat)
