"""One writer per output: an OS-level exclusive lock held for the whole run.

:func:`output_lock` checks that an output folder (or output file) can be written, then takes
an exclusive, non-blocking lock on a lock file beside the results — ``<folder>/.causal-delta.lock``
for a folder, ``<parent>/.<name>.lock`` for a file — and holds it until the block ends. The lock
is ``fcntl.flock`` (``msvcrt.locking`` on Windows): the operating system drops it when the
process dies, however it dies, so a killed run never leaves a stale lock. The holder writes its
PID into the lock file so that a second writer can say who holds it; the lock file is removed
when the block ends (a killed run leaves the file, but not the lock).

The CLI takes these locks for every command that writes (:func:`output_locks`); library
functions do not lock, since their caller owns the folder. Under ``torchrun`` the ranks of one
run are one writer: rank 0 holds the locks for all of them (a second rank would otherwise find
the folder "in use"), and tells the others whether it got them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputInUseError", "check_writable", "output_lock", "output_locks"]

LOCK_NAME = ".causal-delta.lock"


class OutputInUseError(OSError):
    """Another process holds the lock on an output (the message names it and the holder's PID)."""


def _describe(kind: str, path: Path) -> str:
    return f"output {kind} {path}"


def check_writable(path: str | os.PathLike, *, kind: str = "folder", arg: str = "--out") -> list[Path]:
    """Make sure ``path`` can be written before any work starts.

    A folder is created (with its parents) when missing; a file's parent folder must exist or
    is created. A probe file is created and removed, so a read-only file system or a missing
    permission shows here rather than after the work.

    Args:
        path: the output folder (``kind="folder"``) or output file (``kind="file"``).
        arg: the option that named ``path``, for the messages.

    Returns:
        The folders this call created, deepest first (so a caller can remove them again when
        they stay empty).

    Raises:
        NotADirectoryError: a folder is an existing file, or a parent of the path is a file.
        IsADirectoryError: an output file is an existing folder.
        OSError: the folder cannot be created or written (read-only file system, permission).
    """
    if kind not in ("folder", "file"):
        raise ValueError(f"kind must be 'folder' or 'file', got {kind!r}")
    p = Path(path).expanduser()
    if kind == "file":
        if p.is_dir():
            raise IsADirectoryError(errno.EISDIR, f"{arg} {p} is a folder; expected a file name")
        folder = p.parent if str(p.parent) else Path(".")
    else:
        folder = p
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{arg} {p}: {folder} exists and is not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{arg} {p}: {parent} is a file, not a folder")
            break
    created = [q for q in (folder, *folder.parents) if not q.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".causal-delta-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        _remove_empty(created)
        raise OSError(exc.errno, f"{arg} {p} cannot be written: {exc.strerror or exc}") from exc
    return created


def _remove_empty(folders: list[Path]) -> None:
    for q in folders:  # deepest first; rmdir refuses a folder that holds anything
        try:
            q.rmdir()
        except OSError:
            return


def _try_lock(fd: int) -> bool:
    # a sys.platform test (not try/except ImportError) so mypy checks only this platform's branch
    if sys.platform == "win32":  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return f"PID {text}" if text.isdigit() else "PID unknown"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, *, kind: str = "folder", arg: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on the output ``path`` for the duration of the block.

    Checks writability first (:func:`check_writable`), then locks without waiting. Folders
    this call created are removed again at the end if nothing was written into them.

    Yields:
        The lock file's path.

    Raises:
        OutputInUseError: another process holds the lock; the message names the output and
            the holder's PID.
        OSError: see :func:`check_writable`.
    """
    p = Path(path).expanduser()
    created = check_writable(p, kind=kind, arg=arg)
    lock_path = p / LOCK_NAME if kind == "folder" else p.parent / f".{p.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            _remove_empty(created)
            raise OutputInUseError(errno.EBUSY, f"{_describe(kind, p)} is in use by another causal-delta "
                                                f"process ({_holder(lock_path)})")
        # The previous holder may have removed the file between our open and our lock: then we
        # hold a lock on a file nobody else can see. Retry on the file now at that path.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        # Remove while still holding the lock (see the retry above), then release.
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)
        _remove_empty(created)


@contextlib.contextmanager
def output_locks(outputs) -> Iterator[None]:
    """Hold :func:`output_lock` on every output (``.path``, ``.kind``, ``.arg``) for the block.

    Under ``torchrun`` (:mod:`causal_delta.distributed`) only rank 0 takes the locks; every rank
    learns whether it got them, so that all stop together when another process holds one. In a
    single process this imports nothing (a second writer stops before torch loads).

    Raises:
        OutputInUseError, OSError: as :func:`output_lock` (on rank 0); ``OSError`` on the
            other ranks when rank 0 could not claim the outputs.
    """
    from . import distributed as dist

    with contextlib.ExitStack() as held:
        failure = None
        if dist.is_main():
            try:
                for out in outputs:
                    held.enter_context(output_lock(out.path, kind=out.kind, arg=out.arg))
            except OSError as exc:
                failure = exc
        if dist.world_size() > 1:
            message = dist.broadcast_object(None if failure is None else str(failure))
            if failure is None and message is not None:
                raise OSError(errno.EBUSY, f"rank 0 could not claim the outputs: {message}")
        if failure is not None:
            raise failure
        yield
