"""Atomic file writes: a crash or an interrupt leaves either the old file or the new one.

A process killed mid-write (SIGKILL, power loss: no ``finally`` runs) leaves its temp file
behind, named ``.<name>.<random>.<pid>.tmp`` beside the file. Such leftovers are removed by the
next write of the same file (:func:`remove_stale_temps`), no reader looks at them (cassette
folders are searched for ``.yaml``/``.yml``/``.json`` only), and the README gives the
``.gitignore`` pattern that keeps them out of commits: :data:`TEMP_PATTERN`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_DEFAULT_MODE = 0o644

TEMP_PATTERN = ".*.tmp"
"""The ``.gitignore`` pattern matching every temp file :func:`write_atomic` creates."""

# A temp file of a live writer is never removed: its pid is in its name. One whose pid is gone,
# or that is older than this (a pid reused, or a file from before the pid was in the name), is.
_STALE_SECONDS = 600.0


def _temp_name(name: str) -> re.Pattern[str]:
    # mkstemp's random part is 8 characters of [a-z0-9_]; the pid was added to the name later.
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}(?:\.(\d+))?\.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its file
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files an interrupted :func:`write_atomic` of ``path`` left behind; return them.

    A temp file is stale when the process that made it is gone, or when it is older than ten
    minutes. Another process writing ``path`` at this moment keeps its temp file.
    """
    pattern = _temp_name(path.name)
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > _STALE_SECONDS
            if old or (match.group(1) is not None and not _alive(int(match.group(1)))):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    The temp file is flushed and fsynced before ``os.replace``; on any error, including
    ``KeyboardInterrupt``, it is removed and the previous file is left untouched. ``mkstemp``
    creates owner-only files, so the mode of the file being replaced (or 0644) is restored
    first, as pytest did for its cache directory (pytest#12308). Temp files that an earlier,
    killed write of ``path`` left behind are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = _DEFAULT_MODE & ~umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def write_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold a cross-process lock on ``path`` for a read-merge-write (``filelock``; freed if the holder dies).

    The lock file lives in the temp directory, named by a hash of the absolute path, so cassette
    folders get no ``.lock`` files: it serialises processes on one machine, which is where two
    runs share a checkout.

    Raises:
        TokenBudgetError: another process held it for ``timeout`` seconds (the file named).
    """
    import filelock

    from .errors import TokenBudgetError

    digest = hashlib.sha256(str(Path(path).resolve()).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    folder = Path(tempfile.gettempdir()) / "pytest-tokenbudget-locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(folder / f"{digest}.lock", timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise TokenBudgetError(
            "the file is locked by another run",
            file=str(path),
            why=f"another pytest-tokenbudget process held its write lock for more than {timeout:g} s",
            fix=f"let the other run finish; if none is running, delete {lock.lock_file}",
        ) from None
    try:
        yield
    finally:
        lock.release()
