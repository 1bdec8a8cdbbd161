"""Low-rank factorization: truncated SVD, Tucker-2 with EVBMF ranks, CP, Jaderberg's separable
filters and whole-network rank selection. The decompositions are plain functions on tensors
(``decompose``), the module replacements apart (``surgery``); importing this package
registers the techniques ``svd``, ``tucker2``, ``cp``, ``separable`` and ``rank-select``."""

from modelzip.lowrank.decompose import (
    CPResult,
    EVBMFResult,
    SeparableFactors,
    TuckerResult,
    cp,
    evbmf,
    fit_separable,
    separable_weights,
    svd_factors,
    tucker2,
    tucker2_vbmf_ranks,
)
from modelzip.lowrank.rank_select import RankSelectConfig, rank_select
from modelzip.lowrank.techniques import (
    CPConfig,
    SeparableConfig,
    SVDConfig,
    Tucker2Config,
    cp_factorize,
    separable_factorize,
    svd_factorize,
    tucker2_factorize,
)

__all__ = ["CPConfig", "CPResult", "EVBMFResult", "RankSelectConfig", "SVDConfig",
           "SeparableConfig", "SeparableFactors", "Tucker2Config", "TuckerResult", "cp",
           "cp_factorize", "evbmf", "fit_separable", "rank_select", "separable_factorize",
           "separable_weights", "svd_factorize", "svd_factors", "tucker2", "tucker2_factorize",
           "tucker2_vbmf_ranks"]
