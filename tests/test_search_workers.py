"""Two ``modelzip search-worker`` processes share one study on a throwaway PostgreSQL
server: every trial is kept once, none is lost or run twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from throwaway_postgres import missing_reason, throwaway_postgres  # noqa: E402

from modelzip.search import SearchConfig, parse_budget, search  # noqa: E402
from tests.search_tiny import make  # noqa: E402


def _required() -> bool:
    return os.environ.get("MODELZIP_REQUIRE_DATA") == "1"


@pytest.fixture(scope="module")
def postgres():
    reason = missing_reason()
    if reason:
        if _required():
            pytest.fail(reason)
        pytest.skip(reason)
    # a folder of its own under /tmp: the server's user must reach it (pytest's are 0700)
    with throwaway_postgres() as url:
        yield url


def _worker(url: str, study: str, trials: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "modelzip.cli", "search-worker", "--study",
                             study, "--storage", url, "--trials", str(trials),
                             "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def test_two_workers_share_a_postgres_study(postgres):
    import optuna

    model, ctx = make()
    config = SearchConfig(strategy="random", trials=1, storage=postgres, study="shared",
                          progress=False, quant_finetune=None,
                          source={"factory": "tests.search_tiny:make"})
    search(model, parse_budget("size=2.4KB"), ctx=ctx, config=config)  # creates the study
    procs = [_worker(postgres, "shared", 5) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ran = [int(o.rsplit("ran ", 1)[1].split()[0]) for o in outputs]
    assert all(n >= 1 for n in ran), outputs  # both took part
    study = optuna.load_study(study_name="shared", storage=postgres.replace(
        "postgresql://", "postgresql+psycopg2://"))
    trials = study.trials
    assert len(trials) == 1 + sum(ran) and len(trials) >= 5  # none lost
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == len(trials)  # none run twice
    # the process that started the study resumes it and finishes the chosen point
    done = search(model, parse_budget("size=2.4KB"), ctx=ctx,
                  config=SearchConfig(strategy="random", trials=len(trials), storage=postgres,
                                      study="shared", progress=False, quant_finetune=None))
    assert len(done.trials) == len(trials) and done.budget_met


def test_a_worker_refuses_a_missing_study(postgres):
    from modelzip.errors import ConfigError
    from modelzip.search.worker import search_worker

    with pytest.raises(ConfigError, match="no study 'no-such-study' in postgresql"):
        search_worker("no-such-study", postgres, progress=False)
