"""Every config in conf/ and every sweep composes into a valid StudyConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from isoflop.compose import available_sweeps, config_root, load_study
from isoflop.study_config import StudyConfig

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
def test_every_group_option_composes(group: str) -> None:
    options = group_options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        overrides = [f"{group}={option}"]
        if group == "data" and option == "files":
            overrides.append("data.paths=[corpus.txt]")
        composed = load_study("peer_paper", overrides)
        assert isinstance(composed.study, StudyConfig)


@pytest.mark.parametrize("ffw_option", group_options("model/ffw"))
def test_every_ffw_option_composes_as_a_method(ffw_option: str) -> None:
    composed = load_study("peer_paper", [f"+model/ffw@methods.extra={ffw_option}"])
    ffw = composed.study.methods["extra"]
    assert ffw.family in {"dense", "topk_activation", "token_choice_moe", "expert_choice_moe", "pkm", "peer"}


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
