"""Sparse storage and execution of pruned Linear layers.

Storage: CSR (row pointers, column indices, values) as safetensors tensors, no pickle.
Execution: ``SparseLinear`` computes y = W x + b with ``torch.sparse.mm`` on a CSR weight.
Whether that beats the dense matmul depends on sparsity, batch size and the CPU:
``bench/sparse_timing.py`` measures it; nothing here assumes a speedup.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["SparseLinear", "csr_from_dense", "csr_nbytes", "dense_from_csr", "sparsify_linears"]


def csr_from_dense(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """CSR arrays of a 2-D tensor with the narrowest integer index types that fit."""
    if weight.ndim != 2:
        raise ValueError(f"CSR needs a 2-D weight, got shape {tuple(weight.shape)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = weight.detach().to_sparse_csr()
    rows, cols = weight.shape
    index_dtype = torch.int16 if cols < 2**15 else torch.int32
    ptr_dtype = torch.int32 if csr.values().numel() < 2**31 else torch.int64
    return {"crow_indices": csr.crow_indices().to(ptr_dtype),
            "col_indices": csr.col_indices().to(index_dtype),
            "values": csr.values().clone(),
            "shape": torch.tensor([rows, cols], dtype=torch.int64)}


def dense_from_csr(arrays: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dense tensor from CSR arrays; the CSR invariants are checked, since the arrays may come
    from a file (bad indices raise instead of reading out of bounds)."""
    rows, cols = (int(v) for v in arrays["shape"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(arrays["crow_indices"].to(torch.int64),
                                       arrays["col_indices"].to(torch.int64), arrays["values"],
                                       size=(rows, cols), check_invariants=True).to_dense()


def csr_nbytes(arrays: dict[str, torch.Tensor]) -> int:
    """Bytes of the CSR arrays as stored (the shape field excluded)."""
    return sum(t.numel() * t.element_size() for k, t in arrays.items() if k != "shape")


class SparseLinear(nn.Module):
    """A Linear layer whose weight is held as a CSR tensor (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.weight_csr = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        # (out x in) @ (in x batch), transposed back: sparse matrix on the left.
        y = torch.sparse.mm(self.weight_csr, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def sparsify_linears(model: nn.Module, min_sparsity: float = 0.0) -> list[str]:
    """Swap every Linear whose weight has at least ``min_sparsity`` zeros for SparseLinear,
    in place; returns the names swapped."""
    swapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            sparsity = float((module.weight == 0).float().mean())
            if sparsity >= min_sparsity:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, SparseLinear(module))
                swapped.append(name)
    return swapped
