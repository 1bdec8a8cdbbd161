"""CSR storage/execution of pruned Linear layers, and the pruning pictures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modelzip.prune.sparse import (
    SparseLinear,
    csr_from_dense,
    csr_nbytes,
    dense_from_csr,
    sparsify_linears,
)
from modelzip.report.plots import plot_input_connections, plot_nonzero_pattern
from modelzip.zoo import build_model


def _sparse_weight(rows: int, cols: int, sparsity: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(rows, cols, generator=gen)
    return w * (torch.rand(rows, cols, generator=gen) >= sparsity)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
def test_csr_round_trip_exact(sparsity: float) -> None:
    w = _sparse_weight(30, 70, sparsity)
    arrays = csr_from_dense(w)
    assert arrays["col_indices"].dtype == torch.int16
    assert torch.equal(dense_from_csr(arrays), w)
    nnz = int((w != 0).sum())
    assert csr_nbytes(arrays) == 31 * 4 + nnz * 2 + nnz * 4


def test_csr_rejects_bad_arrays() -> None:
    arrays = csr_from_dense(_sparse_weight(4, 5, 0.5))
    arrays["col_indices"] = arrays["col_indices"].clone()
    arrays["col_indices"][0] = 99  # out of range: must raise, not read out of bounds
    with pytest.raises(RuntimeError):
        dense_from_csr(arrays)
    with pytest.raises(ValueError, match="2-D"):
        csr_from_dense(torch.zeros(2, 2, 2))


def test_sparse_linear_matches_dense() -> None:
    lin = nn.Linear(784, 300)
    with torch.no_grad():
        lin.weight.copy_(_sparse_weight(300, 784, 0.9))
    sp = SparseLinear(lin)
    for batch in (1, 64):
        x = torch.randn(batch, 784)
        torch.testing.assert_close(sp(x), lin(x), rtol=1e-5, atol=1e-5)


def test_sparsify_linears_swaps_sparse_layers_only() -> None:
    model = build_model("lenet300").eval()
    with torch.no_grad():
        model.fc1.weight.mul_(torch.rand_like(model.fc1.weight) > 0.9)
    x = torch.randn(3, 1, 28, 28)
    expected = model(x)
    assert sparsify_linears(model, min_sparsity=0.5) == ["fc1"]
    assert isinstance(model.fc1, SparseLinear) and isinstance(model.fc2, nn.Linear)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_plots_write_png(tmp_path: Path) -> None:
    w = _sparse_weight(300, 784, 0.9)
    a = plot_nonzero_pattern(w, tmp_path / "pattern.png", "fc1")
    b = plot_input_connections(w, (28, 28), tmp_path / "pixels.png")
    conv = plot_nonzero_pattern(_sparse_weight(20, 25, 0.5).reshape(20, 1, 5, 5),
                                tmp_path / "conv.png")
    for path in (a, b, conv):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))
