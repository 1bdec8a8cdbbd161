"""Shared fixtures: the real data folder, an isolated cache, no network, cached datasets."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from modelzip.data import ImageDataset, load_dataset

# Two cores are shared by two xdist workers: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh cache folder per session and no downloads. Set in ``os.environ`` so that
    CLI subprocesses inherit it; restored at the end of the session."""
    cache = tmp_path_factory.mktemp("modelzip-cache")
    saved = {k: os.environ.get(k) for k in ("MODELZIP_CACHE", "MODELZIP_OFFLINE")}
    os.environ["MODELZIP_CACHE"] = str(cache)
    os.environ["MODELZIP_OFFLINE"] = "1"
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    # Decoded EuroSAT arrays take 332 MB; do not leave them in pytest's kept temp folders.
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test (timing-free, but less contention under -n 2)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


DATA_FIXTURES = {"data_root", "mnist_train", "mnist_test", "eurosat_train", "eurosat_test"}
DATA_HINT = ("point MODELZIP_DATA at the folder holding mnist/, fashion-mnist/ and eurosat/ "
             "(the Makefile sets it to ../shared/data)")


def _missing_data() -> str | None:
    """Why the real datasets cannot be used, or None when they can."""
    value = os.environ.get("MODELZIP_DATA")
    if not value:
        return "MODELZIP_DATA is not set"
    if not (Path(value) / "mnist").is_dir():
        return f"MODELZIP_DATA={value} has no mnist/ folder"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that read the real datasets carry the ``realdata`` marker (``-m "not realdata"``
    selects the fast, data-free part). Without the data they are left out and counted in one
    summary line; with MODELZIP_REQUIRE_DATA=1 (CI) they run and fail instead."""
    needs_data = [item for item in items
                  if DATA_FIXTURES & set(getattr(item, "fixturenames", ()))]
    for item in needs_data:
        item.add_marker(pytest.mark.realdata)
    why = _missing_data()
    if why is None or not needs_data or os.environ.get("MODELZIP_REQUIRE_DATA") == "1":
        return
    config.hook.pytest_deselected(items=needs_data)
    left_out = set(map(id, needs_data))
    items[:] = [item for item in items if id(item) not in left_out]
    config.stash[_LEFT_OUT] = (len(needs_data), why)


_LEFT_OUT = pytest.StashKey[tuple[int, str]]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _LEFT_OUT in config.stash:  # collected here
        n, why = config.stash[_LEFT_OUT]
        terminalreporter.write_line(f"real datasets absent ({why}): {n} tests that need them "
                                    f"were not run; {DATA_HINT}")
    elif (config.pluginmanager.hasplugin("dsession")  # xdist: the workers collected
          and (why := _missing_data()) is not None
          and os.environ.get("MODELZIP_REQUIRE_DATA") != "1"):
        terminalreporter.write_line(f"real datasets absent ({why}): the tests that need them "
                                    f"were not run; {DATA_HINT}")


def _data_missing(message: str) -> None:
    """Reached only when the data-free selection above did not apply (MODELZIP_REQUIRE_DATA=1
    or a test run by its node id): a failure under CI, else a skip."""
    if os.environ.get("MODELZIP_REQUIRE_DATA") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(f"real datasets absent: {message}")


@pytest.fixture(scope="session")
def data_root(isolated_env: Path) -> Path:
    """The real data folder ($MODELZIP_DATA)."""
    why = _missing_data()
    if why is not None:
        _data_missing(f"{why}; {DATA_HINT}")
    return Path(os.environ["MODELZIP_DATA"])


@pytest.fixture(scope="session")
def mnist_train(data_root: Path) -> ImageDataset:
    return load_dataset("mnist", "train", data_root)


@pytest.fixture(scope="session")
def mnist_test(data_root: Path) -> ImageDataset:
    return load_dataset("mnist", "test", data_root)


@pytest.fixture(scope="session")
def eurosat_train(data_root: Path) -> ImageDataset:
    # The first load decodes 27,000 JPEGs into the session cache; the test split reuses it.
    return load_dataset("eurosat", "train", data_root)


@pytest.fixture(scope="session")
def eurosat_test(data_root: Path, eurosat_train: ImageDataset) -> ImageDataset:
    return load_dataset("eurosat", "test", data_root)
