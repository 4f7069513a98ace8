"""Results files on disk: written whole and atomically, checked before a sweep starts, never
lost when the target cannot be written.

Every write to a results file holds :data:`WRITE_LOCK`, so a signal handler that exits the
process at once (see :mod:`epsweep.cli.signals`) can wait for it and never leaves half a line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from epsweep.errors import UserError, param

WRITE_LOCK = threading.RLock()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_all(fd: int, payload: bytes) -> None:
    """Write every byte of ``payload`` to ``fd``, or raise OSError. (A buffered Python file
    returns a short count and drops the rest when a write goes through in part: a full disk,
    ``ulimit -f``, a reader gone; the next ``os.write`` raises instead.)"""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: Path, data: str | bytes | Callable[[Path], None]) -> None:
    """Write ``path`` all at once: a temporary file beside it, flushed to disk, then renamed
    over it. ``data`` is the text or bytes, or a function that writes a given path.

    Raises OSError; the target is never left half-written. A symbolic link is followed (the
    file it points to is replaced); a device or pipe (``/dev/stdout``) is simply written to,
    by the name given (a pipe's real path names no file).
    """
    given = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    if given.exists() and not given.is_file():
        with WRITE_LOCK:
            if callable(data):
                data(given)
            else:
                fd = os.open(given, os.O_WRONLY)
                try:
                    write_all(fd, payload)
                finally:
                    os.close(fd)
        return
    path = Path(os.path.realpath(given))
    with WRITE_LOCK:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        try:
            if callable(data):
                os.close(fd)
                fd = -1
                data(Path(tmp))
                fd = os.open(tmp, os.O_RDONLY)
            else:
                write_all(fd, payload)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def keep_elsewhere(text: str, fmt: str) -> Path | None:
    """Save results ``text`` to a new file in the temporary directory; its path, or None when
    even that fails."""
    try:
        fd, fallback = tempfile.mkstemp(prefix="epsweep-results-", suffix=f".{fmt}")
    except OSError:
        return None
    try:
        write_all(fd, text.encode())
    except OSError:  # nothing half-written is left to pass for results
        with contextlib.suppress(OSError):
            os.unlink(fallback)
        return None
    finally:
        os.close(fd)
    return Path(fallback)


def write_or_keep(path: Path, text: str, fmt: str, option: str = "output") -> None:
    """Write ``text`` (results in format ``fmt``) to ``path`` atomically. If that fails (disk
    full, path gone), the text goes to a file in the temporary directory instead and the
    UserError says where: finished results are never thrown away."""
    try:
        write_atomic(path, text)
    except OSError as e:
        reason = e.strerror or str(e)
        fallback = keep_elsewhere(text, fmt)
        if fallback is None:
            raise UserError(f"{param(option)}: cannot write {path}: {reason}; the results could not be saved "
                            f"elsewhere either") from None
        raise UserError(f"{param(option)}: cannot write {path}: {reason}; "
                        f"the results were saved to {fallback}") from None


def check_writable(path: Path, option: str = "output") -> None:
    """Refuse early (before any training) an output path that cannot be written."""
    try:
        _check_writable(Path(path), option)
    except OSError as e:  # a name too long, say: the system cannot even look it up
        raise UserError(f"{param(option)}: cannot write {path}: {e.strerror or e}") from None


def _check_writable(path: Path, option: str) -> None:
    if str(path) == "-":  # "-" reads standard input for a value; for a file it would be a file named -
        raise UserError(f"{param(option)}: - names no file: results go to standard output without "
                        f"{param(option)} (a file named - is ./-)")
    if path.is_dir():
        raise UserError(f"{param(option)}: {path} is a directory")
    if path.exists() and not path.is_file():  # a device or pipe such as /dev/stdout
        if not os.access(path, os.W_OK):
            raise UserError(f"{param(option)}: {path} is not writable")
        return
    path = Path(os.path.realpath(path)) if path.is_symlink() else path
    parent = path.parent
    if not parent.exists():
        raise UserError(f"{param(option)}: directory {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{param(option)}: {parent} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{param(option)}: {path} is not writable")
    try:  # the real test: can a file be created beside it (read-only file systems, ACLs)?
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise UserError(f"{param(option)}: cannot write in {parent}: {e.strerror or e}") from None


class FileClaim:
    """An exclusive claim on a results file while a sweep writes it: an advisory lock
    (``flock``) on a small file named after the results file's real path, in a per-user
    directory under the temporary directory (nothing is added beside the results), holding
    the claimant's process id.

    A second claim on the same file fails at once with a UserError naming the first process,
    instead of two sweeps interleaving their records. The lock goes with the process, so a
    killed sweep never leaves a stale claim.
    """

    def __init__(self, path: Path, fd: int | None):
        self.path = path
        self._fd = fd

    @staticmethod
    def lock_path(path: Path) -> Path:
        """The lock file for ``path`` (the same for every name of the same file)."""
        import hashlib

        real = os.path.realpath(path).encode("utf-8", "surrogateescape")
        name = hashlib.blake2b(real, digest_size=16).hexdigest()
        return Path(tempfile.gettempdir()) / f"epsweep-locks-{os.getuid()}" / f"{name}.lock"

    @classmethod
    def take(cls, path: Path, option: str = "output") -> "FileClaim":
        """Claim ``path``; a UserError when another process holds it. Devices and pipes
        (``/dev/stdout``) and places where no lock file can be made are not claimed."""
        path = Path(path)
        if path.exists() and not path.is_file():
            return cls(path, None)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return cls(path, None)
        lock = cls.lock_path(path)
        try:
            lock.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return cls(path, None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            except OSError:
                holder = "another process"
            os.close(fd)
            raise UserError(f"{param(option)}: {path} is being written by {holder}; wait for it to finish "
                            f"or choose another file") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"epsweep process {os.getpid()}".encode())
        return cls(path, fd)

    def release(self) -> None:
        """Give the claim up (the lock file stays, unlocked)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
