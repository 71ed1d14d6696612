"""Hydra composition: conf/ + sweeps/<name>.yaml + overrides -> StudyConfig.

This is the only module that sees Hydra or OmegaConf objects: it merges the
composed tree into the typed schema (:class:`isoflop.study_config.StudyConfig`)
and returns plain dataclasses via ``OmegaConf.to_object``. Every composition
or validation problem becomes one :class:`UserError` line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from isoflop.errors import UserError
from isoflop.study_config import StudyConfig

DEFAULT_SWEEP = "peer_paper"


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


def _sweep_search_root(sweep: str, scratch: Path) -> tuple[Path, str]:
    """Search-path root whose ``sweeps/`` holds ``sweep``, and the sweep's name."""
    as_path = Path(sweep)
    names = available_sweeps()
    if sweep.endswith((".yaml", ".yml")) or as_path.is_file():
        if not as_path.is_file():
            raise UserError(f"--sweep {sweep}: no such file; pass a YAML file or one of {', '.join(names)}")
        (scratch / "sweeps").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(as_path, scratch / "sweeps" / f"{as_path.stem}.yaml")
        return scratch, as_path.stem
    if sweep not in names:
        raise UserError(f"--sweep {sweep}: unknown study; available: {', '.join(names)} "
                        "(or pass a path to a YAML file)")
    return config_root(), sweep


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
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    sweep = sweep or DEFAULT_SWEEP
    with tempfile.TemporaryDirectory(prefix="isoflop-sweep-") as scratch:
        search_root, sweep_name = _sweep_search_root(sweep, Path(scratch))
        all_overrides = [f"hydra.searchpath=[file://{search_root}]", f"+sweeps={sweep_name}", *overrides]
        if budgets:
            all_overrides.append(f"budgets=[{','.join(_format_budget(b) for b in budgets)}]")
        try:
            with initialize_config_dir(config_dir=str(config_root() / "conf"), version_base=None):
                composed = compose(config_name="config", overrides=all_overrides)
            schema = OmegaConf.structured(StudyConfig)
            _make_writable(schema)
            merged = OmegaConf.merge(schema, composed)
            resolved_yaml = OmegaConf.to_yaml(merged, resolve=True)
            study = OmegaConf.to_object(merged)
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            raise UserError(_explain(error)) from None
    if not isinstance(study, StudyConfig):  # pragma: no cover - schema guarantees it
        raise TypeError(f"composition produced {type(study).__name__}, not StudyConfig")
    return ComposedStudy(study=study, resolved_yaml=resolved_yaml, sweep=sweep_name)


def _make_writable(node) -> None:  # noqa: ANN001 - an OmegaConf node
    """Clear the read-only flag that frozen dataclasses put on every schema node,
    so the composed values can be merged in (the dataclasses stay frozen)."""
    from omegaconf import DictConfig, ListConfig

    node._set_flag("readonly", False)
    if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
        for key in node.keys():
            _make_writable(node._get_node(key))
    elif isinstance(node, ListConfig) and not node._is_missing() and not node._is_none():
        for index in range(len(node)):
            _make_writable(node._get_node(index))


def _explain(error: Exception) -> str:
    """One line for a Hydra/OmegaConf error, with the fix."""
    cause = error
    while cause.__cause__ is not None and not isinstance(cause, UserError):
        cause = cause.__cause__
    if isinstance(cause, UserError):
        return cause.message
    text = " ".join(str(error).split())
    full_key = getattr(error, "full_key", None)
    if "not in struct" in text or "ConfigKeyError" in type(error).__name__ or "Key '" in text:
        key = full_key or (text.split("'")[1] if "'" in text else text)
        return (f"unknown config key {key!r}; check the spelling against conf/ (or add it with "
                f"+{key}=VALUE if it is meant to be new)")
    if "Could not find" in text or "MissingConfig" in type(error).__name__:
        return f"{text.split(' Available options')[0]}; check the group option names under conf/"
    if "Missing mandatory value" in text:
        return f"missing value for {full_key or text}; set it on the command line (KEY=VALUE)"
    if full_key:
        return f"{full_key}: {text.split(' full_key:')[0]}; fix the value"
    return f"bad override or config: {text}; see conf/ for valid keys and values"
