"""Rate-aware training: training that makes the weights cheap to code. Importing this package
registers ``sparse-vd`` (sparse variational dropout, Molchanov et al. 2017), which prunes
most weights to exactly zero while it trains."""

from modelzip.rate.sparse_vd import SparseVDConfig, kl_approx, log_alpha, sparse_vd

__all__ = ["SparseVDConfig", "kl_approx", "log_alpha", "sparse_vd"]
