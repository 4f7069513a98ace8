"""Arrays kept on disk between sweeps: the frozen-base features of
:mod:`epsweep.engine.features`, one ``.npz`` per key in a directory bounded in size.

Files are written whole and atomically (:func:`~epsweep.results.files.write_atomic`: never
half a file under a key) and read with ``allow_pickle=False``. Each holds its own key (the
array ``KEY_ARRAY``), so that an entry copied or renamed over another key's file is not read as
that key's. A file that cannot be read, or holds another key, is a miss, never an error; so
is a directory that cannot be written (nothing is kept). When the directory grows past
``max_bytes``, the files used longest ago go first (a hit counts as a use).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np

from epsweep.results.files import write_atomic

log = logging.getLogger(__name__)

CACHE_ENV = "EPSWEEP_FEATURE_CACHE"
MAX_BYTES = 4 * 1024**3
_OFF = ("0", "off", "false", "no", "")
_KEY = re.compile(r"^[0-9a-f]{8,128}$")
KEY_ARRAY = "_key"  # the array in each file that holds the key it was saved under


def default_directory() -> Path | None:
    """Where features are kept between sweeps: ``$EPSWEEP_FEATURE_CACHE``, else ``features``
    beside the default compilation cache (``$XDG_CACHE_HOME/epsweep/features``, i.e.
    ``~/.cache/epsweep/features``); None when the environment turns it off (``off``)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "epsweep" / "features"


def _read(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` archive at ``path``; ValueError for anything else."""
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # one .npy array, saved in the archive's place
        raise ValueError("one array, not an .npz archive of named arrays")
    with loaded as stored:
        return {name: stored[name] for name in stored.files}


class ArrayCache:
    """Named NumPy arrays under hex keys in ``directory`` (made when first written).

    Example:
        >>> import tempfile
        >>> cache = ArrayCache(Path(tempfile.mkdtemp()) / "features")
        >>> cache.save("0123abcd", {"x_train": np.ones((2, 3), np.float32)})
        >>> cache.load("0123abcd")["x_train"].shape, cache.load("ffffffff")
        ((2, 3), None)
    """

    def __init__(self, directory: Path | str, max_bytes: int = MAX_BYTES):
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    @classmethod
    def default(cls) -> ArrayCache | None:
        """The cache in :func:`default_directory`, or None when that is turned off."""
        directory = default_directory()
        return None if directory is None else cls(directory)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a hex key: {key!r}")
        return self.directory / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays saved under ``key``, or None (absent, unreadable, holding objects, or
        saved under another key)."""
        path = self.path(key)
        try:
            arrays = _read(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            return None  # nothing there: saving says why, if it cannot keep them either
        except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as e:  # MemoryError: a header's shape
            log.warning("ignoring unreadable cached features %s (%s)", path, e)
            return None
        held = arrays.pop(KEY_ARRAY, None)
        if held is None or held.shape != () or held.dtype.kind != "U" or str(held) != key:
            log.warning("ignoring cached features %s: the entry was not saved under this key", path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last to be evicted
        return arrays

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Keep ``arrays`` under ``key`` (atomically), with the key itself; on a disk error,
        log it and keep nothing."""
        path = self.path(key)
        if KEY_ARRAY in arrays:
            raise ValueError(f"{KEY_ARRAY!r} is the store's own array name")
        arrays = {**arrays, KEY_ARRAY: np.array(key)}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda target: np.savez(target, **arrays))
        except OSError as e:
            log.warning("cannot keep features in %s", self._unwritable(path, e))
            return
        self._evict(keep=path)

    def _unwritable(self, path: Path, error: OSError) -> str:
        """What is wrong where a save failed: the folder, the entry, or else the file named."""
        with contextlib.suppress(OSError):
            if self.directory.exists() and not self.directory.is_dir():
                return f"{self.directory}: it is a file, not a folder"
            if path.is_dir():
                return f"{path}: a folder is in the entry's place"
        named = Path(error.filename) if error.filename else self.directory
        if named.name.startswith(f".{path.name}."):  # the temporary file beside the entry
            named = self.directory
        return f"{named} ({error.strerror or error})"

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used files until the directory holds at most max_bytes.
        What is not a file (a folder, a link, dangling or not) is neither counted nor removed."""
        try:
            paths = [p for p in self.directory.glob("*.npz") if not p.name.startswith(".")]  # not a temporary file
        except OSError:
            return
        entries = []
        for p in paths:
            with contextlib.suppress(OSError):  # gone since, or refused: skipped
                found = p.lstat()
                if stat.S_ISREG(found.st_mode):
                    entries.append((found.st_mtime, found.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
