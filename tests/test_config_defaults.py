"""The dataclasses own every default: no YAML value under conf/ or sweeps/ may
restate the value it lands on (a dataclass default, or what the options and
sweeps it builds on already set), and the options chosen by default, and each
FFW family's base option, set nothing (else they contradict the dataclass:
a study that chooses nothing must get exactly the dataclass defaults)."""

from __future__ import annotations

import shutil
import tempfile
import typing
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from isoflop.compose import FAMILY_GROUP, compose_tree, config_root
from isoflop.study_config import StudyConfig
from models.config import FFW_FAMILIES

FFW_GROUP = "model/ffw"
PROBE_METHOD = "probe"


def own_values(path: Path) -> dict[str, Any]:
    """What a YAML file sets itself (its defaults list left out)."""
    content = yaml.safe_load(path.read_text()) or {}
    return {key: value for key, value in content.items() if key != "defaults"}


def leaves(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, value) of every non-mapping value, mappings walked into."""
    found = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            found += leaves(value, (*prefix, str(key)))
        else:
            found.append(((*prefix, str(key)), value))
    return found


def list_element_class(path: tuple[str, ...]) -> type | None:
    """The dataclass of the elements of the list at ``path`` in the StudyConfig schema, if any."""
    current: Any = StudyConfig
    for name in path:
        if not (is_dataclass(current) and name in typing.get_type_hints(current)):
            return None
        current = typing.get_type_hints(current)[name]
    arguments = typing.get_args(current)
    return arguments[0] if typing.get_origin(current) is list and arguments and is_dataclass(arguments[0]) else None


def default_options(root: Path) -> set[str]:
    """``group/option`` of each option ``conf/config.yaml`` chooses by default."""
    entries = yaml.safe_load((root / "conf" / "config.yaml").read_text())["defaults"]
    return {f"{group}/{option}" for entry in entries if isinstance(entry, dict) for group, option in entry.items()}


def family_base_options() -> set[str]:
    """``model/ffw/<name>`` of the option named after each family's module (``peer``, ``token_choice``, ...)."""
    return {f"{FFW_GROUP}/{FFW_FAMILIES.get(family).module_path.rsplit('.', 1)[-1]}"
            for family in FFW_FAMILIES.names()}


def landing_tree(root: Path, yaml_file: Path, overrides: list[str]) -> Any:
    """The composed tree that ``yaml_file``'s own values land on: composed with a copy
    of the file that keeps its header and defaults list but sets nothing."""
    with tempfile.TemporaryDirectory(prefix="isoflop-landing-") as scratch_name:
        scratch = Path(scratch_name)
        for folder in ("conf", "sweeps"):
            shutil.copytree(root / folder, scratch / folder)
        content = yaml.safe_load(yaml_file.read_text()) or {}
        header = "".join(line + "\n" for line in yaml_file.read_text().splitlines() if line.startswith("# @"))
        stripped = yaml.safe_dump({"defaults": content["defaults"]}) if "defaults" in content else ""
        (scratch / yaml_file.relative_to(root)).write_text(header + stripped)
        return compose_tree(overrides, scratch, scratch / "conf")


def restatements(root: Path, only: str | None = None) -> list[str]:
    """Every YAML value under ``root/conf`` and ``root/sweeps`` (or only in the file
    ``only``, relative to ``root``) that restates what it lands on, and every value
    set by an option that must set nothing."""
    from omegaconf import OmegaConf

    must_be_empty = default_options(root) | family_base_options()
    problems = []
    files = sorted((root / "conf").rglob("*.yaml")) + sorted((root / "sweeps").glob("*.yaml"))
    for path in [root / only] if only else files:
        relative = path.relative_to(root).with_suffix("").as_posix()
        if relative == "conf/config":
            package, overrides = (), []
        elif relative.startswith("sweeps/"):
            package, overrides = (), [f"+sweeps={path.stem}"]
        else:
            group, option = relative.removeprefix("conf/").rsplit("/", 1)
            if group == FFW_GROUP:
                package, overrides = ("methods", PROBE_METHOD), [f"+{group}@methods.{PROBE_METHOD}={option}"]
            else:
                package, overrides = (group,), [f"{group}={option}"]
            if f"{group}/{option}" in must_be_empty and own_values(path):
                problems.append(f"{relative} sets {sorted(own_values(path))}: it must set nothing, "
                                "the dataclass defaults are what it stands for")
        base = OmegaConf.to_container(landing_tree(root, path, overrides), resolve=False)
        for leaf, value in leaves(own_values(path)):
            full_path = (*package, *leaf)
            landed: Any = base
            for name in full_path:
                landed = landed.get(name, "<unset>") if isinstance(landed, dict) else "<unset>"
            if value == landed:
                problems.append(f"{relative}: {'.'.join(leaf)}={value!r} restates what it lands on")
            element_class = list_element_class(full_path) if isinstance(value, list) else None
            for entry in value if element_class else ():
                defaults = element_class.__dataclass_fields__
                problems += [f"{relative}: {'.'.join(leaf)}[{entry.get('name', '?')}].{key}={item!r} restates "
                             f"the {element_class.__name__} default"
                             for key, item in entry.items() if key in defaults and defaults[key].default == item]
    return problems


def test_no_yaml_value_restates_or_contradicts_a_dataclass_default() -> None:
    assert restatements(config_root()) == []


def test_every_ffw_family_has_its_base_option() -> None:
    options = {path.stem for path in (config_root() / "conf" / FFW_GROUP).glob("*.yaml")}
    assert {option.rsplit("/", 1)[-1] for option in family_base_options()} <= options
    for family in FFW_FAMILIES.names():
        base = config_root() / "conf" / f"{FFW_GROUP}/{FFW_FAMILIES.get(family).module_path.rsplit('.', 1)[-1]}.yaml"
        assert yaml.safe_load(base.read_text())["defaults"] == [f"/{FAMILY_GROUP}/{family}@_here_"]


@pytest.mark.parametrize("relative, text, expected", [
    ("conf/cluster/slurm.yaml", "nodes: 1\n", "conf/cluster/slurm: nodes=1 restates"),
    ("conf/model/ffw/sigma_moe.yaml", "top_k: 4\n", "conf/model/ffw/sigma_moe: top_k=4 restates"),
    ("conf/model/ffw/switch.yaml", "router: softmax\n", "conf/model/ffw/switch: router='softmax' restates"),
    ("sweeps/smoke.yaml", "ladder:\n  tokens_per_param: 100.0\n", "sweeps/smoke: ladder.tokens_per_param=100.0"),
    ("sweeps/tiny.yaml", "methods:\n  peer: {top_k: 8, glu: false}\n", "sweeps/tiny: methods.peer.glu=False"),
    ("conf/train/default.yaml", "batch_size: 64\n", "conf/train/default sets ['batch_size']: it must set nothing"),
    ("conf/model/ffw/token_choice.yaml", "router: sigmoid\n", "conf/model/ffw/token_choice sets ['router']"),
    ("conf/data/c4.yaml", "eval_datasets:\n  - {name: c4, path: allenai/c4, split: validation}\n",
     "conf/data/c4: eval_datasets[c4].split='validation' restates the EvalDatasetConfig default"),
])
def test_the_check_finds_a_restated_or_contradicting_value(tmp_path: Path, relative: str, text: str,
                                                           expected: str) -> None:
    root = tmp_path / "root"
    for folder in ("conf", "sweeps"):
        shutil.copytree(config_root() / folder, root / folder)
    target = root / relative
    merged = {**(yaml.safe_load(target.read_text()) or {}), **yaml.safe_load(text)}
    header = "# @package _global_\n" if relative.startswith("sweeps/") else ""
    target.write_text(header + yaml.safe_dump(merged, sort_keys=False))
    problems = restatements(root, relative)
    assert any(problem.startswith(expected) for problem in problems), problems
