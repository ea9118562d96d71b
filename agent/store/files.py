"""The state directory on disk: its modes, its lock, and moving a bad DB aside.

The directory is 0700 and every file in it 0600, whatever the umask: the
database holds run data and, later, identity facts that no other local user
may read.  The lock is an ``flock`` on ``agent.lock``; the kernel drops it
when the process dies, SIGKILL included, so a crash never leaves a stale lock
behind and nothing has to guess whether a recorded pid is still alive.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from agent.errors import StateDirLocked, StoreError

DB_NAME = "state.db"
LOCK_NAME = "agent.lock"
SIDE_SUFFIXES = ("-wal", "-shm")  # SQLite's companions of a WAL database

DIR_MODE = 0o700
FILE_MODE = 0o600
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def prepare_dir(state_dir: Path) -> None:
    """Create the state directory 0700, or tighten an existing one we own."""
    try:
        state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        st = state_dir.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(
                f"state directory {state_dir} is not a directory",
                hint="point --state-dir at a directory",
            )
        # mkdir's mode is filtered by the umask, and an existing directory may
        # be looser; someone else's directory is left as its owner set it.
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != DIR_MODE:
            os.chmod(state_dir, DIR_MODE)
    except OSError as exc:
        raise StoreError(
            f"cannot prepare state directory {state_dir}: {exc.strerror or exc}",
            hint="check that the path is writable by this user, or use another --state-dir",
        ) from exc


def _tighten(fd: int) -> None:
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != FILE_MODE:
        os.fchmod(fd, FILE_MODE)


def acquire_lock(state_dir: Path) -> int:
    """Lock the state directory for this process; return the lock's fd."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, _OPEN_FLAGS, FILE_MODE)
    except OSError as exc:
        raise StoreError(
            f"cannot open lock file {path}: {exc.strerror or exc}",
            hint="check the state directory's ownership, or use another --state-dir",
        ) from exc
    try:
        _tighten(fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _locked_error(state_dir, holder) from exc
        raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from exc
    try:
        # The pid is only for the message a second opener prints; the lock
        # itself is the flock, which the kernel releases with the process.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        release_lock(fd)
        raise StoreError(f"cannot write lock file {path}: {exc.strerror or exc}") from exc
    return fd


def release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _locked_error(state_dir: Path, pid: int | None) -> StateDirLocked:
    if pid == os.getpid():
        return StateDirLocked(
            f"state directory {state_dir} is already open in this process (pid {pid})",
            hint="close the other store first",
        )
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return StateDirLocked(
        f"state directory {state_dir} is in use by another flow-agent process ({who}); "
        "stop it or use another --state-dir"
    )


def prepare_db_file(db_path: Path) -> None:
    """Create the database file 0600 before SQLite does, and tighten old files.

    SQLite gives its -wal and -shm files the mode of the database file, so
    fixing the main file fixes the ones it creates later; companions left by
    an earlier run are tightened here.
    """
    try:
        fd = os.open(db_path, _OPEN_FLAGS, FILE_MODE)
        try:
            created = os.fstat(fd).st_size == 0
            _tighten(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(db_path.parent)
        for suffix in SIDE_SUFFIXES:
            side = db_path.with_name(db_path.name + suffix)
            try:
                fd = os.open(side, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                _tighten(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise StoreError(
            f"cannot open state database {db_path}: {exc.strerror or exc}",
            hint="check the file's ownership and permissions, or use another --state-dir",
        ) from exc


def move_aside(db_path: Path, *, clock: Callable[[], float]) -> Path:
    """Rename a damaged database and its companions; return the new name.

    The companions keep their suffixes (``X-wal``), so opening the moved file
    with SQLite still sees its write-ahead log, for recovery by a person.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    aside = db_path.with_name(f"{db_path.name}.corrupt-{stamp}")
    n = 1
    while any(
        os.path.lexists(f"{aside}{suffix}") for suffix in ("", *SIDE_SUFFIXES)
    ):  # two failures within one second
        n += 1
        aside = db_path.with_name(f"{db_path.name}.corrupt-{stamp}-{n}")
    try:
        # Companions first: a -wal left next to a fresh database of the same
        # name would be replayed into it.
        for suffix in SIDE_SUFFIXES:
            side = db_path.with_name(db_path.name + suffix)
            if os.path.lexists(side):
                os.rename(side, f"{aside}{suffix}")
        os.rename(db_path, aside)
        _fsync_dir(db_path.parent)
    except OSError as exc:
        raise StoreError(
            f"{db_path} is damaged and could not be moved aside: {exc.strerror or exc}",
            hint=f"move {db_path} and its -wal/-shm files away by hand, then start again",
        ) from exc
    return aside


def _fsync_dir(directory: Path) -> None:
    # Makes a created or renamed directory entry survive power loss.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
