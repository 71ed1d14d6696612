"""Hydra composition: conf/ + sweeps/<name>.yaml + overrides -> StudyConfig.

This is the only module that sees Hydra or OmegaConf objects: it merges the
composed tree into the typed schema (:class:`isoflop.study_config.StudyConfig`,
each method typed by its FFW family's config class) and returns plain
dataclasses via ``OmegaConf.to_object``. Every composition or validation
problem becomes one :class:`UserError` line, and so does a sweep file Hydra
would misread or a local data file that does not exist.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from isoflop.errors import UserError
from isoflop.study_config import DataConfig, StudyConfig
from models.config import FFW_FAMILIES, ffw_config_class

DEFAULT_SWEEP = "peer_paper"
METHOD_GROUP = "model/ffw"
"""The config group each method takes its FFW layer from (``model/ffw@methods.NAME``)."""


def config_root() -> Path:
    """Folder holding ``conf/`` and ``sweeps/``: the repository root, or
    ``$ISOFLOP_CONFIG_ROOT`` when set."""
    override = os.environ.get("ISOFLOP_CONFIG_ROOT")
    return Path(override) if override else Path(__file__).resolve().parents[1]


def available_sweeps() -> list[str]:
    """Names of the studies in ``sweeps/``."""
    return sorted(path.stem for path in (config_root() / "sweeps").glob("*.yaml"))


@dataclass(frozen=True)
class ComposedStudy:
    """The typed study and its resolved YAML (written as ``study.yaml``)."""

    study: StudyConfig
    resolved_yaml: str
    sweep: str


SWEEP_HEADER = "# @package _global_"
"""First line of every sweep file: its keys are the study's own (``name``, ``budgets``, ...)."""


def _sweep_search_root(sweep: str, scratch: Path) -> tuple[Path, str]:
    """Search-path root whose ``sweeps/`` holds ``sweep``, and the sweep's name."""
    as_path = Path(sweep)
    names = available_sweeps()
    if sweep.endswith((".yaml", ".yml")) or as_path.is_file():
        if not as_path.exists():
            raise UserError(f"--sweep {sweep}: no such file; pass a YAML file or one of {', '.join(names)}")
        check_sweep_file(as_path)
        (scratch / "sweeps").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(as_path, scratch / "sweeps" / f"{as_path.stem}.yaml")
        return scratch, as_path.stem
    if sweep not in names:
        raise UserError(f"--sweep {sweep}: unknown study; available: {', '.join(names)} "
                        "(or pass a path to a YAML file)")
    check_sweep_file(config_root() / "sweeps" / f"{sweep}.yaml")
    return config_root(), sweep


def check_sweep_file(path: Path) -> None:
    """Refuse a sweep file that Hydra would misread or fail on with a traceback:
    unreadable, empty, not YAML, without the ``@package _global_`` header, or not
    a mapping. The message names the file and the fix."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise UserError(f"sweep file {path}: cannot read it ({reason}); fix the file or its permissions") from None
    if not text.strip():
        raise UserError(f"sweep file {path} is empty; start it with '{SWEEP_HEADER}' and set name, budgets "
                        "and methods (see sweeps/tiny.yaml)")
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise UserError(f"sweep file {path}: YAML syntax error{place} ({problem}); fix the file") from None
    if _header_package(text) != "_global_":
        raise UserError(f"sweep file {path} does not start with '{SWEEP_HEADER}'; add that line at the top "
                        "(a sweep sets the study's own keys: name, budgets, methods, ...)")
    if not isinstance(content, dict):
        raise UserError(f"sweep file {path} holds no settings; set name, budgets and methods under "
                        f"'{SWEEP_HEADER}' (see sweeps/tiny.yaml)")


def _header_package(text: str) -> str | None:
    """The ``# @package`` value of a config file's header, read as Hydra reads it:
    the leading ``# @KEY VALUE`` lines, up to the first other non-blank line."""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        directive = re.match(r"#\s*@package\s+(\S+)\s*$", line)
        if directive:
            return directive.group(1)
        if not re.match(r"#\s*@", line):
            return None
    return None


def _format_budget(budget: float) -> str:
    return repr(float(budget))


def load_study(sweep: str | None = None, overrides: list[str] | tuple[str, ...] = (),
               budgets: list[float] | None = None) -> ComposedStudy:
    """Compose and validate a study.

    Args:
        sweep: a name in ``sweeps/`` or a path to a sweep YAML; default ``peer_paper``.
        overrides: Hydra ``key=value`` overrides, applied last.
        budgets: if given, replace the study's budgets (FLOPs).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    sweep = sweep or DEFAULT_SWEEP
    with tempfile.TemporaryDirectory(prefix="isoflop-sweep-") as scratch:
        search_root, sweep_name = _sweep_search_root(sweep, Path(scratch))
        all_overrides = [f"+sweeps={sweep_name}", *overrides]
        if budgets:
            all_overrides.append(f"budgets=[{','.join(_format_budget(b) for b in budgets)}]")
        try:
            study, resolved_yaml = _typed_study(compose_tree(all_overrides, search_root))
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            raise UserError(_explain(error)) from None
    check_input_files(study.data)
    return ComposedStudy(study=study, resolved_yaml=resolved_yaml, sweep=sweep_name)


DEFAULTS_CONFIG = "dataclass_defaults"
FAMILY_GROUP = "ffw_family"


def _register_dataclass_defaults() -> None:
    """Put every key and default of the dataclasses into Hydra's config store, so
    the YAML files need to hold only what differs from them and every key can
    be overridden on the command line: ``dataclass_defaults`` (the
    ``StudyConfig`` tree, first in ``conf/config.yaml``'s defaults list) and
    ``ffw_family/<family>`` (one per registered FFW family, the base of each
    ``conf/model/ffw`` option and composable as a method by itself:
    ``+ffw_family@methods.NAME=FAMILY``)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    store.store(name=DEFAULTS_CONFIG, node=OmegaConf.to_container(OmegaConf.structured(StudyConfig)))
    for family in FFW_FAMILIES.names():
        store.store(group=FAMILY_GROUP, name=family, node=FFW_FAMILIES.get(family)().to_dict())


def compose_tree(overrides: list[str], search_root: Path, conf_dir: Path | None = None) -> Any:
    """Hydra's composition of ``conf_dir/config.yaml`` (default: ``config_root()/conf``)
    with ``overrides``, ``search_root/sweeps`` on the search path: the untyped tree."""
    from hydra import compose, initialize_config_dir

    _register_dataclass_defaults()
    with initialize_config_dir(config_dir=str(conf_dir or config_root() / "conf"), version_base=None):
        return compose(config_name="config", overrides=[f"hydra.searchpath=[file://{search_root}]", *overrides])


def _typed_study(composed: Any) -> tuple[StudyConfig, str]:
    """The composed tree as a :class:`StudyConfig`, and its resolved YAML.

    The tree is merged into the ``StudyConfig`` schema, and each method into
    the schema of its FFW family, so OmegaConf checks and converts every value
    against the dataclass that owns it. The YAML shows every setting, defaults
    included, as the study's dataclasses hold them.
    """
    from omegaconf import OmegaConf, read_write

    tree = OmegaConf.structured(StudyConfig)
    # OmegaConf 2.3 marks the node of every frozen dataclass read-only, and its
    # merge lifts that only at the root (omegaconf#1102, fixed in 2.4, which
    # hydra-core 1.3 does not allow): open those nodes while merging in place.
    with contextlib.ExitStack() as opened:
        for node in _frozen_nodes(tree):
            opened.enter_context(read_write(node))
        tree.merge_with(composed)
        for method_name in list(tree.methods):
            _type_method(tree.methods, method_name)
    study = OmegaConf.to_object(tree)
    if not isinstance(study, StudyConfig):  # pragma: no cover - the schema guarantees it
        raise TypeError(f"composition produced {type(study).__name__}, not StudyConfig")
    resolved = OmegaConf.to_container(tree, resolve=True)
    resolved["methods"] = {name: ffw.to_dict() for name, ffw in study.methods.items()}
    return study, OmegaConf.to_yaml(resolved)


def _type_method(methods: Any, method_name: str) -> None:
    """Replace ``methods[method_name]`` (a mapping with a ``family`` key) by a node of
    that family's config class holding the same values, checked and converted."""
    from omegaconf import OmegaConf, read_write

    values = methods[method_name]
    values = OmegaConf.to_container(values, resolve=True) if OmegaConf.is_config(values) else values
    config_class = ffw_config_class(values, where=f"methods.{method_name}")
    methods[method_name] = OmegaConf.structured(config_class)
    with read_write(methods[method_name]):
        methods[method_name].merge_with({key: value for key, value in values.items() if key != "family"})


def _frozen_nodes(tree: Any) -> list[Any]:
    """The nodes of a fresh ``StudyConfig`` schema that OmegaConf marks read-only:
    the root and each child typed by a (frozen) dataclass."""
    from omegaconf import OmegaConf

    return [tree, *(tree[key] for key in tree
                    if not OmegaConf.is_missing(tree, key) and is_dataclass(OmegaConf.get_type(tree, key)))]


def check_input_files(data: DataConfig) -> None:
    """Every local file the study reads (``data.paths``, evaluation files) must be
    readable now, before anything is planned or submitted."""
    from isoflop.data_sources import resolve_paths

    if data.source == "files":
        resolve_paths(data.paths)
    for dataset in data.eval_datasets:
        if dataset.source == "files":
            resolve_paths([dataset.path], where=f"data.eval_datasets[{dataset.name}].path")


def _explain(error: Exception) -> str:
    """One line for a Hydra/OmegaConf error, with the fix."""
    cause = error
    while cause.__cause__ is not None and not isinstance(cause, UserError):
        cause = cause.__cause__
    if isinstance(cause, UserError):
        return cause.message
    text = " ".join(str(error).split())
    full_key = getattr(error, "full_key", None)
    unknown_override = re.match(r"Could not override '([^']+)'", text)
    placed = re.search(r"Did you mean to override one of (.+?)\?", text)
    if unknown_override and (placed or unknown_override.group(1) == METHOD_GROUP):
        group = unknown_override.group(1)  # a config group placed per method, given without its @methods.NAME
        where = (f"one of {placed.group(1)} (e.g. {placed.group(1).split(',')[0]}=OPTION)" if placed
                 else f"{group}@methods.NAME=OPTION for a method NAME of the study")
        return f"{group!r} is chosen per method: set {where}, or add a method with +{group}@methods.NAME=OPTION"
    if unknown_override or "not in struct" in text or "ConfigKeyError" in type(error).__name__ or "Key '" in text:
        key = unknown_override.group(1) if unknown_override else \
            full_key or (text.split("'")[1] if "'" in text else text)
        return (f"unknown config key {key!r}; check its spelling (every setting and its default is a field of "
                "the dataclasses in isoflop/study_config.py, models/config.py and models/ffw/*_config.py)")
    if "Could not find" in text or "MissingConfig" in type(error).__name__:
        missing = text.split(" Available options")[0]
        options = re.search(r"Available options in '([^']+)': (.+?) Config search path", text)
        if options:
            return f"{missing}; the options of {options.group(1)} are {', '.join(options.group(2).split())}"
        return f"{missing}; check the group option names under conf/"
    if "Missing mandatory value" in text:
        return f"missing value for {full_key or text}; set it on the command line (KEY=VALUE)"
    if full_key:
        return f"{full_key}: {text.split(' full_key:')[0]}; fix the value"
    return f"bad override or config: {text}; see conf/ for valid keys and values"
