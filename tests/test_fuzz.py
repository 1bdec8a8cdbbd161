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


# ============================================================================ runner input
@pytest.fixture(scope="module")
def runner_bases() -> fuzz.RunnerBases:
    return fuzz.RunnerBases()


RUNNER_SEEN: dict[str, int] = {}


@settings(max_examples=600, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(seed=st.integers(0, 2**63))
def test_every_runner_input_runs_exactly_or_is_refused(runner_bases: Any, tmp_path_factory,
                                                       seed: int) -> None:
    r = random.Random(seed)
    model, kind, payload = fuzz.make_runner_case(runner_bases, r)
    folder = tmp_path_factory.mktemp("case", numbered=True)
    outcome = fuzz.run_runner_case(runner_bases, model, payload, folder,
                                   measure_memory=r.random() < 0.1)
    RUNNER_SEEN[outcome.split(":")[0]] = RUNNER_SEEN.get(outcome.split(":")[0], 0) + 1
    assert not fuzz.is_runner_failure(outcome), f"{outcome}: {model}, {kind}"


def test_the_runner_campaign_reached_both_outcomes() -> None:
    if not RUNNER_SEEN:
        pytest.skip("run with the property test")
    assert RUNNER_SEEN.get("accepted_exact", 0) > 50 and RUNNER_SEEN.get("refused", 0) > 200


def test_the_runner_oracle_catches_wrong_outputs_and_wrong_refusals(runner_bases: Any,
                                                                    tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    assert fuzz.run_runner_case(runner_bases, "image", ("api", x), tmp_path) == \
        "accepted_exact"
    original = runner_bases.sessions["image"]

    class Shifted:  # a reference that disagrees: the runner's output must count as wrong
        def run(self, names, feeds):
            return [original.run(names, feeds)[0] + 1]

    runner_bases.sessions["image"] = Shifted()
    try:
        assert fuzz.run_runner_case(runner_bases, "image", ("api", x), tmp_path) == \
            "accepted_wrong"
    finally:
        runner_bases.sessions["image"] = original
    # the oracle accepts (N, 6, 6, 1) uint8 images as the runner's docstring promises
    images = np.zeros((2, 6, 6, 1), np.uint8)
    assert fuzz.expected_feeds("image", images) is not None
    assert fuzz.run_runner_case(runner_bases, "image", ("api", images), tmp_path) == \
        "accepted_exact"
    assert fuzz.is_runner_failure("refused_valid") and fuzz.is_runner_failure("crash:X")


def test_a_seeded_runner_campaign_is_reproducible_and_clean() -> None:
    a, b = fuzz.runner_campaign(150, seed=5), fuzz.runner_campaign(150, seed=5)
    assert a["counts_by_class"] == b["counts_by_class"]
    assert a["failures"] == 0
    assert set(a["counts_by_class"]) == {"npy", "npy-damaged", "npz", "api", "manifest"}
