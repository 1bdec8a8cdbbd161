"""Atomic writes of files and of whole folders, torch-free so that the on-board runner and
patcher can use them too.

- ``write_atomic(path, data)``: a temporary file beside ``path``, fsynced, then one rename.
- ``staged_folder(target)``: a temporary folder beside ``target`` to write a whole output
  into; when the block ends without error it replaces ``target`` in one rename (on Linux an
  atomic exchange even when ``target`` exists), else it is deleted. A kill at any moment
  leaves either the old folder or the new one, never a mix of the two.
- ``check_output_folder(path, force=...)``: the checks a command makes on its output folder
  before it starts work: not a file, not its own input, empty unless ``force``, writable.

Temporary names start with a dot and end in ``.tmp``; ones left by a killed process are
removed by the next write to the same path once they are a minute old.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from modelzip.errors import ConfigError

__all__ = ["check_output_folder", "replace_folder", "staged_folder", "write_atomic"]

OUTPUT_MARKERS = ("modelzip.json", "model.mzip")  # a folder modelzip wrote holds one of these
STALE_AFTER_S = 60.0


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place, so
    that a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale(path: Path) -> None:
    """Temporary files or folders of ``path`` that a killed process left behind."""
    cutoff = time.time() - STALE_AFTER_S
    try:
        leftovers = list(path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"))
    except OSError:
        return
    for item in leftovers:
        try:
            if item.lstat().st_mtime > cutoff:
                continue  # maybe another writer's, still at work
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
        except OSError:
            pass


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ============================================================================ folders
@contextmanager
def staged_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A new empty folder beside ``target`` to write into; on success it replaces ``target``
    (``replace_folder``), on any error (or interrupt) it is deleted and ``target`` is left
    as it was."""
    target = Path(os.path.abspath(target))  # "." has no name to stage beside
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix="." + target.name + ".",
                                   suffix=".tmp"))
    try:
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield staged
        replace_folder(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already after a successful swap


def replace_folder(staged: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the folder ``staged`` at ``target`` in one rename; an existing ``target`` (a
    folder) ends up at ``staged``'s name and is deleted. Where the atomic exchange is missing
    (not Linux), an existing target is first moved aside: a crash between the two renames
    leaves it complete under its temporary name."""
    staged, target = Path(staged), Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(staged, target)  # rename(2) replaces an empty folder too
    elif _exchange(staged, target):
        shutil.rmtree(staged, ignore_errors=True)
    else:
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix="." + target.name + ".",
                                      suffix=".tmp"))
        os.replace(target, aside)
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system
    cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_folder(path: str | os.PathLike[str], *, force: bool = False,
                        inputs: Iterable[str | os.PathLike[str]] = (),
                        option: str = "--out") -> None:
    """Refuse an output folder before any work is done: one that is a file, that is (or
    holds) one of ``inputs``, that is not empty (unless ``force``), that holds files modelzip
    did not write (even with ``force``: the whole folder is replaced), or that cannot be
    created or written. Raises ConfigError saying what to do."""
    path = Path(path)
    where = path.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if src == where or where in src.parents:
            raise ConfigError(f"{option} {path} is the input {source} (or holds it): the "
                              f"output would replace the input; choose another {option}")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder (new or empty) to write "
                          "the checkpoint into")
    if path.is_dir():
        try:
            entries = sorted(e.name for e in os.scandir(path))
        except OSError as exc:
            raise ConfigError(f"{option} {path}: cannot read it "
                              f"({exc.strerror or exc})") from None
        if entries and not force:
            raise ConfigError(f"{option} {path} exists and is not empty; pass --force to "
                              f"replace the whole folder, or choose another {option}")
        if entries and not set(OUTPUT_MARKERS) & set(entries):
            raise ConfigError(f"{option} {path} holds files modelzip did not write "
                              f"({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}"
                              f"); it is not replaced even with --force: choose another "
                              f"{option}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {parent} (permission denied); "
                          f"choose another {option}")
