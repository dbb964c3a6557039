"""One writer per output folder: a lock that every stage holds on the folders it writes.

``with output_lock(folder):`` takes an exclusive ``flock`` (through the ``filelock`` library) on a lock file
next to the folder, ``.NAME.hneurons-lock`` (``editor.formats.LOCK_FILE``; inside the folder, as
``.hneurons-lock``, when only the folder itself is writable). A second process that asks for the same folder
does not wait: it gets :class:`~editor.errors.OutputInUseError` at once, naming the folder and the pid the
holder wrote into the lock file, and has written nothing. The operating system drops a ``flock`` when its
process dies, so a lock left by a killed run (SIGKILL, power loss) never blocks the next run: the file is
still there, but the next process locks it, writes its own pid and goes on. The lock file is removed when
the lock is released (while still held; a process that opened the old file then finds it unlinked and
fails or retries, never sharing it), so a finished or refused run leaves nothing behind.

Within one process the lock is re-entrant (``hneurons run`` holds its recipe output while each stage locks
its own folder; a command may lock a folder before loading the model and the stage lock it again).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import inspect
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .errors import InputError, OutputInUseError, OutputWriteError
from .formats import IN_FOLDER_LOCK, LOCK_FILE

log = logging.getLogger(__name__)

_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth


def lock_file(folder: str | os.PathLike) -> Path:
    """Where the lock of ``folder`` lives: beside it (the folder may not exist yet, or be replaced by a rename),
    or inside it when its parent is not writable but the folder is."""
    target = Path(os.path.abspath(folder))
    with contextlib.suppress(OSError):
        target = target.parent.resolve() / target.name  # two spellings of one folder share one lock
    parent = target.parent
    if target != parent and not (parent.is_dir() and not os.access(parent, os.W_OK)):
        return parent / LOCK_FILE.format(name=target.name)
    return target / IN_FOLDER_LOCK


def holder_of(path: Path) -> dict:
    """What the process holding ``path`` wrote into it ({} when unreadable: being written, or just removed)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    data = json.dumps(info).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _made_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created (deepest first), to remove later."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block (see the module docstring); yields the lock file's path."""
    from filelock import FileLock, Timeout

    path = lock_file(folder)
    key = str(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    try:
        created = _made_parents(path.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise OutputWriteError(f"cannot create {path.parent} for {folder}: {os.strerror(exc.errno)}; free some "
                                   f"space or choose another output location") from None
        raise InputError(f"output {folder} cannot be created: {exc.filename or path.parent}: "
                         f"{exc.strerror or exc}") from None
    lock = FileLock(path, blocking=False, on_acquired=_write_holder)
    try:
        lock.acquire()
    except Timeout:
        _remove_empty(created)
        holder = holder_of(path)
        who = (f"pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname())
                                          else "") + (f", since {holder['since']}" if holder.get("since") else "")
               if holder.get("pid") else "pid unknown")
        raise OutputInUseError(f"{what} {folder} is being written by another hneurons process ({who}; lock file "
                               f"{path}): wait for it to finish, or choose another output folder") from None
    except OSError as exc:
        _remove_empty(created)
        if exc.errno in (errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # a file system without flock
            log.warning("cannot lock %s (the file system does not support flock): no protection against a second "
                        "process writing %s at the same time", path, folder)
            yield path
            return
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise OutputWriteError(f"cannot create the lock file {path} of {folder}: {os.strerror(exc.errno)}; free "
                                   f"some space or choose another output location") from None
        raise
    _HELD[key] = 1
    try:
        yield path
    finally:
        del _HELD[key]
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still locked: see the module docstring
        finally:
            lock.release()
            _remove_empty(created)


F = TypeVar("F", bound=Callable[..., Any])


def locked(parameter: str, what: str = "output folder") -> Callable[[F], F]:
    """Decorate a stage function so that it holds the lock of its ``parameter`` (an output folder) while it runs."""
    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            folder = signature.bind(*args, **kwargs).arguments.get(parameter)
            if folder is None:
                return function(*args, **kwargs)
            with output_lock(folder, what):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
