"""Sparsity schedules for pruning with retraining, as plain functions of numbers.

- ``agp_sparsity``: the cubic schedule of gradual pruning (Zhu & Gupta 2017, eq. 1);
- ``round_sparsities``: the per-round targets of iterative prune -> retrain (Han et al. 2015);
- ``han_dropout``: the dropout rate for retraining a pruned layer (Han et al. 2015, eq. 2).
"""

from __future__ import annotations

import math

from modelzip.errors import ConfigError

__all__ = ["ROUND_SCHEDULES", "agp_prune_steps", "agp_sparsity", "check_sparsity",
           "han_dropout", "round_sparsities"]

ROUND_SCHEDULES = ("linear", "geometric", "cubic")


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """Return ``value`` if it is a fraction in [0, 1), else raise ConfigError naming it.
    (1 would remove every weight of a layer.)"""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {value!r}")
    return float(value)


def agp_sparsity(step: int, *, initial: float, final: float, start_step: int, n_prunes: int,
                 every: int) -> float:
    """Sparsity at optimizer step ``step`` of Zhu & Gupta's automated gradual pruning:

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3   for t0 <= t <= t0 + n dt,

    ``initial`` (s_i) before t0 and ``final`` (s_f) after the last of the n pruning steps.
    Pruning fast at first, while the network is redundant, then slower."""
    check_sparsity(initial, "initial sparsity")
    check_sparsity(final, "final sparsity")
    if initial > final:
        raise ConfigError(f"initial sparsity {initial} is above the final sparsity {final}")
    if every < 1 or n_prunes < 0 or start_step < 0:
        raise ConfigError(f"need every >= 1, n_prunes >= 0, start_step >= 0; got every={every}, "
                          f"n_prunes={n_prunes}, start_step={start_step}")
    if step < start_step:
        return initial
    if n_prunes == 0:
        return final
    progress = min((step - start_step) / (n_prunes * every), 1.0)
    s = final + (initial - final) * (1.0 - progress) ** 3
    return min(max(s, initial), final)  # rounding must not step outside [s_i, s_f]


def agp_prune_steps(start_step: int, n_prunes: int, every: int) -> list[int]:
    """The steps t0, t0 + dt, ..., t0 + n dt at which the AGP sparsity is raised."""
    return [start_step + j * every for j in range(n_prunes + 1)]


def round_sparsities(final: float, rounds: int, schedule: str = "geometric",
                     initial: float = 0.0) -> list[float]:
    """Target sparsity after each of ``rounds`` prune -> retrain rounds; the last is ``final``.

    ``linear`` raises the sparsity by equal steps; ``geometric`` removes the same fraction of
    the remaining weights each round (kept fraction falls geometrically), so late rounds,
    where each weight matters more, remove fewer weights; ``cubic`` is the AGP curve over
    rounds (big steps first)."""
    check_sparsity(final, "final sparsity")
    check_sparsity(initial, "initial sparsity")
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if schedule not in ROUND_SCHEDULES:
        raise ConfigError(f"sparsity schedule must be one of {', '.join(ROUND_SCHEDULES)}, "
                          f"got {schedule!r}")
    if initial > final:
        raise ConfigError(f"initial sparsity {initial} is above the final sparsity {final}")
    out = []
    for k in range(1, rounds + 1):
        f = k / rounds
        if schedule == "linear":
            s = initial + (final - initial) * f
        elif schedule == "geometric":
            s = 1.0 - (1.0 - initial) * ((1.0 - final) / (1.0 - initial)) ** f
        else:
            s = final + (initial - final) * (1.0 - f) ** 3
        out.append(s)
    out[-1] = final  # exactly, whatever the rounding above
    return out


def han_dropout(p_original: float, connections_original: int, connections_now: int) -> float:
    """Dropout rate for retraining a pruned layer (Han et al. 2015, eq. 2):
    D_r = D_o * sqrt(C_r / C_o), C the layer's connections (non-zero weights). A sparser
    layer has less capacity to over-fit and its neurons co-adapt less, so it needs less
    dropout."""
    if not 0.0 <= p_original <= 1.0:
        raise ConfigError(f"dropout rate must be in [0, 1], got {p_original}")
    if connections_original <= 0 or not 0 <= connections_now <= connections_original:
        raise ConfigError(f"connections must satisfy 0 <= now <= original and original > 0, "
                          f"got now={connections_now}, original={connections_original}")
    return p_original * math.sqrt(connections_now / connections_original)
