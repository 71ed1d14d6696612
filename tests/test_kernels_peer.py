"""PEER expert kernels: Triton (TRITON_INTERPRET=1 on CPU) and PyTorch paths vs the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_support import (  # sets TRITON_INTERPRET
    BACKENDS, DEVICE, HAS_CUDA, TOLERANCE, assert_close, grads_of, to_bf16,
)
from torch.utils.flop_counter import FlopCounterMode

import kernels
from kernels.dispatch import resolve_backend
from kernels.peer_reference import peer_experts_reference


def make_inputs(tokens: int, heads: int, top_k: int, dim: int, rows: int, glu: bool, device: torch.device,
                dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    index = torch.randint(0, rows, (tokens, heads, top_k), generator=generator)
    if top_k > 1:
        index[:, 0, 1] = index[:, 0, 0]  # repeated expert within a token
    return {
        "x": rand(tokens, dim),
        "expert_index": index.to(device),
        "scores": torch.rand(tokens, heads, top_k, generator=generator).to(device=device, dtype=dtype),
        "down_table": rand(rows, dim) / dim**0.5,
        "up_table": rand(rows, dim),
        "gate_table": rand(rows, dim) / dim**0.5 if glu else None,
    }


CASES = [
    # tokens, heads, top_k, dim, rows, activation, glu
    (7, 2, 3, 37, 50, "gelu", False),
    (7, 2, 3, 37, 50, "relu", True),
    (1, 1, 1, 16, 5, "relu", False),  # T = 1, k = 1
    (5, 4, 1, 20, 300, "silu", False),  # k = 1, most rows untouched
    (9, 8, 16, 100, 64, "gelu", True),  # h*k = 128, d spans several blocks, heavy repeats
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sparse_grad", [False, True])
@pytest.mark.parametrize("case", CASES, ids=[f"T{c[0]}h{c[1]}k{c[2]}d{c[3]}N{c[4]}-{c[5]}-glu{int(c[6])}" for c in CASES])
def test_matches_reference(case: tuple, backend: str, sparse_grad: bool) -> None:
    tokens, heads, top_k, dim, rows, activation, glu = case
    device = DEVICE if backend == "triton" else torch.device("cpu")
    inputs = make_inputs(tokens, heads, top_k, dim, rows, glu, device)
    expected = grads_of(kernels.peer_experts, inputs, activation=activation, backend="reference")
    actual = grads_of(kernels.peer_experts, inputs, activation=activation, backend=backend, sparse_grad=sparse_grad)
    assert expected.keys() == actual.keys()
    # The torch path sums in another order than the reference: fp32 rounding, a few 2^-23 of the largest entry.
    tolerance = TOLERANCE if backend == "triton" else 2e-6
    for name in expected:
        assert_close(actual[name], expected[name], tolerance, f"{backend} {name}")
    for name in ("d_down_table", "d_up_table"):
        assert actual[name].is_sparse == sparse_grad, f"{name} sparse layout should follow sparse_grad={sparse_grad}"
    if sparse_grad:
        touched = torch.unique(inputs["expert_index"])
        assert torch.equal(actual["d_up_table"].coalesce().indices()[0].cpu(), touched.cpu())


def test_reference_matches_explicit_formula() -> None:
    inputs = make_inputs(3, 2, 2, 8, 10, glu=True, device=torch.device("cpu"))
    out = peer_experts_reference(**inputs, activation="relu")
    x, index, scores = inputs["x"], inputs["expert_index"], inputs["scores"]
    expected = torch.zeros_like(x)
    for t in range(3):
        for h in range(2):
            for k in range(2):
                i = index[t, h, k]
                hidden = torch.relu(inputs["down_table"][i] @ x[t]) * (inputs["gate_table"][i] @ x[t])
                expected[t] += scores[t, h, k] * hidden * inputs["up_table"][i]
    assert_close(out, expected, 1e-5, "reference")


@pytest.mark.parametrize("glu", [False, True])
def test_reference_flops_on_meta(glu: bool) -> None:
    tokens, heads, top_k, dim = 64, 4, 8, 32
    with torch.device("meta"):
        inputs = make_inputs(tokens, heads, top_k, dim, 1000, glu, torch.device("meta"))
        with FlopCounterMode(display=False) as counter:
            out = kernels.peer_experts(**inputs)
    assert out.device.type == "meta" and out.shape == (tokens, dim)
    products = 3 if glu else 2
    assert counter.get_total_flops() == products * 2 * dim * tokens * heads * top_k


def test_leading_dims_are_flattened() -> None:
    inputs = make_inputs(6, 2, 3, 16, 40, glu=False, device=torch.device("cpu"))
    batched = {k: (v.view(2, 3, *v.shape[1:]) if k in ("x", "expert_index", "scores") else v) for k, v in inputs.items()}
    out = kernels.peer_experts(**batched, backend="torch")
    assert out.shape == (2, 3, 16)
    assert_close(out.view(6, 16), kernels.peer_experts(**inputs, backend="reference"), 1e-5, "batched")


def test_backend_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISOFLOP_KERNEL_BACKEND", raising=False)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("meta")) == "reference"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    monkeypatch.setenv("ISOFLOP_KERNEL_BACKEND", "reference")
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("cuda", torch.device("cpu"))


def test_bad_inputs_raise_with_a_message() -> None:
    inputs = make_inputs(4, 2, 2, 8, 10, glu=False, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="activation"):
        kernels.peer_experts(**inputs, activation="tanh")
    with pytest.raises(TypeError, match="int64"):
        kernels.peer_experts(**{**inputs, "expert_index": inputs["expert_index"].int()})
    with pytest.raises(ValueError, match="same leading dims"):
        kernels.peer_experts(**{**inputs, "scores": inputs["scores"][:, :1]})


@pytest.mark.slow
def test_torch_compile_fullgraph() -> None:
    inputs = make_inputs(6, 2, 3, 16, 40, glu=True, device=torch.device("cpu"))

    def loss(x: torch.Tensor, up_table: torch.Tensor) -> torch.Tensor:
        return kernels.peer_experts(x, inputs["expert_index"], inputs["scores"], inputs["down_table"], up_table,
                                    gate_table=inputs["gate_table"], backend="torch").square().sum()

    x = inputs["x"].clone().requires_grad_(True)
    up = inputs["up_table"].clone().requires_grad_(True)
    compiled = torch.compile(loss, fullgraph=True)(x, up)
    compiled.backward()
    eager_x, eager_up = x.detach().clone().requires_grad_(True), up.detach().clone().requires_grad_(True)
    eager = loss(eager_x, eager_up)
    eager.backward()
    assert_close(compiled.detach(), eager.detach(), 1e-5, "compiled loss")
    assert_close(up.grad, eager_up.grad, 1e-5, "compiled d_up_table")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (bf16 Triton kernels)")
@pytest.mark.parametrize("glu", [False, True])
def test_triton_bf16_against_fp32_reference(glu: bool) -> None:
    inputs = make_inputs(64, 8, 16, 256, 4096, glu, DEVICE)
    expected = grads_of(kernels.peer_experts, inputs, activation="gelu", backend="reference")
    actual = grads_of(kernels.peer_experts, to_bf16(inputs), activation="gelu", backend="triton")
    for name in expected:
        assert_close(actual[name], expected[name], 3e-2, f"bf16 {name}")


def test_sparse_grad_drives_sparse_adam() -> None:
    inputs = make_inputs(4, 2, 2, 8, 100, glu=False, device=torch.device("cpu"))
    tables = [torch.nn.Parameter(inputs["down_table"].clone()), torch.nn.Parameter(inputs["up_table"].clone())]
    before = [t.detach().clone() for t in tables]
    optimizer = torch.optim.SparseAdam(tables, lr=0.1)
    kernels.peer_experts(inputs["x"], inputs["expert_index"], inputs["scores"], *tables, sparse_grad=True).sum().backward()
    optimizer.step()
    touched = torch.zeros(100, dtype=torch.bool)
    touched[inputs["expert_index"].unique()] = True
    for table, old in zip(tables, before):
        changed = (table.detach() != old).any(dim=1)
        assert changed[touched].all() and not changed[~touched].any(), "SparseAdam must update exactly the touched rows"


def test_torch_path_computes_bfloat16_tables_in_float32() -> None:
    """sampled_addmm has no bf16 kernel on the CPU: the dots run in fp32, the results are the
    bf16 reference's up to bf16 rounding."""
    inputs = make_inputs(7, 2, 3, 37, 50, glu=False, device=torch.device("cpu"))
    expected = grads_of(kernels.peer_experts, inputs, activation="gelu", backend="reference")
    actual = grads_of(kernels.peer_experts, to_bf16(inputs), activation="gelu", backend="torch")
    for name in expected:
        assert actual[name].dtype == torch.bfloat16, name
        assert_close(actual[name], expected[name], 3e-2, f"bf16 {name}")
