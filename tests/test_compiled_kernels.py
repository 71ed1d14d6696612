"""The C kernels of the CPU product-key path (kernels/compiled.py, row_topk, prefix_norm).

Each must give exactly what the PyTorch path gives, bit for bit, so that a model trains the
same with or without a C compiler: ``row_topk`` against ``torch.topk`` (ties and NaN
included), the C prefix normalisation against its torch path, and whole PEER and PKM layers
with the kernels on and off (``ISOFLOP_COMPILED_KERNELS=off``). The build cache survives a
corrupt library, and without a compiler everything falls back with one warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from kernels import compiled, row_topk as row_topk_module
from kernels.row_topk import best_pairs_compiled, row_topk, uses_compiled
from models.builder import build_ffw
from models.ffw import prefix_norm
from models.ffw.peer_config import PEERConfig
from models.ffw.product_keys import _best_pairs_torch, best_pairs, candidate_pairs
from models.ffw.pkm_config import PKMConfig
from models.ffw.prefix_norm import PrefixQueryNorm

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


def clear_loaded_kernels() -> None:
    """Forget every loaded library and the build folder, so the next call builds or loads afresh."""
    for cached in (compiled.load, compiled._folder, row_topk_module._functions, prefix_norm._compiled_functions):
        cached.cache_clear()


@pytest.fixture
def fresh_build_folder(tmp_path, monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("ISOFLOP_CACHE_DIR", str(tmp_path / "cache"))
    clear_loaded_kernels()
    yield
    clear_loaded_kernels()


def assert_same_topk(scores: torch.Tensor, top_k: int) -> None:
    values, indices = row_topk(scores, top_k)
    expected_values, expected_indices = torch.topk(scores, top_k, dim=-1)
    assert torch.equal(indices, expected_indices)
    assert torch.equal(values, expected_values) or torch.equal(values.isnan(), expected_values.isnan())
    assert torch.equal(values.nan_to_num(), expected_values.nan_to_num())


@pytest.mark.parametrize("shape,top_k", [((2, 2048, 256), 16), ((5, 300), 7), ((4, 64), 16), ((3, 50), 16),
                                         ((9, 16), 16), ((7, 33), 1), ((1, 1), 1), ((6, 4, 130), 32),
                                         ((2, 2048, 64), 8), ((4096, 20), 8), ((50, 17), 16), ((40, 3), 2),
                                         ((30, 65), 16), ((30, 64), 17)])
def test_row_topk_equals_torch_topk_on_random_scores(shape: tuple[int, ...], top_k: int) -> None:
    assert uses_compiled(torch.zeros(shape), top_k)
    assert_same_topk(torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))), top_k)


def test_row_topk_takes_torch_topks_choice_among_ties_and_nan() -> None:
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(12, 256, generator=generator)
    scores[0] = 0.0  # all tied, as the first position's scores under the prefix norm at initialisation
    scores[1, ::3] = 2.0  # many tied above the rest
    scores[2, :40] = scores[2, 40:80]  # each value twice
    scores[3, 5] = float("nan")
    scores[4, ::7] = float("nan")
    scores[5, 10], scores[5, 20] = 0.0, -0.0
    scores[6] = scores[6].round()  # small integers: ties everywhere
    scores[7, 3] = float("inf")
    scores[8] = -float("inf")
    for top_k in (1, 16, 64, 256):
        assert_same_topk(scores, top_k)
    for columns, top_k in ((48, 16), (64, 8), (20, 8), (9, 4)):  # rows of at most 64: the vector path
        assert_same_topk(scores[:, :columns], top_k)
    assert_same_topk(scores[:, :40], 17)  # the insertion path, with the same rows


def test_row_topk_on_strided_input_into_out_and_with_gradients() -> None:
    generator = torch.Generator().manual_seed(4)
    scores = torch.randn(256, 40, generator=generator).t()  # (40, 256), not contiguous
    out = (torch.empty(40, 8), torch.empty(40, 8, dtype=torch.int64))
    returned = row_topk(scores, 8, out=out)
    assert returned is out
    expected = torch.topk(scores, 8, dim=-1)
    assert torch.equal(out[0], expected.values) and torch.equal(out[1], expected.indices)
    strided_out = (torch.empty(8, 40).t(), torch.empty(8, 40, dtype=torch.int64).t())
    row_topk(scores, 8, out=strided_out)
    assert torch.equal(strided_out[1], expected.indices)

    leaf = scores.detach().clone().requires_grad_(True)
    values, _ = row_topk(leaf, 8)
    (values * torch.arange(8.0)).sum().backward()
    reference_leaf = scores.detach().clone().requires_grad_(True)
    (torch.topk(reference_leaf, 8).values * torch.arange(8.0)).sum().backward()
    assert torch.equal(leaf.grad, reference_leaf.grad)


def sorted_half_top_k(heads: int, tokens: int, top_k: int, n_keys: int, generator: torch.Generator,
                      integers: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, 2, M, k) per-half top-k scores, sorted descending, and sub-key ids, as ProductKeySearch makes them."""
    scores = torch.randn(heads, 2, tokens, n_keys, generator=generator)
    if integers:  # ties among the candidate sums everywhere
        scores = (scores * 2).round()
    return torch.topk(scores, top_k, dim=-1)


@pytest.mark.parametrize("top_k,n_keys,integers", [(8, 64, False), (16, 256, False), (32, 128, False),
                                                   (4, 16, False), (1, 8, False), (8, 64, True), (16, 32, True)])
def test_compiled_best_pairs_equal_the_torch_ops(top_k: int, n_keys: int, integers: bool) -> None:
    generator = torch.Generator().manual_seed(top_k + n_keys)
    half_top, half_index = sorted_half_top_k(3, 700, top_k, n_keys, generator, integers)
    first_rank, second_rank = candidate_pairs(top_k, half_top.device)
    compiled = best_pairs_compiled(*half_top.unbind(1), *half_index.unbind(1), first_rank, second_rank, n_keys)
    assert compiled is not None
    assert bool(compiled[-1].any()) == integers  # tied rows are flagged for the torch ops to redo
    expected = _best_pairs_torch(half_top, half_index, first_rank, second_rank, n_keys, half_dim=1)
    for got, want in zip(best_pairs(half_top, half_index, top_k, n_keys, half_dim=1), expected):
        assert torch.equal(got, want)
    moved = (half_top.movedim(1, -2), half_index.movedim(1, -2))  # halves stacked along another dimension
    for got, want in zip(best_pairs(*moved, top_k, n_keys, half_dim=-2),
                         _best_pairs_torch(*moved, first_rank, second_rank, n_keys, half_dim=-2)):
        assert torch.equal(got, want)


def test_best_pairs_keeps_the_graph_with_the_torch_ops(monkeypatch) -> None:
    half_top, half_index = sorted_half_top_k(2, 50, 8, 64, torch.Generator().manual_seed(5))
    leaf = half_top.clone().requires_grad_(True)
    scores, _, _ = best_pairs(leaf, half_index, 8, 64, half_dim=1)
    scores.sum().backward()
    assert leaf.grad is not None and leaf.grad.sum().item() == 2 * 2 * 50 * 8  # each best sum: one a, one b
    monkeypatch.setenv(compiled.SWITCH_ENV, "off")
    assert best_pairs_compiled(*half_top.unbind(1), *half_index.unbind(1), *candidate_pairs(8, half_top.device),
                               64) is None


def test_other_dtypes_and_devices_and_the_switch_use_torch_topk(monkeypatch) -> None:
    assert not uses_compiled(torch.zeros(4, 64, dtype=torch.float64), 8)
    assert not uses_compiled(torch.zeros(4, 64, dtype=torch.bfloat16), 8)
    assert not uses_compiled(torch.zeros(4, 64, device="meta"), 8)
    monkeypatch.setenv(compiled.SWITCH_ENV, "off")
    assert not uses_compiled(torch.zeros(4, 64), 8)
    assert not prefix_norm.compiled_pass(torch.zeros(1, 4, 8))


@pytest.mark.parametrize("batch,length,width", [(1, 2048, 2048), (3, 37, 24), (2, 130, 200), (1, 1, 8),
                                                (2, 7, 13), (1, 300, 64)])
def test_compiled_prefix_norm_equals_the_torch_path_bit_for_bit(monkeypatch, batch: int, length: int,
                                                                 width: int) -> None:
    generator = torch.Generator().manual_seed(length + width)
    norm = PrefixQueryNorm(width)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(width, generator=generator))
        norm.bias.copy_(0.5 * torch.randn(width, generator=generator))
    query = 3 * torch.randn(batch, length, width, generator=generator) + 1
    query[:, :, 0] = 2.5  # a constant feature: its variance is clamped at 0
    upstream = torch.randn(batch, length, width, generator=generator)
    results = {}
    for switch in ("on", "off"):
        monkeypatch.setenv(compiled.SWITCH_ENV, switch)
        assert prefix_norm.compiled_pass(query) == (switch == "on")
        leaf = query.clone().requires_grad_(True)
        norm.zero_grad(set_to_none=True)
        output = norm(leaf)
        output.backward(upstream)
        results[switch] = [output.detach(), leaf.grad, norm.weight.grad, norm.bias.grad]
    for on, off in zip(results["on"], results["off"]):
        assert torch.equal(on, off)


@pytest.mark.parametrize("config", [
    PEERConfig(n_experts=32**2, n_heads=4, top_k=8, d_key=32),
    PEERConfig(n_experts=16**2, n_heads=2, top_k=4, d_key=16, query_norm_statistics="batch"),
    PKMConfig(n_experts=16**2, n_heads=2, top_k=8, d_key=16),
], ids=["peer_prefix", "peer_batch", "pkm"])
def test_product_key_layers_train_the_same_with_and_without_the_kernels(monkeypatch, config) -> None:
    trained = {}
    for switch in ("on", "off"):
        monkeypatch.setenv(compiled.SWITCH_ENV, switch)
        torch.manual_seed(0)
        layer = build_ffw(config, 32, 2)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
        data = torch.randn(4, 2, 64, 32, generator=torch.Generator().manual_seed(1))
        for batch in data:
            optimizer.zero_grad()
            layer(batch).pow(2).mean().backward()
            optimizer.step()
        trained[switch] = [parameter.detach().clone() for parameter in layer.parameters()]
    for on, off in zip(trained["on"], trained["off"]):
        assert torch.equal(on, off)


def test_a_corrupt_library_is_built_again(fresh_build_folder) -> None:
    assert compiled.load("row_topk") is not None
    (library,) = compiled._folder().glob("row_topk-*.so")
    # e.g. cut short by a full disk; written beside and renamed, as truncating the file this
    # process has mapped would crash it
    corrupt = library.with_name("corrupt.tmp")
    corrupt.write_bytes(b"not a shared library")
    os.replace(corrupt, library)
    # a new process (this one keeps the first library loaded under that path)
    check = "import torch; from kernels import compiled; assert compiled.load('row_topk') is not None"
    subprocess.run([sys.executable, "-c", check], check=True, env=os.environ.copy())
    assert library.stat().st_size > 1000


def test_without_a_compiler_everything_falls_back_with_one_warning(fresh_build_folder, monkeypatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert not uses_compiled(torch.zeros(4, 64), 8)
    with pytest.warns(RuntimeWarning, match="'prefix_norm' unavailable"):
        assert not prefix_norm.compiled_pass(torch.zeros(1, 4, 8))
    assert_same_topk(torch.randn(8, 256), 16)


def test_a_changed_header_builds_a_new_library(fresh_build_folder, tmp_path, monkeypatch) -> None:
    sources = tmp_path / "kernels"
    sources.mkdir()
    for name in ("row_topk.c", "vector_clones.h"):
        shutil.copy(os.path.join(os.path.dirname(compiled.__file__), name), sources / name)
    monkeypatch.setattr(compiled, "__file__", str(sources / "compiled.py"))
    assert compiled.load("row_topk") is not None
    with (sources / "vector_clones.h").open("a") as header:
        header.write("/* changed */\n")
    compiled.load.cache_clear()
    assert compiled.load("row_topk") is not None
    assert len(list(compiled._folder().glob("row_topk-*.so"))) == 2
