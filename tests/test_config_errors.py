"""Every bad setting or sweep file is one line on stderr naming the problem and
the fix, exit status 2, no traceback, and nothing written: through the real
CLI, for ``isoflop plan`` and ``isoflop submit --dry-run`` alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import SWEEP, isoflop
from isoflop.compose import load_study
from isoflop.errors import UserError

# (overrides, fragment of the one error line)
BAD_SETTINGS = [
    (["train.beta1=2"], "train.beta1=2.0: must be in [0, 1)"),
    (["train.beta1=nan"], "train.beta1=nan: must be in [0, 1)"),
    (["train.beta2=1"], "train.beta2=1.0: must be in [0, 1)"),
    (["train.weight_decay=-1"], "train.weight_decay=-1.0: must be a finite number >= 0"),
    (["train.weight_decay=inf"], "train.weight_decay=inf: must be a finite number >= 0"),
    (["train.grad_clip=-1"], "train.grad_clip=-1.0: must be a finite number >= 0"),
    (["train.grad_clip=nan"], "train.grad_clip=nan"),
    (["train.lr_base=inf"], "train.lr_base=inf: must be a finite number > 0"),
    (["train.lr_base=0"], "train.lr_base=0.0: must be a finite number > 0"),
    (["train.lr_max=nan"], "train.lr_max=nan"),
    (["train.lr_width_exponent=-inf"], "train.lr_width_exponent=-inf: must be a finite number"),
    (["train.warmup_fraction=1"], "train.warmup_fraction=1.0: must be in [0, 1)"),
    (["train.min_lr_fraction=1.5"], "train.min_lr_fraction=1.5: must be in [0, 1]"),
    (["train.batch_size=0"], "train.batch_size=0: must be a finite number > 0"),
    (["train.batch_size=1.5"], "train.batch_size: Value '1.5'"),
    (["train.seq_len=-128"], "train.seq_len=-128"),
    (["train.micro_batch_size=3"], "train.micro_batch_size=3: must divide batch_size=4"),
    (["train.eval_tokens=0"], "train.eval_tokens=0"),
    (["train.seed=-1"], "train.seed=-1: must be in [0, 2**32)"),
    (["train.seed=4294967296"], "train.seed=4294967296"),
    (["train.compile=maybe"], "train.compile: Value 'maybe' is not a valid bool"),
    (["train.sparse_tables=sometimes"], "train.sparse_tables: Value 'sometimes' is not a valid bool"),
    (["train.precision=fp8"], "train.precision='fp8': must be one of auto, fp32, bf16"),
    (["cluster.peak_flops=-1"], "cluster.peak_flops=-1.0: must be a finite number > 0"),
    (["cluster.peak_flops=inf"], "cluster.peak_flops=inf"),
    (["cluster.assumed_mfu=0"], "cluster.assumed_mfu=0.0: must be in (0, 1]"),
    (["cluster.assumed_mfu=nan"], "cluster.assumed_mfu=nan"),
    (["cluster.assumed_mfu=2"], "cluster.assumed_mfu=2.0"),
    (["cluster.mem_gb=-4"], "cluster.mem_gb=-4.0"),
    (["cluster.gpus_per_node=-1"], "cluster.gpus_per_node=-1: must be a finite number >= 0"),
    (["cluster.max_requeues=-1"], "cluster.max_requeues=-1"),
    (["cluster.timeout_min=0"], "cluster.timeout_min=0"),
    (["cluster.max_parallel=0"], "cluster.max_parallel=0"),
    (["cluster.executor=kubernetes"], "cluster.executor='kubernetes'"),
    (["cluster.additional_parameters=3"], "cluster.additional_parameters"),
    (["data=files", "data.paths=[missing.txt]"], "data.paths: missing.txt is not a readable file"),
    (["data=files"], "data.paths"),
    (["data.eval_datasets=[{name:heldout,source:files,path:missing.jsonl}]"],
     "data.eval_datasets[heldout].path: missing.jsonl is not a readable file"),
    (["data.eval_datasets=[{name:heldout,source:ftp}]"], "data.eval_datasets[heldout].source='ftp'"),
    (["data.validation_fraction=0"], "data.validation_fraction=0.0: must be in (0, 1)"),
    (["data.validation_fraction=nan"], "data.validation_fraction=nan"),
    (["data.vocab_size=-5"], "data.vocab_size=-5"),
    (["data.source=s3"], "data.source='s3'"),
    (["data.allow_multiple_epochs=often"], "data.allow_multiple_epochs"),
    (["model.ffw_multiplier=inf"], "model.ffw_multiplier=inf: must be a finite number > 0"),
    (["model.ffw_multiplier=nan"], "model.ffw_multiplier=nan"),
    (["model.ffw_multiplier=0"], "model.ffw_multiplier=0.0"),
    (["model.n_layers=0"], "model.n_layers=0: must be an integer > 0"),
    (["model.d_model=-64"], "model.d_model=-64"),
    (["model.d_model=100", "model.n_heads=8"], "divisible by n_heads=8"),
    (["model.activation=tanh"], "model.activation='tanh': must be one of relu, gelu, swiglu"),
    (["model.norm=batchnorm"], "model.norm='batchnorm'"),
    (["model.positions=alibi"], "model.positions='alibi'"),
    (["model.tie_embeddings=maybe"], "model.tie_embeddings: Value 'maybe' is not a valid bool"),
    (["model.replace_blocks=bogus"], "model.replace_blocks='bogus': must be middle, all, none or a list"),
    (["model.replace_blocks=3"], "model.replace_blocks=3"),
    (["model.replace_blocks=[-1]"], "model.replace_blocks=[-1]"),
    (["model.replace_blocks=[9]"], "index 9 is outside"),
    (["model.vocab_size=5"], "unknown config key 'model.vocab_size'"),
    (["ladder.size_ratio=inf"], "ladder.size_ratio=inf: must be a finite number >= 1"),
    (["ladder.size_ratio=0.5"], "ladder.size_ratio=0.5"),
    (["ladder.tokens_per_param=nan"], "ladder.tokens_per_param=nan"),
    (["ladder.min_steps=0"], "ladder.min_steps=0"),
    (["ladder.sizes_below=0"], "ladder.sizes_below=0"),
    (["ladder.head_dim=0"], "ladder.head_dim=0"),
    (["ladder.shapes=[[1,0,2]]"], "ladder.shapes=[1, 0, 2]"),
    (["ladder.shapes=[[1,32]]"], "ladder.shapes=[1, 32]"),
    (["budgets=[nan]"], "must be a finite positive number of FLOPs"),
    (["budgets=[-1]"], "must be a finite positive number of FLOPs"),
    (["budgets=[abc]"], "budgets[0]: Value 'abc'"),
    (["budgets=[]"], "needs at least one budget"),
    (["name=a/b"], "name='a/b'"),
    (["logger=tensorboard"], "logger='tensorboard'"),
    (["nosuch_key=1"], "unknown config key 'nosuch_key'"),
    (["methods.dense.d_ff=0"], "ffw dense.d_ff=0: must be a finite number > 0"),
    (["methods.dense.d_ff=abc"], "methods.dense.d_ff: Value 'abc'"),
    (["methods.dense.activation=tanh"], "ffw dense.activation='tanh'"),
    (["methods.dense.nosuch=1"], "unknown config key 'methods.dense.nosuch'"),
    (["+methods.dense.nosuch=1"], "methods.dense: unknown key 'nosuch' for family dense"),
    (["methods.dense.family=nosuch"], "methods.dense.family='nosuch' is not a known FFW family"),
    (["+methods.extra=3"], "methods.extra=3: an FFW layer is a mapping with a family key"),
    (["methods=null"], "methods"),
    (["+model/ffw@methods.extra=peer", "methods.extra.query_batchnorm=maybe"], "methods.extra.query_batchnorm"),
    (["+model/ffw@methods.extra=peer", "methods.extra.top_k=inf"], "methods.extra.top_k: Value 'inf'"),
    (["+model/ffw@methods.extra=peer", "methods.extra.n_experts=1000"], "perfect-square"),
    (["+model/ffw@methods.extra=sigma_moe", "methods.extra.entropy_weight=nan"],
     "ffw token_choice_moe.entropy_weight=nan: must be a finite number >= 0"),
    (["+model/ffw@methods.extra=sigma_moe", "methods.extra.expert_dropout=1"], "expert_dropout=1.0"),
    (["+model/ffw@methods.extra=switch", "methods.extra.capacity_factor=inf"], "capacity_factor=inf"),
    (["+model/ffw@methods.extra=expert_choice", "methods.extra.capacity_factor=-1"], "capacity_factor=-1.0"),
    (["+model/ffw@methods.extra=topk_activation", "methods.extra.k=0"], "ffw topk_activation.k=0"),
    (["+model/ffw@methods.extra=nosuch"], "model/ffw/nosuch"),
    (["model/ffw@methods.dense=nosuch"], "Could not find 'model/ffw/nosuch'; the options of model/ffw are dense, "),
    (["cluster=nosuch"], "the options of cluster are cpu, debug, local, slurm"),
    (["model/ffw=peer"], "'model/ffw' is chosen per method: set model/ffw@methods.NAME=OPTION for a method NAME"),
]

# file name -> (content, fragment); {path} is replaced by the file's path
BAD_SWEEP_FILES = {
    "syntax.yaml": ("# @package _global_\nname: bad\nbudgets: [1.0e17\n", "{path}: YAML syntax error at line"),
    "empty.yaml": ("", "{path} is empty; start it with '# @package _global_'"),
    "blank.yaml": ("\n  \n", "{path} is empty"),
    "no_header.yaml": ("defaults:\n  - /model/ffw@methods.dense: dense\nname: x\nbudgets: [1.0e17]\n",
                       "{path} does not start with '# @package _global_'; add that line at the top"),
    "comment_first.yaml": ("# my study\n# @package _global_\nname: x\n", "{path} does not start with"),
    "header_only.yaml": ("# @package _global_\n", "{path} holds no settings"),
    "a_list.yaml": ("# @package _global_\n- a\n- b\n", "{path} holds no settings"),
    "not_text.yaml": (b"# @package _global_\nname: \xff\xfe\n", "{path}: cannot read it (it is not UTF-8 text)"),
    "folder.yaml": (None, "{path}: cannot read it (Is a directory)"),
}


def assert_one_line_and_nothing_written(capsys: pytest.CaptureFixture, status: int, fragment: str,
                                        root: Path, kept: Path) -> None:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert ": error: " in lines[0] and fragment in lines[0], lines[0]
    assert captured.out == ""
    assert not root.exists()
    assert kept.read_text() == "kept"


@pytest.fixture
def kept(tmp_path: Path) -> Path:
    """A file that ``plan --out`` must leave as it was."""
    path = tmp_path / "plan.csv"
    path.write_text("kept")
    return path


@pytest.mark.parametrize("command", ["plan", "submit"])
@pytest.mark.parametrize("overrides, fragment", BAD_SETTINGS, ids=[" ".join(case[0]) for case in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture, kept: Path,
                                                      command: str, overrides: list[str], fragment: str) -> None:
    root = tmp_path / "sweeps"
    where = ["--out", kept] if command == "plan" else ["--dry-run", "--root", root]
    status = isoflop(command, "--sweep", SWEEP, *where, *overrides)
    assert_one_line_and_nothing_written(capsys, status, fragment, root, kept)


@pytest.mark.parametrize("command", ["plan", "submit"])
@pytest.mark.parametrize("name", sorted(BAD_SWEEP_FILES))
def test_a_bad_sweep_file_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture, kept: Path,
                                                command: str, name: str) -> None:
    content, fragment = BAD_SWEEP_FILES[name]
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    root = tmp_path / "sweeps"
    where = ["--out", kept] if command == "plan" else ["--dry-run", "--root", root]
    status = isoflop(command, "--sweep", path, *where)
    assert_one_line_and_nothing_written(capsys, status, fragment.format(path=path), root, kept)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_an_unreadable_sweep_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, kept: Path) -> None:
    path = tmp_path / "locked.yaml"
    path.write_text("# @package _global_\nname: locked\n")
    path.chmod(0)
    status = isoflop("plan", "--sweep", path, "--out", kept)
    assert_one_line_and_nothing_written(capsys, status, f"{path}: cannot read it (Permission denied)",
                                        tmp_path / "sweeps", kept)


def test_a_per_method_group_without_its_method_names_the_methods_to_choose() -> None:
    with pytest.raises(UserError, match=r"'model/ffw' is chosen per method: set one of model/ffw@methods\.dense, "
                                        r"model/ffw@methods\.moe, .*\(e\.g\. model/ffw@methods\.dense=OPTION\)"):
        load_study("smoke", ["model/ffw=peer"])
