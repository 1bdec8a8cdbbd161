"""Low-rank decompositions as plain functions on weight tensors (no module surgery here).

- ``svd_factors``: a matrix W (m x n) as ``B @ A`` with A (r x n) and B (m x r), truncated SVD;
  ``rank_for_energy`` / ``rank_for_budget`` choose r;
- ``evbmf``: the analytic empirical variational Bayesian matrix factorization of Nakajima et
  al. 2013 ("Global analytic solution of fully-observed variational Bayesian matrix
  factorization", JMLR 14), which estimates the rank of a matrix observed with Gaussian noise
  of unknown variance; Kim et al. 2016 use it for the Tucker-2 ranks of a convolution;
- ``tucker2``: a conv kernel (N, C, kh, kw) as ``core x_0 U_out x_1 U_in`` with tensorly's
  ``partial_tucker`` (Kim et al. 2016);
- ``cp``: a conv kernel as a sum of R rank-1 terms with tensorly's ``parafac`` (Lebedev et al.
  2015), with a fallback when ALS does not converge;
- ``separable_weights`` / ``fit_separable``: Jaderberg et al. 2014 scheme 2, a kh x kw kernel
  as a vertical kh x 1 conv (C -> K) followed by a horizontal 1 x kw conv (K -> N), fitted
  to the weights (closed form) or to the layer's outputs on real activations.

Relative errors are ``||W - W_hat|| / ||W||`` (Frobenius).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from modelzip.errors import ConfigError

__all__ = [
    "CPResult",
    "EVBMFResult",
    "SeparableFactors",
    "TuckerResult",
    "balance_factors",
    "check_rank",
    "cp",
    "cp_max_rank",
    "evbmf",
    "fit_separable",
    "rank_for_budget",
    "rank_for_energy",
    "relative_error",
    "separable_weights",
    "svd_factors",
    "tucker2",
    "tucker2_vbmf_ranks",
    "unfold",
]


def relative_error(original: torch.Tensor, approx: torch.Tensor) -> float:
    """``||original - approx|| / ||original||`` (0 for an all-zero original equal to approx)."""
    norm = float(original.double().norm())
    diff = float((original.double() - approx.double()).norm())
    return diff / norm if norm > 0 else diff


def check_rank(rank: int, max_rank: int, what: str, hint: str = "") -> int:
    """``rank`` if 1 <= rank <= max_rank, else a ConfigError that says the allowed range (and
    ``hint``, what to do)."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ConfigError(f"{what}: a rank must be an integer, got {rank!r}")
    if rank < 1:
        raise ConfigError(f"{what}: a rank must be >= 1, got {rank}")
    if rank > max_rank:
        raise ConfigError(f"{what}: rank {rank} is larger than the layer allows (at most "
                          f"{max_rank}){hint}")
    return rank


def unfold(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """The mode-``mode`` unfolding: that axis as rows, all others as columns."""
    return weight.movedim(mode, 0).reshape(weight.shape[mode], -1)


# ---------------------------------------------------------------------------- SVD
def svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``matrix ~= B @ A``, A (rank x n), B (m x rank): the truncated SVD with
    the singular values split evenly (sqrt into each factor)."""
    m, n = matrix.shape
    check_rank(rank, min(m, n), "svd")
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = (root[:, None] * vh[:rank]).to(matrix.dtype)
    b = (u[:, :rank] * root[None, :]).to(matrix.dtype)
    return a, b


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.double())


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values hold ``energy`` (in (0, 1]) of the sum of the
    squared singular values."""
    if not 0 < energy <= 1:
        raise ConfigError(f"energy must be in (0, 1], got {energy}")
    sq = s.double() ** 2
    total = float(sq.sum())
    if total == 0:
        return 1
    cum = torch.cumsum(sq, 0) / total
    # a small tolerance: energy 1.0 must not ask for the last rounding error's rank
    return int(min(int((cum < energy - 1e-12).sum()) + 1, len(s)))


def rank_for_budget(budget: float, cost_of_rank: list[int] | range | np.ndarray,
                    original_cost: int) -> int:
    """The largest rank r (1-based) with ``cost_of_rank[r - 1] <= budget * original_cost``;
    0 when even rank 1 costs more."""
    if not 0 < budget <= 1:
        raise ConfigError(f"budget must be in (0, 1], got {budget}")
    limit = budget * original_cost
    best = 0
    for r, cost in enumerate(cost_of_rank, start=1):
        if cost <= limit:
            best = r
    return best


# ---------------------------------------------------------------------------- EVBMF
@dataclass(frozen=True)
class EVBMFResult:
    """The rank EVBMF keeps, the noise variance it estimated and the post-shrinkage singular
    values of the kept components."""

    rank: int
    sigma2: float
    shrunk: np.ndarray
    threshold: float


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _evb_objective(sigma2: float, big_l: int, big_m: int, s: np.ndarray, residual: float,
                   xubar: float) -> float:
    """The free energy of EVBMF as a function of the noise variance (Nakajima 2013, eq. 15ff)."""
    h = len(s)
    alpha = big_l / big_m
    x = s ** 2 / (big_m * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    tau_z1 = _tau(z1, alpha)
    term1 = np.sum(z2 - np.log(z2))
    term2 = np.sum(z1 - tau_z1)
    term3 = np.sum(np.log((tau_z1 + 1) / z1))
    term4 = alpha * np.sum(np.log(tau_z1 / alpha + 1))
    return float(term1 + term2 + term3 + term4 + residual / (big_m * sigma2)
                 + (big_l - h) * np.log(sigma2))


def evbmf(matrix: torch.Tensor | np.ndarray, sigma2: float | None = None) -> EVBMFResult:
    """Analytic empirical VBMF (Nakajima et al. 2013): the rank of ``matrix`` that the
    variational Bayesian posterior keeps, with the noise variance ``sigma2`` estimated by
    minimising the free energy when not given."""
    y = np.asarray(matrix.detach().double() if isinstance(matrix, torch.Tensor) else matrix,
                   dtype=np.float64)
    if y.ndim != 2 or min(y.shape) < 1:
        raise ConfigError(f"evbmf takes a non-empty matrix, got shape {y.shape}")
    if y.shape[0] > y.shape[1]:
        y = y.T  # the analysis assumes L <= M
    big_l, big_m = y.shape
    h = big_l
    alpha = big_l / big_m
    tauubar = 2.5129 * math.sqrt(alpha)  # the threshold constant of the paper
    s = np.linalg.svd(y, compute_uv=False)
    if not np.any(s > 0):
        return EVBMFResult(0, 0.0, np.zeros(0), 0.0)
    residual = 0.0  # h == L: every component is in s
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    if sigma2 is None:
        # search between a lower bound set by the smaller singular values and the total power
        eh_ub = int(min(math.ceil(big_l / (1 + alpha)) - 1, h)) - 1
        upper = (np.sum(s ** 2) + residual) / (big_l * big_m)
        tail = s[eh_ub + 1:] if eh_ub + 1 < h else s[-1:]
        lower = max(tail[0] ** 2 / (big_m * xubar), float(np.mean(tail ** 2)) / big_m)
        lower = max(lower, upper * 1e-12)
        if lower >= upper:
            sigma2 = upper
        else:
            sigma2 = float(minimize_scalar(
                _evb_objective, args=(big_l, big_m, s, residual, xubar),
                bounds=(lower, upper), method="bounded").x)
    threshold = math.sqrt(big_m * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    kept = s[s > threshold]
    ratio = (big_l + big_m) * sigma2 / kept ** 2
    shrunk = kept / 2 * (1 - ratio + np.sqrt(np.maximum(
        (1 - ratio) ** 2 - 4 * big_l * big_m * sigma2 ** 2 / kept ** 4, 0)))
    return EVBMFResult(len(kept), float(sigma2), shrunk, threshold)


def tucker2_vbmf_ranks(weight: torch.Tensor, scale: float = 1.0) -> tuple[int, int]:
    """(R_out, R_in) of a conv kernel (N, C, kh, kw): EVBMF on the mode-0 (output) and mode-1
    (input) unfoldings (Kim et al. 2016), times ``scale``, at least 1 and at most N and C."""
    n, c = weight.shape[:2]
    r_out = evbmf(unfold(weight, 0)).rank
    r_in = evbmf(unfold(weight, 1)).rank
    return (max(1, min(n, round(r_out * scale))), max(1, min(c, round(r_in * scale))))


# ---------------------------------------------------------------------------- Tucker-2
@dataclass(frozen=True)
class TuckerResult:
    """``weight ~= core x_0 out_factor x_1 in_factor``: core (R_out, R_in, kh, kw), out_factor
    (N, R_out), in_factor (C, R_in)."""

    core: torch.Tensor
    out_factor: torch.Tensor
    in_factor: torch.Tensor
    error: float

    def reconstruct(self) -> torch.Tensor:
        return torch.einsum("abhw,na,cb->nchw", self.core, self.out_factor, self.in_factor)


def tucker2(weight: torch.Tensor, ranks: tuple[int, int], *, n_iter_max: int = 100,
            seed: int = 0) -> TuckerResult:
    """Tucker-2 of a conv kernel (N, C, kh, kw) on its output and input modes, ranks (R_out,
    R_in), by tensorly's HOOI (``partial_tucker``, SVD initialisation)."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    n, c = weight.shape[:2]
    r_out = check_rank(ranks[0], n, "tucker2 (output rank)")
    r_in = check_rank(ranks[1], c, "tucker2 (input rank)")
    w = weight.detach().double()
    with tl.backend_context("pytorch"):
        (core, factors), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1],
                                            n_iter_max=n_iter_max, random_state=seed)
    result = TuckerResult(core.to(weight.dtype), factors[0].to(weight.dtype),
                          factors[1].to(weight.dtype), 0.0)
    error = relative_error(weight, result.reconstruct())
    return TuckerResult(result.core, result.out_factor, result.in_factor, error)


# ---------------------------------------------------------------------------- CP
@dataclass(frozen=True)
class CPResult:
    """``weight[n, c, y, x] ~= sum_r out[n, r] in[c, r] vert[y, r] horiz[x, r]`` (the CP
    weights folded into ``out``); ``converged`` says whether ALS met its tolerance, and
    ``method`` what produced the factors (``"als"``, or the fallback used)."""

    out_factor: torch.Tensor
    in_factor: torch.Tensor
    vertical: torch.Tensor
    horizontal: torch.Tensor
    error: float
    converged: bool
    method: str
    note: str = ""
    degeneracy: float = 1.0  # sum of the components' norms / the kernel's norm

    def reconstruct(self) -> torch.Tensor:
        return torch.einsum("nr,cr,yr,xr->ncyx", self.out_factor, self.in_factor,
                            self.vertical, self.horizontal)


FALLBACK_STARTS = 1  # random restarts with line search when CP-ALS does not converge


def cp_max_rank(shape: tuple[int, ...]) -> int:
    """The largest CP rank worth asking for: every tensor has CP rank at most the product of
    its dimensions over the largest one."""
    return int(np.prod(shape)) // max(shape)


def _parafac(w: torch.Tensor, rank: int, *, init: str, n_iter_max: int, tol: float,
             seed: int, linesearch: bool, l2_reg: float = 0.0
             ) -> tuple[list[torch.Tensor], bool, float]:
    import tensorly as tl
    from tensorly.decomposition import parafac

    with tl.backend_context("pytorch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorly warns when a rank exceeds a mode's size
        cp_tensor, errors = parafac(w, rank=rank, init=init, n_iter_max=n_iter_max, tol=tol,
                                    random_state=seed, linesearch=linesearch,
                                    l2_reg=l2_reg, return_errors=True)
    weights, factors = cp_tensor
    factors = [f.clone() for f in factors]
    factors[0] = factors[0] * weights[None, :]
    # ALS stops early when the change of the error falls under tol: fewer steps = converged
    converged = len(errors) < n_iter_max and all(math.isfinite(float(e)) for e in errors)
    finite = all(bool(torch.isfinite(f).all()) for f in factors)
    error = float(errors[-1]) if errors and finite else math.inf
    return factors, converged and finite, error


def cp(weight: torch.Tensor, rank: int, *, n_iter_max: int = 100, tol: float = 1e-5,
       seed: int = 0, ridge: float = 0.0) -> CPResult:
    """CP decomposition of a conv kernel (N, C, kh, kw) with rank R by tensorly's ALS
    (``parafac``, SVD initialisation). When ALS does not converge in ``n_iter_max`` steps (or
    diverges), it is run again from random starts with line search, and the factors with the
    lowest reconstruction error are kept; ``note`` says what happened. Runs in float32:
    tensorly's Khatri-Rao product dominates the time and float64 doubles it.

    ``ridge`` > 0 adds ``ridge * ||W||^2 / R`` times the squared norm of every factor to the
    ALS objective (tensorly's ``l2_reg``). Unregularised CP of a conv kernel is degenerate:
    components far larger than the kernel cancel each other (``degeneracy``, the sum of the
    components' norms over the kernel's, is ~100 at 2x fewer MACs on eurosat_cnn), so a small
    relative change of a factor moves the layer's output a lot and fine-tuning at the
    original network's learning rate diverges. The penalty bounds the components at almost
    the same reconstruction error."""
    if weight.ndim != 4:
        raise ConfigError(f"cp takes a conv kernel (N, C, kh, kw), got shape "
                          f"{tuple(weight.shape)}")
    check_rank(rank, cp_max_rank(tuple(weight.shape)), "cp")
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise ConfigError(f"cp: ridge must be a finite number >= 0, got {ridge}")
    w = weight.detach().float()
    l2_reg = ridge * float(w.pow(2).sum()) / rank
    factors, converged, _ = _parafac(w, rank, init="svd", n_iter_max=n_iter_max, tol=tol,
                                     seed=seed, linesearch=False, l2_reg=l2_reg)
    method, note = "als", ""
    best = factors
    best_error = _cp_error(weight, factors)
    if not converged:
        for attempt in range(FALLBACK_STARTS):
            alt, alt_converged, _ = _parafac(w, rank, init="random", n_iter_max=n_iter_max,
                                             tol=tol, seed=seed + 1 + attempt, linesearch=True,
                                             l2_reg=l2_reg)
            alt_error = _cp_error(weight, alt)
            if alt_error < best_error:
                best, best_error, converged = alt, alt_error, alt_converged
                method = f"als-linesearch-random-{attempt + 1}"
        note = (f"CP-ALS did not converge in {n_iter_max} steps (tol {tol:g}); fallback: "
                f"random starts with line search; kept {method} (relative error "
                f"{best_error:.4f}{'' if converged else ', not converged either'})")
    if not math.isfinite(best_error):
        raise ConfigError(f"cp: rank {rank} did not give finite factors for a kernel of "
                          f"shape {tuple(weight.shape)}; choose another rank")
    out, inn, vert, horiz = (f.to(weight.dtype) for f in balance_factors(best))
    return CPResult(out, inn, vert, horiz, best_error, converged, method, note,
                    cp_degeneracy(best, weight))


def cp_degeneracy(factors: list[torch.Tensor], weight: torch.Tensor) -> float:
    """Sum over components of prod_k ||f_k[:, r]||, over ||weight||: 1 for one component,
    at most sqrt(R) for R orthogonal ones; far above that, components cancel each other."""
    norms = torch.stack([f.double().norm(dim=0) for f in factors]).prod(0)
    return float(norms.sum() / weight.double().norm().clamp_min(1e-300))


def balance_factors(factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same CP tensor with each component's norm shared equally by its factor columns
    (column r of every factor gets norm (prod_k ||f_k[:, r]||)^(1/K)). ALS leaves the weights
    in one factor; the four layers of the factorized conv then differ in scale by orders of
    magnitude, and one learning rate for all of them makes fine-tuning diverge."""
    norms = torch.stack([f.double().norm(dim=0) for f in factors])  # (K, R)
    shared = norms.prod(0) ** (1.0 / len(factors))
    scale = torch.where(norms > 0, shared / norms.clamp_min(1e-300), torch.zeros_like(norms))
    return [(f.double() * scale[k][None, :]).to(f.dtype) for k, f in enumerate(factors)]


def _cp_error(weight: torch.Tensor, factors: list[torch.Tensor]) -> float:
    if not all(bool(torch.isfinite(f).all()) for f in factors):
        return math.inf
    approx = torch.einsum("nr,cr,yr,xr->ncyx", *factors)
    return relative_error(weight, approx)


# ---------------------------------------------------------------------------- separable
@dataclass(frozen=True)
class SeparableFactors:
    """Jaderberg scheme 2: ``vertical`` (K, C, kh, 1) then ``horizontal`` (N, K, 1, kw)."""

    vertical: torch.Tensor
    horizontal: torch.Tensor

    def reconstruct(self) -> torch.Tensor:
        # W[n, c, y, x] = sum_k H[n, k, x] V[k, c, y]
        return torch.einsum("nkx,kcy->ncyx", self.horizontal[:, :, 0, :],
                            self.vertical[:, :, :, 0])


def separable_weights(weight: torch.Tensor, rank: int) -> SeparableFactors:
    """The weight-only fit, in closed form: the truncated SVD of the kernel reshaped to a
    (C*kh) x (N*kw) matrix is the best rank-K separable kernel in Frobenius norm."""
    n, c, kh, kw = weight.shape
    check_rank(rank, min(c * kh, n * kw), "separable")
    matrix = weight.detach().permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    a, b = svd_factors(matrix, rank)  # matrix ~= b @ a: b (C*kh, K), a (K, N*kw)
    vertical = b.reshape(c, kh, rank).permute(2, 0, 1).unsqueeze(-1).contiguous()
    horizontal = a.reshape(rank, n, kw).permute(1, 0, 2).unsqueeze(2).contiguous()
    return SeparableFactors(vertical, horizontal)


def _separable_forward(x: torch.Tensor, v: torch.Tensor, h: torch.Tensor,
                       bias: torch.Tensor | None, stride: tuple[int, int],
                       padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    mid = F.conv2d(x, v, None, (stride[0], 1), (padding[0], 0), (dilation[0], 1))
    return F.conv2d(mid, h, bias, (1, stride[1]), (0, padding[1]), (1, dilation[1]))


def fit_separable(weight: torch.Tensor, bias: torch.Tensor | None, rank: int,
                  inputs: torch.Tensor, *, stride: tuple[int, int] = (1, 1),
                  padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
                  targets: torch.Tensor | None = None, steps: int = 30
                  ) -> tuple[SeparableFactors, float, float]:
    """The data-reconstruction fit of Jaderberg scheme 2: start from the weight-only fit and
    minimise the squared error between the separable layer's outputs and ``targets`` (default:
    the original layer's outputs) on ``inputs`` (real activations, N x C x H x W) with L-BFGS.
    Returns the factors and the relative output error of the weight-only and of the data fit
    (the better of the two is returned)."""
    start = separable_weights(weight, rank)
    with torch.no_grad():
        if targets is None:
            targets = F.conv2d(inputs, weight, bias, stride, padding, dilation)
        norm = float(targets.double().norm()) or 1.0

        def out_error(v: torch.Tensor, h: torch.Tensor) -> float:
            out = _separable_forward(inputs, v, h, bias, stride, padding, dilation)
            return float((out - targets).double().norm()) / norm

        weight_only_error = out_error(start.vertical, start.horizontal)
    v = start.vertical.clone().requires_grad_(True)
    h = start.horizontal.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([v, h], lr=1, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        out = _separable_forward(inputs, v, h, bias, stride, padding, dilation)
        loss = (out - targets).pow(2).sum() / (norm ** 2)
        loss.backward()
        return loss

    if steps > 0:
        optimizer.step(closure)
    with torch.no_grad():
        data_error = out_error(v, h)
    if not math.isfinite(data_error) or data_error > weight_only_error:
        return start, weight_only_error, weight_only_error
    return SeparableFactors(v.detach(), h.detach()), weight_only_error, data_error
