"""Where data comes from: the embedded digits, synthetic sets, and real files (MNIST IDX, .npz).

Every loader returns inputs scaled to float32 and integer labels; nothing is ever unpickled.
"""

from __future__ import annotations

import gzip
import importlib.resources
import math
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from epsweep.data.dataset import (
    Dataset,
    as_images,
    as_labels,
    as_probabilities,
    as_targets,
    check_budget,
    check_val_split,
    split,
)
from epsweep.errors import UserError, looked_up, param

BUILTIN_DATASETS = ("digits", "synthetic")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_DIMS = 8  # MNIST files have 1 (labels) or 3 (images)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 handwritten digits (UCI optdigits test set, as in scikit-learn), shipped
    with the package: images scaled from 0..16 to [0, 1], shape (N, 8, 8, 1)."""
    with importlib.resources.files("epsweep.resources").joinpath("digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
    return x.astype(np.float32)[..., None] / 16.0, y.astype(np.int32)


def synthetic(n: int = 2048, classes: int = 10, side: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of ``classes`` random prototype images: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 1, size=(classes, side, side, 1)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int32)
    x = np.clip(prototypes[y] + rng.normal(0, 0.35, size=(n, side, side, 1)), 0, 1).astype(np.float32)
    return x, y


def toy(n: int = 100, features: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The classic small example: standard-normal inputs with random binary labels."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, 2, size=n).astype(np.int32)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    The header is read first and checked (magic number, at most :data:`MAX_IDX_DIMS`
    dimensions, the size it announces against the data budget); then exactly that many bytes
    are read, so neither a gzip bomb nor an endless file (``/dev/zero``) is read further.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
                raise UserError(f"{path}: not an IDX file (bad magic number)")
            ndim = magic[3]
            if ndim == 0 or ndim > MAX_IDX_DIMS:
                raise UserError(f"{path}: IDX header says {ndim} dimensions; at most {MAX_IDX_DIMS} are supported")
            raw_shape = f.read(4 * ndim)
            if len(raw_shape) < 4 * ndim:
                raise UserError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{ndim}I", raw_shape)
            dtype = np.dtype(IDX_DTYPES[magic[2]])
            expected = math.prod(shape) * dtype.itemsize  # a Python int: never wraps
            what = f"the IDX header's {' x '.join(f'{d:,}' for d in shape)} values"
            check_budget(math.prod(shape) * 4, what + " as float32", str(path))
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read IDX file ({' '.join(str(e).split())})") from None
    if len(data) != expected:
        held = "more data than" if len(data) > expected else f"{len(data):,} bytes of data, not"
        raise UserError(f"{path}: IDX file holds {held} the {expected:,} bytes its header announces")
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_pair(path: Path) -> tuple[Path, Path]:
    """Locate MNIST-style images and labels: a directory holding ``train-images-idx3-ubyte``
    and ``train-labels-idx1-ubyte`` (optionally .gz), or the images file itself."""
    if path.is_dir():
        for suffix in ("", ".gz"):
            images = path / f"train-images-idx3-ubyte{suffix}"
            labels = path / f"train-labels-idx1-ubyte{suffix}"
            if images.exists() and labels.exists():
                return images, labels
        raise UserError(f"{path}: directory has no train-images-idx3-ubyte / train-labels-idx1-ubyte pair")
    labels = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if labels == path or not labels.exists():
        raise UserError(f"{path}: cannot find the matching labels file (expected {labels.name})")
    return path, labels


def _npz_arrays_size(arrays, names: tuple[str, str]) -> int:
    """Elements of the arrays ``names`` of an open .npz, read from their headers (nothing is
    decompressed); 0 for an array whose header cannot be read (loading it then fails)."""
    total = 0
    for name in names:
        try:
            with arrays.zip.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, _ = read(member)
        except Exception:  # noqa: BLE001 - unreadable: loading it fails, and says so
            continue
        total += math.prod(shape)
    return total


def _short(error: Exception) -> str:
    """An exception as one short line: its type when its text says little."""
    text = " ".join(str(error).split())[:160]
    return text if len(text) > 12 else f"{type(error).__name__}: {text}".rstrip(": ")


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keras-style ``x_train``/``y_train`` or plain ``x``/``y`` arrays; never unpickles. The
    arrays' sizes are read from their headers and checked against the data budget first."""
    try:
        with open(path, "rb") as f:
            start = f.read(6)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if start == b"\x93NUMPY":
        raise UserError(f"{path}: a NumPy .npy file (one array), not an .npz of inputs and labels; "
                        f"save one with numpy.savez(path, x=inputs, y=labels)")
    if not start.startswith(b"PK"):  # every zip archive, so every .npz, starts so; NumPy would try pickle
        raise UserError(f"{path}: not an .npz file (not a zip archive); save one with "
                        f"numpy.savez(path, x=inputs, y=labels)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            names = set(arrays.files)
            for xk, yk in (("x_train", "y_train"), ("x", "y")):
                if {xk, yk} <= names:
                    check_budget(_npz_arrays_size(arrays, (xk, yk)) * 4, f"arrays {xk} and {yk} as float32",
                                 str(path))
                    return arrays[xk], arrays[yk]
    except UserError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):  # object arrays need pickle: refused
            raise UserError(f"{path}: cannot load without unpickling ({e})") from None
        raise UserError(f"{path}: not a readable .npz file ({_short(e)})") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive makes zipfile, zlib and numpy raise almost anything
        raise UserError(f"{path}: not a readable .npz file ({_short(e)})") from None
    raise UserError(f"{path}: .npz needs arrays x_train/y_train or x/y; found {', '.join(sorted(names)) or 'none'}")


def load_arrays(spec: str, targets: bool = False, probabilities: bool = False, *,
                pixels: bool = False) -> tuple[str, np.ndarray, np.ndarray]:
    """Resolve a dataset name or path to (name, inputs, labels), inputs scaled to float32
    (with ``pixels``, integer inputs are pixels: 0..255, uint16 0..65535; see
    :func:`~epsweep.data.dataset.as_images`); with ``targets``, a file's second array is kept
    as float32 regression targets instead; with ``probabilities`` (binary cross-entropy), float
    values that are not all whole numbers are kept as float32 targets, each in [0, 1] (whole
    numbers stay labels)."""
    if spec == "digits":
        x, y = digits()
        return "digits", x, y
    if spec == "synthetic":
        x, y = synthetic()
        return "synthetic", x, y
    if not spec:  # Path("") is the current folder
        raise UserError(f"{param('dataset')}: an empty path (built in: {', '.join(BUILTIN_DATASETS)})")
    path = Path(spec)
    status = looked_up(path, f"dataset {spec!r}")
    if status is None:
        raise UserError(f"dataset {spec!r}: no such file or directory (built in: {', '.join(BUILTIN_DATASETS)})")
    if path.suffix == ".npz":
        x, y = read_npz(path)
    elif stat.S_ISDIR(status.st_mode) or "idx" in path.name:
        images, labels = _idx_pair(path)
        x, y = read_idx(images), read_idx(labels)
    else:
        raise UserError(f"{path}: unknown dataset format (expected .npz, an IDX file or an MNIST directory)")
    x = np.asarray(x)
    if x.ndim == 0:
        raise UserError(f"{path}: inputs must have shape (N, features), (N, H, W) or (N, H, W, C); got a scalar")
    if len(x) == 0:
        raise UserError(f"{path}: dataset is empty")
    x = as_images(x, str(path), pixels=pixels)
    y = np.asarray(y)
    check = as_targets if targets else as_labels
    if probabilities and y.dtype.kind == "f" and not np.all(y == np.round(y)):
        check = as_probabilities
    return str(path), x, check(y, len(x), str(path))


def load_dataset(spec: str, val_split: float = 0.2, seed: int = 0) -> Dataset:
    """Load ``spec`` (``digits``, ``synthetic``, or a path) and split off validation data."""
    check_val_split(val_split)
    name, x, y = load_arrays(spec)
    return split(name, x, y, val_split, seed)
