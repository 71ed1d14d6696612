"""The C causal attention (kernels/causal_attention.py) against ``F.scaled_dot_product_attention``.

It need not equal SDPA bit for bit, only to float32 rounding: its output and its three
gradients must be as close to a float64 reference as SDPA's own float32 results are, at the
project's shapes and at awkward ones (odd and tiny head dims, one token, lengths that are no
multiple of the vector width, a single head, longer sequences), and stay finite where the
scores are large. Strides, the thread count and grad mode change nothing, bit for bit. Where
the C path does not apply (switched off, float64, meta tensors, no compiler) the result is
SDPA's exactly. With rotary tables the C path rotates the queries and keys itself, and its
output and three gradients are bit for bit those of ``apply_rotary`` followed by the C path
(inputs strided as the model makes them, whole models too); elsewhere ``apply_rotary`` and SDPA
run themselves. (Without AVX2 + FMA or AVX-512 the C path is not taken; the tests that need it
skip.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from kernels import causal_attention as attention_module
from kernels import compiled
from kernels.causal_attention import causal_attention, uses_compiled
from kernels.rotary import apply_rotary, rotary_tables
from models import build_model
from models.config import BackboneConfig, ModelConfig, ffw_config_from_dict

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")

Shape = tuple[int, int, int, int]


@pytest.fixture
def kernels() -> None:
    """Skips where the C kernels do not run: not vectorised (kernels.causal_attention._functions)."""
    if attention_module._functions() is None:
        pytest.skip("the C causal attention runs only where it is vectorised (x86-64, GCC, AVX2 + FMA)")


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, is_causal=True)


def random_inputs(shape: Shape, seed: int, magnitude: float = 1.0) -> list[torch.Tensor]:
    """query and key (times magnitude: scores ~ magnitude² sqrt(D)), value and an upstream gradient."""
    generator = torch.Generator().manual_seed(seed)
    query, key, value, upstream = (torch.randn(shape, generator=generator) for _ in range(4))
    return [query * magnitude, key * magnitude, value, upstream]


def output_and_gradients(function: Callable[..., torch.Tensor], query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, upstream: torch.Tensor,
                         dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """[out, dL/dquery, dL/dkey, dL/dvalue] with L = sum(out * upstream), computed in ``dtype``."""
    leaves = [tensor.detach().to(dtype).requires_grad_(True) for tensor in (query, key, value)]
    out = function(*leaves)
    out.backward(upstream.to(dtype))
    return [out.detach(), *(leaf.grad for leaf in leaves)]


def assert_as_accurate_as_sdpa(shape: Shape, seed: int, magnitude: float = 1.0, slack: float = 4 * 2**-24) -> None:
    """Each of out, dQ, dK, dV: finite, and within 4x SDPA's float32 error plus slack times its
    largest value (4 ulp by default) of the float64 reference."""
    inputs = random_inputs(shape, seed, magnitude)
    assert uses_compiled(*inputs[:3])
    ours = output_and_gradients(causal_attention, *inputs)
    theirs = output_and_gradients(sdpa, *inputs)
    reference = output_and_gradients(sdpa, *inputs, dtype=torch.float64)
    for name, mine, sdpa_result, exact in zip(("out", "dQ", "dK", "dV"), ours, theirs, reference):
        assert mine.dtype == torch.float32 and mine.shape == exact.shape and mine.isfinite().all(), name
        error = (mine.double() - exact).abs().max().item()
        sdpa_error = (sdpa_result.double() - exact).abs().max().item()
        assert error <= 4 * sdpa_error + slack * exact.abs().max().item(), (name, error, sdpa_error)


@pytest.mark.parametrize("shape", [
    (16, 3, 128, 16),  # the project's shapes
    (16, 2, 128, 8),
    (4, 2, 128, 20),
    (2, 3, 37, 13),    # odd D, T no multiple of 8 or 16
    (3, 2, 130, 6),
    (1, 1, 17, 20),    # one (batch, head)
    (1, 1, 1, 8),      # one token: dQ = dK = 0
    (2, 1, 5, 1),      # D = 1
    (1, 2, 300, 12),   # longer
], ids=lambda shape: "x".join(map(str, shape)))
def test_output_and_gradients_are_as_accurate_as_sdpas(kernels, shape: Shape) -> None:
    assert_as_accurate_as_sdpa(shape, seed=sum(shape))


@pytest.mark.parametrize("shape", [(4, 3, 128, 16), (2, 2, 37, 13), (1, 1, 300, 6)],
                         ids=lambda shape: "x".join(map(str, shape)))
def test_large_scores_stay_finite_and_accurate(kernels, shape: Shape) -> None:
    # query and key times 30: scores near a thousand, softmax rows nearly one-hot, most
    # probabilities underflow to 0 (e^x below 2^-126.5 is returned as 0). A score's own float32
    # rounding (its ulp: 6e-5) moves its probability by ~1e-4 relative, so any float32 kernel's
    # gradients are off by ~1e-4 of the largest (SDPA's by 2e-5 to 5e-4 here, the C's likewise).
    assert_as_accurate_as_sdpa(shape, seed=7, magnitude=30.0, slack=1e-3)


def test_strided_inputs_and_gradients_give_the_same_bits(kernels) -> None:
    batch, length, heads, dim = 3, 45, 3, 10
    generator = torch.Generator().manual_seed(11)
    packed = torch.randn(batch, length, 3 * heads * dim, generator=generator)  # as qkv(x) gives it
    query, key, value = (part.view(batch, length, heads, dim).transpose(1, 2)
                         for part in packed.split(heads * dim, -1))
    assert not any(tensor.is_contiguous() for tensor in (query, key, value))
    upstream = torch.randn(batch, length, heads, dim, generator=generator).transpose(1, 2)  # strided too
    strided = output_and_gradients(causal_attention, query, key, value, upstream)
    contiguous = output_and_gradients(causal_attention, *(tensor.contiguous() for tensor in
                                                          (query, key, value, upstream)))
    for first, second in zip(strided, contiguous):
        assert torch.equal(first, second)
    assert strided[0].is_contiguous()

    # an expanded upstream gradient (strides 0), as out.sum().backward() gives
    leaves = [tensor.detach().clone().requires_grad_(True) for tensor in (query, key, value)]
    causal_attention(*leaves).sum().backward()
    expected = output_and_gradients(causal_attention, query, key, value, torch.ones(query.shape))
    for leaf, gradient in zip(leaves, expected[1:]):
        assert torch.equal(leaf.grad, gradient)


def test_the_thread_count_changes_nothing(kernels) -> None:
    inputs = random_inputs((5, 3, 70, 12), seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = output_and_gradients(causal_attention, *inputs)
        torch.set_num_threads(2)
        two = output_and_gradients(causal_attention, *inputs)
    finally:
        torch.set_num_threads(threads)
    for first, second in zip(one, two):
        assert torch.equal(first, second)


def test_without_gradients_the_output_is_the_same(kernels) -> None:
    inputs = random_inputs((2, 3, 100, 12), seed=5)
    with_gradients = output_and_gradients(causal_attention, *inputs)
    with torch.no_grad():
        assert torch.equal(causal_attention(*inputs[:3]), with_gradients[0])
    with torch.inference_mode():
        assert torch.equal(causal_attention(*inputs[:3]), with_gradients[0])


def test_inputs_without_gradient_get_none(kernels) -> None:
    query, key, value, upstream = random_inputs((2, 2, 20, 8), seed=9)
    query.requires_grad_(True)
    causal_attention(query, key, value).backward(upstream)
    expected = output_and_gradients(causal_attention, query, key, value, upstream)
    assert torch.equal(query.grad, expected[1])
    assert key.grad is None and value.grad is None


def test_other_dtypes_devices_and_the_switch_take_sdpa_exactly(kernels, monkeypatch) -> None:
    inputs = random_inputs((2, 2, 33, 8), seed=4)
    assert uses_compiled(*inputs[:3])
    monkeypatch.setenv(compiled.SWITCH_ENV, "off")
    assert not uses_compiled(*inputs[:3])
    for mine, theirs in zip(output_and_gradients(causal_attention, *inputs), output_and_gradients(sdpa, *inputs)):
        assert torch.equal(mine, theirs)
    monkeypatch.delenv(compiled.SWITCH_ENV)
    for dtype in (torch.float64, torch.bfloat16):
        mine = output_and_gradients(causal_attention, *inputs, dtype=dtype)
        theirs = output_and_gradients(sdpa, *inputs, dtype=dtype)
        assert all(torch.equal(first, second) for first, second in zip(mine, theirs))
    meta = [torch.empty(2, 2, 33, 8, device="meta") for _ in range(3)]
    assert not uses_compiled(*meta)
    assert causal_attention(*meta).shape == (2, 2, 33, 8)  # as models/verify.py counts FLOPs
    assert not uses_compiled(inputs[0], inputs[1][:, :, :-1], inputs[2][:, :, :-1])  # unequal shapes
    long = torch.zeros(1, 1, attention_module.MAX_LENGTH + 1, 4)
    assert not uses_compiled(long, long, long)


@pytest.fixture
def no_compiler(tmp_path, monkeypatch) -> Iterator[None]:
    """A fresh build folder and no C compiler; the loaded libraries are forgotten before and after."""
    monkeypatch.setenv("ISOFLOP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    for cached in (compiled.load, compiled._folder, attention_module._functions):
        cached.cache_clear()
    yield
    monkeypatch.undo()
    for cached in (compiled.load, compiled._folder, attention_module._functions):
        cached.cache_clear()


def test_without_a_compiler_it_warns_once_and_takes_sdpa(no_compiler) -> None:
    inputs = random_inputs((1, 2, 9, 4), seed=2)
    with pytest.warns(RuntimeWarning, match="'causal_attention' unavailable"):
        assert not uses_compiled(*inputs[:3])
    for mine, theirs in zip(output_and_gradients(causal_attention, *inputs), output_and_gradients(sdpa, *inputs)):
        assert torch.equal(mine, theirs)


def projected_inputs(shape: Shape, seed: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """A leaf (B, T, 3 H D) projection, its query, key and value (B, H, T, D) as the model makes them (strided
    views of its split) and an upstream gradient."""
    batch, heads, length, dim = shape
    generator = torch.Generator().manual_seed(seed)
    packed = (3 * torch.randn(batch, length, 3 * heads * dim, generator=generator)).requires_grad_(True)
    parts = [part.view(batch, length, heads, dim).transpose(1, 2) for part in packed.split(heads * dim, -1)]
    return packed, parts, torch.randn(shape, generator=generator)


def unfused(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The reference: the rotation by ``apply_rotary``, then the attention."""
    return causal_attention(apply_rotary(query, rotary), apply_rotary(key, rotary), value)


def rotated_outputs(function: Callable[..., torch.Tensor], shape: Shape, seed: int,
                    dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """[out, dQ, dK, dV] of ``function(query, key, value, tables)`` on projected inputs in ``dtype``."""
    packed, parts, upstream = projected_inputs(shape, seed)
    parts = [part.to(dtype) for part in parts]
    out = function(*parts, rotary_tables(shape[2], shape[3], packed.device))
    return [out.detach(), *torch.autograd.grad(out, parts, upstream.to(dtype))]


ROTARY_SHAPES = [
    (16, 3, 128, 16),  # the project's shapes
    (16, 2, 128, 8),
    (3, 5, 37, 6),     # odd head count, T no multiple of 8 or 16
    (2, 7, 37, 26),
    (2, 3, 1, 16),     # one token
    (1, 1, 128, 2),    # D = 2: one pair
    (2, 3, 37, 2),
]


@pytest.mark.parametrize("shape", ROTARY_SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_fused_rotation_gives_apply_rotarys_bits(kernels, shape: Shape) -> None:
    packed, parts, _ = projected_inputs(shape, seed=sum(shape))
    tables = rotary_tables(shape[2], shape[3], packed.device)
    assert uses_compiled(*parts) and attention_module._fused_tables(parts[0], tables) is not None
    fused = rotated_outputs(causal_attention, shape, seed=sum(shape))
    reference = rotated_outputs(unfused, shape, seed=sum(shape))
    for name, mine, theirs in zip(("out", "dQ", "dK", "dV"), fused, reference):
        assert mine.shape == theirs.shape and torch.equal(mine, theirs), name
    with torch.no_grad():  # no autograd node: the same forward
        assert torch.equal(causal_attention(*parts, tables), fused[0])


def test_fused_rotation_of_contiguous_inputs_and_one_gradient(kernels) -> None:
    shape = (2, 3, 45, 10)
    tables = rotary_tables(shape[2], shape[3], torch.device("cpu"))
    query, key, value, upstream = random_inputs(shape, seed=12)
    query.requires_grad_(True)  # key and value get no gradient
    causal_attention(query, key, value, tables).backward(upstream)
    leaf = query.detach().requires_grad_(True)
    unfused(leaf, key, value, tables).backward(upstream)
    assert torch.equal(query.grad, leaf.grad) and key.grad is None and value.grad is None


def test_tables_the_c_does_not_read_are_applied_by_apply_rotary(kernels) -> None:
    shape = (2, 3, 37, 8)
    tables = rotary_tables(shape[2], shape[3], torch.device("cpu"))
    reference = rotated_outputs(unfused, shape, seed=6)
    # float64 tables (converted to float32, as apply_rotary converts them) and strided ones: fused
    for other in ((tables[0].double(), tables[1].double()), tuple(table.t().contiguous().t() for table in tables)):
        mine = rotated_outputs(lambda q, k, v, _, other=other: causal_attention(q, k, v, other), shape, seed=6)
        assert all(torch.equal(first, second) for first, second in zip(mine, reference))
    # tables to be differentiated, or broadcast from one position: apply_rotary, then the C path
    for other in (tuple(table.clone().requires_grad_(True) for table in tables), (tables[0][:1], tables[1][:1])):
        _, parts, upstream = projected_inputs(shape, seed=6)
        assert attention_module._fused_tables(parts[0], other) is None
        mine, theirs = causal_attention(*parts, other), unfused(*parts, other)
        assert torch.equal(mine, theirs)
        leaves = [*parts, *(table for table in other if table.requires_grad)]
        for first, second in zip(torch.autograd.grad(mine, leaves, upstream),
                                 torch.autograd.grad(theirs, leaves, upstream)):
            assert torch.equal(first, second)


def sdpa_rotated(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """What the models computed before the C attention: ``apply_rotary``, then SDPA."""
    return sdpa(apply_rotary(query, rotary), apply_rotary(key, rotary), value)


@pytest.mark.parametrize("shape", [(2, 3, 37, 6), (2, 2, 16, 16)], ids=lambda shape: "x".join(map(str, shape)))
def test_without_the_c_path_rotation_and_sdpa_are_the_models_exactly(shape: Shape, monkeypatch) -> None:
    for dtype in (torch.float64, torch.bfloat16):
        mine = rotated_outputs(causal_attention, shape, seed=8, dtype=dtype)
        theirs = rotated_outputs(sdpa_rotated, shape, seed=8, dtype=dtype)
        assert all(torch.equal(first, second) for first, second in zip(mine, theirs))
    monkeypatch.setattr(compiled, "enabled", lambda: False)
    assert not uses_compiled(*projected_inputs(shape, seed=8)[1])
    mine = rotated_outputs(causal_attention, shape, seed=8)
    theirs = rotated_outputs(sdpa_rotated, shape, seed=8)
    assert all(torch.equal(first, second) for first, second in zip(mine, theirs))
    meta = [torch.empty(shape, device="meta") for _ in range(3)]
    assert causal_attention(*meta, rotary_tables(shape[2], shape[3], torch.device("meta"))).shape == shape


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_a_whole_model_trains_the_same_bits_with_the_rotation_fused(kernels, positions: str, monkeypatch) -> None:
    backbone = BackboneConfig(n_layers=2, d_model=48, n_heads=3, vocab_size=64, max_seq_len=40, positions=positions)
    ffw = ffw_config_from_dict({"family": "dense", "activation": "relu"}).resolve(48, backbone.ffw_multiplier)
    tokens = torch.randint(0, 64, (4, 37), generator=torch.Generator().manual_seed(1))

    def logits_and_gradients() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone, ffw)).train()
        logits = model(tokens)
        logits.square().mean().backward()
        return [logits.detach(), *(parameter.grad for parameter in model.parameters())]

    calls = []
    fused_tables = attention_module._fused_tables
    monkeypatch.setattr(attention_module, "_fused_tables", lambda *args: calls.append(1) or fused_tables(*args))
    fused = logits_and_gradients()
    assert len(calls) == (2 if positions == "rotary" else 0)  # each block's attention fused its rotation
    monkeypatch.setattr(attention_module, "_fused_tables", lambda *args: None)  # apply_rotary, then the C path
    reference = logits_and_gradients()
    assert len(fused) == len(reference)
    assert all(torch.equal(first, second) for first, second in zip(fused, reference))
