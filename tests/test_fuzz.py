"""A seeded property-based subset of bench/fuzz.py: damaged and forged .mzip files (checksums
recomputed after the edit), each accepted with exactly the packed weights or refused with
ArtifactError naming the check; never another exception, a hang, an allocation past the
bound, or other weights."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz
from modelzip.codec.container import read_container, write_container


@pytest.fixture(scope="module")
def bases() -> tuple[dict[str, bytes], dict[str, np.ndarray], list[bytes]]:
    return fuzz.make_bases()


SEEN: dict[str, int] = {}


@settings(max_examples=2000, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(seed=st.integers(0, 2**63))
def test_every_mutated_file_is_read_exactly_or_refused(bases: Any, seed: int) -> None:
    files, arrays, trusted = bases
    r = random.Random(seed)  # the case generator of bench/fuzz.py, seeded by hypothesis
    name, kind, data = fuzz.make_case(files, r)
    outcome = fuzz.run_case(data, arrays, trusted if name == "signed" else None,
                            measure_memory=r.random() < 0.1)
    SEEN[outcome.split(":")[0]] = SEEN.get(outcome.split(":")[0], 0) + 1
    assert not fuzz.is_failure(outcome), f"{outcome}: base {name}, {kind}"


def test_the_campaign_reached_both_outcomes() -> None:
    """The property test above saw accepted and refused files (run after it, in file order)."""
    if not SEEN:
        pytest.skip("run with the property test")
    assert SEEN.get("accepted_exact", 0) > 20 and SEEN.get("refused", 0) > 1000


def test_the_oracle_catches_wrong_weights_and_foreign_errors(bases: Any) -> None:
    files, arrays, _ = bases
    assert fuzz.run_case(files["best"], arrays, None) == "accepted_exact"
    other = {**arrays, "dense": arrays["dense"] + 1}
    assert fuzz.run_case(files["best"], other, None) == "accepted_wrong"
    assert fuzz.run_case(b"MZIP" + bytes(40), arrays, None).startswith("refused:")
    assert fuzz.is_failure("crash:ValueError") and not fuzz.is_failure("refused:sha256")


def test_a_seeded_campaign_is_reproducible_and_clean() -> None:
    a, b = fuzz.campaign(100, seed=3), fuzz.campaign(100, seed=3)
    assert a["counts_by_class"] == b["counts_by_class"]
    assert a["failures"] == 0 and set(a["counts_by_class"]) == {"damaged", "forged", "fec"}


def test_forgeries_are_what_they_claim(bases: Any) -> None:
    """A forged case really has its container checksums recomputed: the SHA-256 holds."""
    files, _, _ = bases
    hits = 0
    for i in range(200):
        name, kind, data = fuzz.make_case(files, random.Random(i))
        if kind.startswith("forged:") and kind != "forged:header-version" and name != "signed":
            try:
                read_container(data)
            except Exception as exc:
                assert "SHA-256" not in str(exc), kind
            hits += 1
    assert hits > 30
    assert write_container  # the forger's tool is the writer itself
