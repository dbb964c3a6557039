"""Artifact plumbing shared by every stage: atomic writes, hashes, provenance, safe output paths.

Every stage reads and writes documented files. A final-named file or folder is only ever created by an
atomic rename, so an interrupted run never leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError, OutputExistsError, OutputWriteError

TRACKED_PACKAGES = (
    "hneurons",
    "torch",
    "transformers",
    "safetensors",
    "peft",
    "huggingface-hub",
    "lm-eval",
    "gguf",
    "accelerate",
    "numpy",
)

_TMP_PREFIX = ".hneurons-tmp-"


# ----------------------------------------------------------------------------------------------- hashes
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every settings hash is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_json(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


def files_sha256(folder: str | os.PathLike, names: list[str] | None = None) -> dict[str, str]:
    """sha256 of every regular file below ``folder`` (or of ``names``), keyed by POSIX relative path."""
    root = Path(folder)
    if names is None:
        names = sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.is_symlink()
        )
    return {name: sha256_file(root / name) for name in names}


# -------------------------------------------------------------------------------------------- provenance
def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict[str, Any]:
    """What every manifest records about the software and machine that produced it."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
    }


# ------------------------------------------------------------------------------------------ atomic writes
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file too large (a file size limit was hit)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
}


def write_failure_reason(exc: BaseException) -> str | None:
    """Why a write failed when the cause is the storage, not a bug (None otherwise).

    safetensors reports I/O errors as its own exception type with the OS error code in the text, so the
    code is also read from the message.
    """
    if isinstance(exc, OSError) and exc.errno in _WRITE_FAILURES:
        return _WRITE_FAILURES[exc.errno]
    text = str(exc)
    return next((reason for code, reason in _WRITE_FAILURES.items() if f"(os error {code})" in text), None)


def human_bytes(n: int | float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _space_note(target: Path, exc: BaseException, progress: dict[str, Any]) -> str:
    """How much space the write needed and how much there is (for a full disk, quota or file size limit)."""
    needed, written = progress.get("needed"), progress.get("written")
    parts = []
    if needed:
        parts.append(f"it needs {human_bytes(needed)}")
    if written:
        parts.append(f"{human_bytes(written)} had been written when it failed")
    code = exc.errno if isinstance(exc, OSError) else next(
        (c for c in _WRITE_FAILURES if f"(os error {c})" in str(exc)), None)
    if code == errno.EFBIG:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            parts.append(f"one file may hold at most {human_bytes(limit)} here (ulimit -f)")
    elif code in (errno.ENOSPC, errno.EDQUOT):
        probe = target
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        with contextlib.suppress(OSError):
            parts.append(f"{human_bytes(shutil.disk_usage(probe).free)} free now on the device of {probe}")
    return f" ({'; '.join(parts)})" if parts else ""


@contextlib.contextmanager
def reported_write_errors(target: str | os.PathLike, needed: int | None = None) -> Iterator[dict[str, Any]]:
    """Turn a full disk, size limit or read-only file system while writing ``target`` into one clear error that
    says how much space was needed. The block may record ``written`` (bytes written when it failed) in the
    dict it is given; ``needed`` is what the whole write takes, when known."""
    progress: dict[str, Any] = {"needed": needed, "written": None}
    try:
        yield progress
    except OutputWriteError:
        raise
    except Exception as exc:
        reason = write_failure_reason(exc)
        if reason is None:
            raise
        raise OutputWriteError(f"cannot write {target}: {reason}{_space_note(Path(target), exc, progress)}; nothing "
                               f"was written under that name. Free some space or choose another output "
                               f"location") from exc


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary sibling, fsync it, then rename it over ``path``."""
    with atomic_writer(path, "wb", needed=len(data)) as handle:
        handle.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", needed: int | None = None) -> Iterator[Any]:
    """Stream into a temporary sibling; it becomes ``path`` only when the block completes."""
    target = Path(path)
    with reported_write_errors(target, needed) as progress:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                progress["written"] = os.path.getsize(tmp)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    _fsync_dir(target.parent)


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """A safetensors file as bytes, the same bytes for the same content in every process.

    safetensors keeps metadata in a hash map whose order changes from process to process; the header is
    rewritten here with sorted metadata keys (the tensor data and its offsets do not move).
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    return len(text).to_bytes(8, "little") + text + raw[8 + length:]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file, turning a missing or malformed file into one clear :class:`InputError`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {p} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is renamed to ``final`` in one step.

    On any exception the temporary folder is removed and ``final`` is left as it was. An existing
    ``final`` is an :class:`OutputExistsError` unless ``overwrite`` is set; then it is replaced only
    once the new folder is complete. ``needed`` (bytes, when known) is quoted if the disk fills up.
    """
    target = Path(final)
    check_output_target(target, overwrite)
    with reported_write_errors(target, needed) as progress:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temporaries(target.parent, target.name)
        tmp = temporary_dir(target.parent, target.name)
        try:
            yield tmp
            _fsync_dir(tmp)
            if target.exists():
                old = target.with_name(f"{_TMP_PREFIX}{target.name}-{os.getpid()}-old")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            _fsync_dir(target.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                progress["written"] = _size(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def temporary_dir(parent: str | os.PathLike, stem: str) -> Path:
    """A new temporary folder in ``parent`` whose name records this process (see remove_orphaned_temporaries)."""
    return Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{stem}-{os.getpid()}-", dir=parent))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphaned_temporaries(parent: str | os.PathLike, stem: str) -> int:
    """Remove temporary folders of ``stem`` (made by :func:`temporary_dir` or atomic_dir) whose process is gone.

    A killed run leaves its temporary folder behind; the next run of the same output removes it. A
    temporary of a process that is still running (a concurrent run) is left alone.
    """
    pattern = re.compile(re.escape(f"{_TMP_PREFIX}{stem}-") + r"(\d+)-[A-Za-z0-9_]+")
    removed = 0
    root = Path(parent)
    if not root.is_dir():
        return 0
    for entry in root.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed += 1
    return removed


def check_output_target(target: Path, overwrite: bool) -> None:
    """Fail before any work starts when ``target`` exists (without overwrite) or cannot be written."""
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output {target} already exists; pass --overwrite to replace it")
    parent = target.parent if target.parent != Path("") else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"output {target} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise InputError(f"output {target} cannot be created: {probe} is not writable")


def clean_stale_temporaries(folder: str | os.PathLike) -> int:
    """Remove temporary siblings left behind by a killed process; returns how many were removed."""
    root = Path(folder)
    removed = 0
    if not root.is_dir():
        return 0
    for entry in root.iterdir():
        if entry.name.startswith(_TMP_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed += 1
    return removed


# ------------------------------------------------------------------------------------------- safe paths
def check_no_outside_links(folder: str | os.PathLike) -> None:
    """Refuse an existing output folder that holds a symbolic link leading outside it.

    Stages write into existing output folders (resume, re-render); a planted link such as
    ``plots -> /home/user/.ssh`` would make such a write land elsewhere. Links inside the folder are fine.
    """
    root = Path(folder)
    if not root.is_dir():
        return
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):  # links to folders are listed, never entered
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if target != base and base not in target.parents:
                    raise InputError(f"output folder {root} holds the symbolic link {path} -> {os.readlink(path)}, "
                                     f"which leads outside it; hneurons does not write through such links: remove it")


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """Join a user-supplied relative path to ``root`` and refuse anything that escapes it.

    Absolute paths, ``..`` components and symlinks that point outside ``root`` are all errors: recipe
    and neuron files come from strangers and must not make hneurons write elsewhere.
    """
    rel = Path(relative)
    if rel.is_absolute() or any(part == ".." for part in rel.parts):
        raise InputError(f"path {relative!r} must be relative to the output folder and not contain '..'")
    base = Path(root).resolve()
    joined = (Path(root) / rel).resolve()
    if joined != base and base not in joined.parents:
        raise InputError(f"path {relative!r} resolves to {joined}, outside the output folder {base}")
    return Path(root) / rel
