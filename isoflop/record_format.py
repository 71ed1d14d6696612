"""How the typed records between the stages are versioned and read back.

Every file that one stage writes and another reads (``run.json``,
``result.json``, ``plan.csv``, ``jobs.jsonl``) has one frozen dataclass that
both sides use (:mod:`isoflop.run_spec`, :mod:`isoflop.run_records`). Each
carries a format version:

- A file without a ``version`` is version 1 (the format these files had
  before they were versioned).
- Adding an optional key keeps the version; readers ignore keys they do not
  know, so an older isoflop still reads the file. A key added that way is
  declared with :func:`optional_field` and written only when it differs from
  its default, so a record that does not use it keeps the bytes (and a run
  spec its run_id) it had before the key existed. Renaming or removing a key,
  or changing what one means, bumps the version, and the reader converts the
  older versions it still supports.
- A version this isoflop does not read (newer, or not a version number) is
  refused with one line naming the file, the version and the fix
  (:class:`RecordError`, a :class:`UserError`: exit status 2, no traceback).

:func:`record_from_mapping` builds a record from a JSON object or a CSV row,
checking each field against the dataclass's type hints. Torch-free.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

from isoflop.atomic_files import read_jsonl
from isoflop.errors import UserError

RecordT = TypeVar("RecordT")
UNVERSIONED = 1  # the version of a file that carries none
OMITTED_AT_DEFAULT = "isoflop_omitted_at_default"  # dataclass field metadata key of optional_field


def optional_field(default: Any) -> Any:
    """A dataclass field added to a record after its format was fixed: it defaults to
    ``default`` (immutable) and :func:`without_unused_optional_fields` leaves it out
    while it holds that default."""
    return dataclasses.field(default=default, metadata={OMITTED_AT_DEFAULT: True})


def without_unused_optional_fields(record: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (``record``'s fields by name, as they will be written) less every
    :func:`optional_field` of ``record`` that holds its default."""
    unused = {field.name for field in dataclasses.fields(record)
              if field.metadata.get(OMITTED_AT_DEFAULT) and getattr(record, field.name) == field.default}
    return {name: value for name, value in values.items() if name not in unused}


class RecordError(UserError):
    """A record file that this isoflop cannot read: malformed, or of a version it does not know."""


class NewerVersionError(RecordError):
    """A record written by a later isoflop: not damaged, only newer than this one reads."""


def check_version(values: Mapping[str, Any], kind: str, current: int, source: str) -> int:
    """The format version of ``values`` (a record read from ``source``), if this isoflop reads it.

    Args:
        values: the record as read (a JSON object or a CSV row).
        kind: what the file holds, for the message (``run result``, ``plan``...).
        current: the newest version this isoflop reads and writes.
        source: the file (and line) the record came from, for the message.

    Raises:
        RecordError: for a version newer than ``current`` or not a positive integer.
    """
    version = values.get("version", UNVERSIONED)
    if isinstance(version, str) and version.strip().isdigit():  # a CSV cell
        version = int(version)
    if type(version) is not int or version < 1:
        raise RecordError(f"{source}: {kind} format version {version!r} is not a version number; "
                          "the file is damaged: restore it from a copy or delete it")
    if version > current:
        raise NewerVersionError(f"{source}: {kind} format version {version} is newer than this isoflop reads "
                          f"(up to {current}); upgrade isoflop (pip install -U isoflop) to read it")
    return version


def record_from_mapping(record_type: type[RecordT], values: Any, kind: str, source: str,
                        fix: str = "restore the file from a copy or delete it") -> RecordT:
    """A ``record_type`` dataclass from a JSON object or CSV row, each field checked against its type.

    Fields with a default may be absent; keys the dataclass does not have are
    ignored. Numbers in CSV cells (strings) are converted; JSON values must
    already have the right type (an integral float is accepted for an int).

    Raises:
        RecordError: naming ``source``, the field and the problem, then ``fix``.
    """
    if not isinstance(values, Mapping):
        raise RecordError(f"{source}: not a valid {kind} (JSON {type(values).__name__} {values!r:.40} "
                          f"instead of an object); {fix}")
    hints = typing.get_type_hints(record_type)
    arguments = {}
    for field in dataclasses.fields(record_type):  # type: ignore[arg-type]
        if field.name not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise RecordError(f"{source}: not a valid {kind} (no {field.name!r}); {fix}")
            continue
        try:
            arguments[field.name] = _typed(values[field.name], hints[field.name], kind, source)
        except (TypeError, ValueError) as error:
            raise RecordError(f"{source}: not a valid {kind} ({field.name!r}: {error}); {fix}") from None
    return record_type(**arguments)


def records_from_jsonl(record_type: type[RecordT], path: Path, kind: str, current: int, fix: str,
                       unreadable_fix: str = "move it aside") -> list[RecordT]:
    """Every line of the JSON-lines file ``path`` as a ``record_type`` ([] without the file), oldest
    first; a torn line (a crash mid-write) is skipped.

    Raises:
        RecordError: for a line of a version newer than ``current``, or one that is no valid
            ``kind`` (its fields, or the record's own ``__post_init__`` check), naming the line and ``fix``;
            for a file that cannot be read, naming it and ``unreadable_fix``.
    """
    try:
        lines = read_jsonl(path)
    except OSError as error:
        raise RecordError(f"{path}: cannot read the {kind}s ({error.strerror}); {unreadable_fix}") from None
    records = []
    for number, values in enumerate(lines, start=1):
        source = f"{path} record {number}"
        if isinstance(values, dict):
            check_version(values, kind, current, source)
        try:
            records.append(record_from_mapping(record_type, values, kind, source, fix=fix))
        except ValueError as error:  # the record's __post_init__
            raise RecordError(f"{source}: not a valid {kind} ({error}); {fix}") from None
    return records


def _typed(value: Any, hint: Any, kind: str, source: str) -> Any:
    """``value`` checked (and, for CSV text, converted) against the type ``hint``."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        (inner,) = [argument for argument in arguments if argument is not type(None)]
        return _typed(value, inner, kind, source)
    if origin is typing.Literal:
        if value not in arguments:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, arguments))}")
        return value
    if dataclasses.is_dataclass(hint):
        return record_from_mapping(hint, value, kind, source)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        key_type, value_type = arguments or (Any, Any)
        return {_typed(key, key_type, kind, source): _typed(item, value_type, kind, source)
                for key, item in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return tuple(_typed(item, arguments[0], kind, source) for item in value)
    return _scalar(value, hint)


def _scalar(value: Any, hint: type) -> Any:
    """A str, bool, int or float, unchanged when it already has the type (an int
    is a valid float); numbers written as text (CSV cells) are converted."""
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected text, got {value!r}")
        return value
    if hint is bool and value in ("True", "False"):  # a CSV cell
        return value == "True"
    if isinstance(value, bool) or hint is bool:
        if hint is not bool or not isinstance(value, bool):
            raise TypeError(f"expected {hint.__name__}, got {value!r}")
        return value
    if isinstance(value, str):
        number = float(value)  # ValueError for text that is no number
        value = int(value) if hint is int and value.strip().lstrip("-").isdigit() else number
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return value
    raise TypeError(f"no reader for the type {hint!r}")
