"""The persistent compilation cache: JAX's own, in a directory checked before JAX uses it, with
its warnings about unreadable or unwritable entries turned into one line.

A directory that cannot be written costs one warning, the first time, and runs without the
cache (JAX would warn twice per program, on every run, and may wait seconds on its lock file
for each). An entry that cannot be read (a corrupt or truncated file) costs one warning; it is
removed, so the program compiled in its place is saved and later runs load it (JAX would warn
about it on every run, since it never replaces an entry that exists). An entry that holds another
program (files renamed over each other) counts as unreadable. The cache's size cap
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
import threading
import warnings
from pathlib import Path
from typing import Any

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
    if not log.isEnabledFor(logging.WARNING):  # not shown (--quiet): not said yet
        return
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
        _record_failed_reads()
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
        removed = self.remove_unreadable(program, getattr(_failed_read, "key", None)) if kind == "reading" else 0
        _failed_read.key = None
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

    def remove_unreadable(self, program: str, key: str | None = None) -> int:
        """Remove the entry that could not be read: ``key``'s (the one JAX failed to read in
        this thread, or the warning's ``program`` when that names an entry), else
        ``program``'s entries whose data does not decompress. Returns how many went."""
        if self.directory is None:
            return 0
        if key is None and _is_entry(self.directory / f"{program}-cache"):
            key = program  # JAX's warning named the entry itself
        if key is not None:
            broken = [self.directory / f"{key}-cache"]
        else:  # pragma: no cover - JAX no longer reads entries through get_executable_and_time
            broken = [entry for entry in sorted(self.directory.glob(f"{glob.escape(program)}-*-cache"))
                      if not _decompresses(entry)]
        removed = 0
        try:
            with self._locked():
                for entry in broken:
                    with contextlib.suppress(OSError):
                        _remove(entry)
                        removed += 1
                    with contextlib.suppress(OSError):
                        _remove(entry.with_name(entry.name[: -len("-cache")] + "-atime"))
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


_failed_read = threading.local()  # .key: the entry JAX last failed to read in this thread


def _record_failed_reads() -> None:
    """Have JAX's reads of the persistent cache note, in this thread, the key of an entry they
    fail on (JAX's warning that follows names only the program, which several entries share:
    every width of a model's ``train``), so that the guard removes that entry and no other."""
    try:
        from jax._src import compilation_cache
    except ImportError:  # pragma: no cover - JAX moved it: entries that do not decompress go
        return
    read = compilation_cache.get_executable_and_time
    if getattr(read, "epsweep_records", False):
        return

    def recording(cache_key: str, *args, **kwargs):  # noqa: ANN202 - JAX's own signature
        try:
            executable, compile_time = read(cache_key, *args, **kwargs)
            _check_program(cache_key, executable)
        except Exception:
            _failed_read.key = cache_key
            raise
        return executable, compile_time

    recording.epsweep_records = True
    compilation_cache.get_executable_and_time = recording


def _check_program(cache_key: str, executable: Any) -> None:
    """Raise if ``executable``, read from the entry ``cache_key`` (JAX's ``<program>-<hash>``)
    of one of epsweep's programs (``jit_epsweep_*``), is not that program: an entry renamed or
    copied over another's, which JAX would load and then fail on with an AssertionError.
    Raised inside JAX's read, this goes JAX's way for an unreadable entry: a warning (one
    line, :class:`_CacheGuard`), the entry removed, the program compiled and saved in its
    place. Other programs are not checked: XLA rewrites some names (``jit_fñ``: ``jit_f__``)."""
    expected = cache_key.rsplit("-", 1)[0]
    if executable is None or not expected.startswith("jit_epsweep_"):  # others' names: XLA may rewrite them
        return
    try:
        found = executable.hlo_modules()[0].name
    except Exception:  # noqa: BLE001 - a backend that does not say: loaded unchecked, as JAX loads it
        return
    if found != expected:
        raise ValueError(f"the entry holds the program {found}, not {expected}")


def _is_entry(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _decompresses(entry: Path) -> bool:
    try:
        from jax._src.compilation_cache import decompress_executable

        decompress_executable(entry.read_bytes())
        return True
    except Exception:  # noqa: BLE001 - whatever the library raises, the entry is unusable
        return False


def _remove(path: Path) -> None:
    """Remove a cache entry's file, or a directory in its place."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


_cache_guard = _CacheGuard()
