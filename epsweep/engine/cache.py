"""The persistent compilation cache: JAX's own, in a directory checked before JAX uses it, with
its warnings about unreadable or unwritable entries turned into one line.

A directory that cannot be written costs one warning, the first time, and runs without the
cache (JAX would warn twice per program, on every run, and may wait seconds on its lock file
for each). An entry that cannot be read (a corrupt or truncated file) costs one warning; it is
removed, so the program compiled in its place is saved and later runs load it (JAX would warn
about it on every run, since it never replaces an entry that exists). The cache's size cap
uses ``filelock``, a dependency.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import jax

from epsweep.engine.runtime import CACHE_ENV, CACHE_MAX_BYTES, default_cache_dir

log = logging.getLogger(__name__)


def _cache_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as the compilation cache (None when it can): it must be a
    directory in which files can be made, with a writable lock file. Checked before JAX uses
    it, which would otherwise warn for every program (and wait on the lock for seconds)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{path} is not a directory"
    except OSError as e:
        return f"cannot create {path} ({e.strerror or e})"
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
        lock = path / ".lockfile"
        if lock.exists():
            with open(lock, "a"):
                pass
    except OSError as e:
        return f"cannot write in {path} ({e.strerror or e})"
    return None


def set_compile_cache(setting: bool | str | Path) -> Path | None:
    """Use ``setting`` (True: the default directory; False: none; or a directory) as the
    persistent compilation cache; returns the directory in use, or None."""
    from jax.experimental.compilation_cache import compilation_cache

    path = default_cache_dir() if setting is True else (Path(setting).expanduser() if setting else None)
    if path is not None:
        problem = _cache_problem(path)
        if problem is not None:
            _warn_once(problem, "compilation cache off: %s; runs go without it (said once: set %s to a writable "
                                "directory, or to off)", problem, CACHE_ENV)
            path = None
    compilation_cache.reset_cache()  # let a new directory (or none) take effect
    jax.config.update("jax_enable_compilation_cache", path is not None)
    jax.config.update("jax_compilation_cache_dir", str(path) if path is not None else None)
    _cache_guard.directory = path
    if path is not None:
        # every program is worth keeping: ours take seconds to compile on CPU, under one on a GPU
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        if jax.config.jax_compilation_cache_max_size == -1 and _has_filelock():
            jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
        _cache_guard.install()
    return path


def _warn_once(key: str, message: str, *args) -> None:
    """Log ``message`` as a warning the first time ``key`` comes up on this machine (for this
    user, until the temporary directory is cleared), at info level after that: a directory that
    stays unwritable costs one line, not one on every run."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
    marker = Path(tempfile.gettempdir()) / f"epsweep-{os.getuid()}" / f"warned-{digest}"
    if marker.exists():
        log.info(message, *args)
        return
    log.warning(message, *args)
    try:
        marker.parent.mkdir(mode=0o700, exist_ok=True)
        marker.touch()
    except OSError:
        pass


def _has_filelock() -> bool:
    """JAX caps the cache's size only with ``filelock`` (a dependency of epsweep); without it,
    every cache read would fail, so the cache then goes uncapped rather than unused."""
    if importlib.util.find_spec("filelock") is not None:
        return True
    log.info("filelock is not installed: the compilation cache is not capped at %d bytes", CACHE_MAX_BYTES)
    return False


class _CacheGuard:
    """JAX reports a cache entry it cannot read or write with a Python warning per program
    (and, for an entry that is corrupt, again on every later run: it never replaces an entry
    that exists). This turns those warnings into one ``epsweep`` log line per process and
    removes the entries that cannot be read, so the program compiled instead is saved in
    their place and the next run loads it."""

    PATTERN = re.compile(r"Error (reading|writing) persistent compilation cache entry for '([^']*)': (.*)", re.S)

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.warned = False
        self._previous = None

    def install(self) -> None:
        if self._previous is not None:
            return
        self._previous = warnings.showwarning
        warnings.showwarning = self.show
        warnings.filterwarnings("always", message=r"Error (reading|writing) persistent compilation cache entry",
                                category=UserWarning)

    def show(self, message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' API
        match = self.PATTERN.match(str(message))
        if match is None:
            return self._previous(message, category, filename, lineno, file, line)
        kind, program, reason = match.groups()
        reason = " ".join(reason.split())[:160]
        removed = self.remove_unreadable(program) if kind == "reading" else 0
        if self.warned:
            return None
        self.warned = True
        if kind == "reading":
            log.warning("compilation cache: an entry for %s in %s could not be read (%s); %s, and the program was "
                        "compiled again", program, self.directory, reason,
                        f"removed {removed} unreadable entr{'y' if removed == 1 else 'ies'}" if removed
                        else "nothing removed")
        else:
            log.warning("compilation cache: cannot save %s in %s (%s); programs are compiled but not kept",
                        program, self.directory, reason)
        return None

    def remove_unreadable(self, program: str) -> int:
        """Remove ``program``'s entries that cannot be read: those whose data does not
        decompress or is not a file, or whose access time is not a file; when every entry
        reads, the one JAX read last (it stamps an entry's access time as it reads it), which
        decompressed but did not load. Returns how many went."""
        if self.directory is None:
            return 0
        entries = sorted(self.directory.glob(f"{glob.escape(program)}-*-cache"))
        try:
            from jax._src.compilation_cache import decompress_executable
        except ImportError:  # pragma: no cover - JAX moved it: the entry read last goes
            decompress_executable = None
        broken, read_at = [], {}
        for entry in entries:
            try:
                if decompress_executable is not None:
                    decompress_executable(entry.read_bytes())
                stamp = _access_time(entry)
                if stamp.is_file():
                    read_at[entry] = int.from_bytes(stamp.read_bytes()[:8], "little")
                elif stamp.exists():
                    raise IsADirectoryError(stamp)
                else:  # JAX stamps only a capped cache
                    read_at[entry] = entry.stat().st_mtime_ns
            except Exception:  # noqa: BLE001 - whatever the library raises, the entry is unusable
                broken.append(entry)
        if not broken and read_at:
            broken = [max(read_at, key=read_at.get)]
        removed = 0
        try:
            with self._locked():
                for entry in broken:
                    with contextlib.suppress(OSError):
                        _remove(entry)
                        removed += 1
                    with contextlib.suppress(OSError):
                        _remove(_access_time(entry))
        except (TimeoutError, OSError):  # filelock.Timeout is a TimeoutError
            pass
        return removed

    def _locked(self):
        """JAX's own lock on the directory (taken as JAX takes it, when it caps the size)."""
        try:
            import filelock
        except ImportError:
            return contextlib.nullcontext()
        return filelock.FileLock(self.directory / ".lockfile", timeout=2)


def _access_time(entry: Path) -> Path:
    """The file beside a cache entry where JAX stamps when it was last read or written."""
    return entry.with_name(entry.name[: -len("-cache")] + "-atime")


def _remove(path: Path) -> None:
    """Remove a cache entry's file, or a directory in its place."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


_cache_guard = _CacheGuard()
