"""A throwaway PostgreSQL cluster for the search tests and benchmark: ``initdb`` into a
temporary folder, ``pg_ctl start`` on a unix socket in it (no TCP), stopped and removed at the
end. As root the server runs as ``nobody`` (PostgreSQL refuses to run as root).

    with throwaway_postgres() as url:   # postgresql://postgres@/postgres?host=/tmp/...&port=...
        ...

``python scripts/throwaway_postgres.py`` starts one, prints its URL and waits for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["find_bin", "missing_reason", "throwaway_postgres"]

_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/local/bin",
         "/usr/bin")


def find_bin(name: str) -> str | None:
    """The real binary (Debian's /usr/bin wrappers want a cluster config: skip them)."""
    for folder in _DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK) and b"PostgreSQL" in _head(path):
            return str(path)
    return None


def _head(path: Path) -> bytes:
    try:
        return path.read_bytes()[:200_000] if path.stat().st_size < 50_000_000 else b""
    except OSError:
        return b""


def missing_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    for name in ("initdb", "pg_ctl"):
        if find_bin(name) is None:
            return (f"PostgreSQL's {name} is not installed (apt-get install postgresql; "
                    "scripts/setup_search_services.sh)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"{Path(cmd[-1] if cmd[0] != 'runuser' else cmd[4]).name} failed: "
                           f"{why[-1] if why else done.returncode}")


@contextlib.contextmanager
def throwaway_postgres(folder: str | os.PathLike[str] | None = None) -> Iterator[str]:
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    base = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="mzpg-"))
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(base, "nobody")
        os.chmod(base, 0o700)
    data, port = base / "data", _free_port()
    _run(_as_server_user([find_bin("initdb"), "-D", str(data), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8", "--no-sync"]))
    opts = f"-k {base} -p {port} -c listen_addresses='' -c fsync=off -c max_connections=50"
    pg_ctl = find_bin("pg_ctl")
    _run(_as_server_user([pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w",
                          "start"]))
    try:
        yield f"postgresql://postgres@/postgres?host={base}&port={port}"
    finally:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w",
                                        "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    import time

    with throwaway_postgres() as url:
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
