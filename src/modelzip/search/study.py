"""Study storage: every trial is an Optuna trial in SQLite (default, a file next to the
output) or PostgreSQL (``postgresql://...``), so that several worker processes on several
machines share one study and a re-run resumes it.

- the study's user attributes hold the space (and its hash), the budget and what a worker
  needs to rebuild the model and data; a study made with another space is refused;
- heartbeats: a running trial whose worker stops beating for ``GRACE_S`` is marked failed by
  the next worker that starts a trial (Optuna's ``fail_stale_trials``); the study goes on;
- a storage that cannot be reached is one ConfigError naming it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from modelzip.errors import ConfigError

__all__ = ["HEARTBEAT_S", "default_storage", "open_study", "redact"]

HEARTBEAT_S = 5
GRACE_S = 20


def redact(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unreadable URL is shown as given
        return url


def default_storage(out: str | Path | None) -> str:
    """SQLite beside the output (``OUT.study.db``), or ``modelzip-search.db`` here."""
    path = Path(f"{out}.study.db") if out is not None else Path("modelzip-search.db")
    return f"sqlite:///{path.resolve()}"


def _postgres_driver(url: str) -> str:
    """A plain postgresql:// URL with the installed driver: SQLAlchemy's default is
    psycopg 3; psycopg2 (the ``search`` extra) is used when that is what there is."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if "+" in scheme or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    raise ConfigError(f"study storage {redact(url)}: no PostgreSQL driver is installed; "
                      "pip install 'modelzip[search]' (psycopg2-binary)")


def _storage(url: str, heartbeat: bool) -> Any:
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    if "://" not in url:
        raise ConfigError(f"study storage {url!r}: expected a URL such as "
                          "sqlite:///search.db or postgresql://user@host/db")
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    engine: dict[str, Any] = {}
    if url.startswith(("postgresql", "postgres:")):
        url = _postgres_driver(url)
        engine = {"connect_args": {"connect_timeout": 5}}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"cannot reach study storage {redact(url)}: {reason}") from None


def open_study(name: str, url: str, *, space_hash: str | None, sampler: Any = None,
               attrs: dict[str, Any] | None = None, create: bool = True,
               heartbeat: bool = True) -> Any:
    """The study ``name`` in ``url``: created (with ``attrs`` and the space hash) when absent
    and ``create``; refused when it was made with another search space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(url, heartbeat)
    try:
        if create:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                        direction="minimize", load_if_exists=True)
        else:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        raise ConfigError(f"no study {name!r} in {redact(url)}; start it with modelzip "
                          "compress ... --study NAME --storage URL") from None
    stored = study.user_attrs.get("space_hash")
    if stored is None and create:
        for key, value in {**(attrs or {}), "space_hash": space_hash}.items():
            study.set_user_attr(key, value)
    elif space_hash is not None and stored != space_hash:
        raise ConfigError(f"study {name!r} in {redact(url)} was made with another search "
                          f"space (hash {stored}, this one {space_hash}); choose another "
                          "--study name or the same space")
    return study
