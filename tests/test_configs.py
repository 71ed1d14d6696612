"""Every config in conf/ and every sweep composes into a valid StudyConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from isoflop.compose import available_sweeps, config_root, load_study
from isoflop.planner import plan
from isoflop.study_config import ModelTemplate, StudyConfig
from models.config import FFW_FAMILIES

CONF = config_root() / "conf"


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("sweep", available_sweeps())
def test_every_sweep_composes(sweep: str) -> None:
    composed = load_study(sweep)
    assert isinstance(composed.study, StudyConfig)
    assert composed.study.name == sweep
    assert composed.study.methods, "a study needs methods"


@pytest.mark.parametrize("group", ["model", "ladder", "train", "data", "cluster"])
def test_every_group_option_composes(group: str, tmp_path: Path) -> None:
    options = group_options(group)
    assert options, f"conf/{group} is empty"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a document\n")
    for option in options:
        overrides = [f"{group}={option}"]
        if group == "data" and option == "files":
            overrides.append(f"data.paths=[{corpus}]")
        composed = load_study("peer_paper", overrides)
        assert isinstance(composed.study, StudyConfig)


@pytest.mark.parametrize("ffw_option", group_options("model/ffw"))
def test_every_ffw_option_composes_as_a_method(ffw_option: str) -> None:
    composed = load_study("peer_paper", [f"+model/ffw@methods.extra={ffw_option}"])
    ffw = composed.study.methods["extra"]
    assert isinstance(ffw, FFW_FAMILIES.get(ffw.family))


@pytest.mark.parametrize("family", FFW_FAMILIES.names())
def test_every_registered_family_composes_with_its_dataclass_defaults(family: str) -> None:
    composed = load_study("peer_paper", [f"+ffw_family@methods.extra={family}"])
    assert composed.study.methods["extra"] == FFW_FAMILIES.get(family)().with_backbone_settings(ModelTemplate())


@pytest.mark.parametrize("option, expected", [
    ("token_choice", {"router": "softmax", "init": "default", "n_experts": 16, "top_k": 4,
                      "load_balance_weight": 0.0, "capacity_factor": None}),
    ("switch", {"router": "softmax", "top_k": 1, "load_balance_weight": 0.01, "capacity_factor": 1.25}),
    ("sigma_moe", {"router": "sigmoid", "init": "sigma_moe", "entropy_weight": 0.001, "expert_dropout": 0.05,
                   "top_k": 4}),
    ("sbase", {"router": "sinkhorn", "top_k": 1, "init": "default"}),
])
def test_token_choice_options_are_their_papers_settings(option: str, expected: dict) -> None:
    ffw = load_study("peer_paper", [f"+model/ffw@methods.extra={option}"]).study.methods["extra"]
    assert {name: getattr(ffw, name) for name in expected} == expected


@pytest.mark.parametrize("overrides", [["model.activation=swiglu"], ["model=all_blocks"],
                                       ["model.activation=relu", "model.replace_blocks=[0]"]])
def test_the_dense_method_is_the_backbones_dense_ffw_in_every_block(overrides: list[str]) -> None:
    study = load_study("tiny", overrides).study
    dense_runs = [run for run in plan(study).runs if run.method == "dense"]
    assert dense_runs
    for run in dense_runs:
        blocks = {run.model.block_ffw(index) for index in range(run.model.backbone.n_layers)}
        assert blocks == {run.model.backbone.dense_ffw()}
        assert run.model.ffw.activation == study.model.activation


def test_a_dense_method_keeps_an_activation_it_sets_itself() -> None:
    study = load_study("tiny", ["model.activation=swiglu", "methods.dense.activation=relu"]).study
    assert study.methods["dense"].activation == "relu"
    python_study = StudyConfig(name="s", budgets=[1e12], methods={"dense": {"family": "dense"}},
                               model=ModelTemplate(activation="relu"))
    assert python_study.methods["dense"].activation == "relu"


def test_method_values_are_typed_by_their_family() -> None:
    peer = load_study("peer_paper", ["methods.peer.top_k=8", "methods.peer.query_batchnorm=false",
                                     "methods.moe.capacity_factor=2"]).study.methods
    assert (peer["peer"].top_k, peer["peer"].query_batchnorm) == (8, False)
    assert isinstance(peer["moe"].capacity_factor, float)


def test_peer_paper_study_matches_the_paper() -> None:
    study = load_study("peer_paper").study
    assert study.budgets == (6e18, 2e19)
    assert set(study.methods) == {"dense", "moe", "pkm", "peer"}
    moe, pkm, peer = study.methods["moe"], study.methods["pkm"], study.methods["peer"]
    assert (moe.family, moe.n_experts, moe.expert_size) == ("expert_choice_moe", 128, None)
    assert (pkm.n_experts, pkm.n_heads, pkm.top_k, pkm.query_batchnorm) == (1024**2, 8, 32, True)
    assert (peer.n_experts, peer.n_heads, peer.top_k, peer.query_batchnorm) == (1024**2, 8, 16, True)
    assert study.model.replace_blocks == "middle"
    assert (study.train.batch_size, study.train.seq_len) == (128, 2048)
    assert (study.data.source, study.data.name) == ("hub", "allenai/c4")


def test_overrides_are_applied_last() -> None:
    study = load_study("peer_paper", ["methods.peer.top_k=8", "train.batch_size=64"], budgets=[1e19]).study
    assert study.methods["peer"].top_k == 8
    assert study.train.batch_size == 64
    assert study.budgets == (1e19,)


def test_a_sweep_file_outside_the_repository_composes(tmp_path: Path) -> None:
    sweep = tmp_path / "mine.yaml"
    sweep.write_text("# @package _global_\ndefaults:\n  - /model/ffw@methods.dense: dense\n  - _self_\n"
                     "name: mine\nbudgets: [1.0e17]\n")
    study = load_study(str(sweep)).study
    assert study.name == "mine" and list(study.methods) == ["dense"]
