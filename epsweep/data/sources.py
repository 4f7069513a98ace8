"""Where data comes from: the embedded digits, synthetic sets, and real files (MNIST IDX, .npz).

Every loader returns inputs scaled to float32 and integer labels; nothing is ever unpickled.
"""

from __future__ import annotations

import gzip
import importlib.resources
import zipfile
from pathlib import Path

import numpy as np

from epsweep.data.dataset import Dataset, as_images, as_labels, as_targets, split
from epsweep.errors import UserError

BUILTIN_DATASETS = ("digits", "synthetic")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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
    """Read an IDX file (the MNIST format), plain or gzip-compressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"{path}: IDX data has {len(raw) - header} bytes, header says {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


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


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keras-style ``x_train``/``y_train`` or plain ``x``/``y`` arrays; never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            names = set(arrays.files)
            for xk, yk in (("x_train", "y_train"), ("x", "y")):
                if {xk, yk} <= names:
                    return arrays[xk], arrays[yk]
    except ValueError as e:  # object arrays need pickle: refused
        raise UserError(f"{path}: cannot load without unpickling ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: not a readable .npz file ({e})") from None
    raise UserError(f"{path}: .npz needs arrays x_train/y_train or x/y; found {', '.join(sorted(names)) or 'none'}")


def load_arrays(spec: str, targets: bool = False) -> tuple[str, np.ndarray, np.ndarray]:
    """Resolve a dataset name or path to (name, inputs, labels), inputs scaled to float32;
    with ``targets``, a file's second array is kept as float32 regression targets instead."""
    if spec == "digits":
        x, y = digits()
        return "digits", x, y
    if spec == "synthetic":
        x, y = synthetic()
        return "synthetic", x, y
    path = Path(spec)
    if not path.exists():
        raise UserError(f"dataset {spec!r}: no such file or directory (built in: {', '.join(BUILTIN_DATASETS)})")
    if path.suffix == ".npz":
        x, y = read_npz(path)
    elif path.is_dir() or "idx" in path.name:
        images, labels = _idx_pair(path)
        x, y = read_idx(images), read_idx(labels)
    else:
        raise UserError(f"{path}: unknown dataset format (expected .npz, an IDX file or an MNIST directory)")
    x = np.asarray(x)
    if x.ndim == 0:
        raise UserError(f"{path}: inputs must have shape (N, features), (N, H, W) or (N, H, W, C); got a scalar")
    if len(x) == 0:
        raise UserError(f"{path}: dataset is empty")
    x = as_images(x, str(path))
    check = as_targets if targets else as_labels
    return str(path), x, check(np.asarray(y), len(x), str(path))


def load_dataset(spec: str, val_split: float = 0.2, seed: int = 0) -> Dataset:
    """Load ``spec`` (``digits``, ``synthetic``, or a path) and split off validation data."""
    name, x, y = load_arrays(spec)
    return split(name, x, y, val_split, seed)
