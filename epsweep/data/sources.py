"""Where data comes from: the embedded digits, synthetic sets, and real files (MNIST IDX, .npz).

Every loader returns inputs scaled to float32 and integer labels; nothing is ever unpickled.
"""

from __future__ import annotations

import gzip
import importlib.resources
import logging
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
    given_split,
    split,
)
from epsweep.errors import UserError, looked_up, param

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits", "synthetic")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_DIMS = 8  # MNIST files have 1 (labels) or 3 (images)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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


def _holds_class_folders(path: Path) -> bool:
    """Whether directory ``path`` looks like an ImageFolder tree: a sub-folder holding an image
    (each sub-folder's own files are looked at until one is an image)."""
    try:
        for sub in path.iterdir():
            if not sub.name.startswith(".") and sub.is_dir():
                if any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()):
                    return True
    except OSError:  # unreadable: not said to be one
        return False
    return False


def _idx_pair(path: Path) -> tuple[Path, Path]:
    """Locate MNIST-style images and labels: a directory holding ``train-images-idx3-ubyte``
    and ``train-labels-idx1-ubyte`` (optionally .gz), or the images file itself."""
    if path.is_dir():
        for suffix in ("", ".gz"):
            images = path / f"train-images-idx3-ubyte{suffix}"
            labels = path / f"train-labels-idx1-ubyte{suffix}"
            if images.exists() and labels.exists():
                return images, labels
        if _holds_class_folders(path):
            raise UserError(f"{path}: a folder of images (one sub-folder per class), which the built-in tasks do "
                            f"not read: train a model of your own on it ({param('model_spec')} FILE.py:NAME with "
                            f"{param('image_size')} PIXELS), or Inception-v3 (epsweep inception)")
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


TRAIN_PAIRS = (("x_train", "y_train"), ("x", "y"))
VAL_PAIR = ("x_val", "y_val")
TEST_PAIR = ("x_test", "y_test")


def _npz_pairs(path: Path, names: set[str]) -> tuple[tuple[str, str], tuple[str, str] | None]:
    """The names of an .npz's training arrays and of its validation arrays (None: none given).
    Two training pairs, or half of the validation pair, are refused: which to use is unclear."""
    given = [pair for pair in TRAIN_PAIRS if set(pair) <= names]
    if len(given) > 1:
        raise UserError(f"{path}: holds both x/y and x_train/y_train, so which to train on is unclear; keep one "
                        f"pair (add x_val/y_val for a validation set of your own)")
    if not given:
        raise UserError(f"{path}: .npz needs arrays x_train/y_train or x/y; found {', '.join(sorted(names)) or 'none'}")
    if len(set(VAL_PAIR) & names) == 1:
        have, missing = VAL_PAIR if VAL_PAIR[0] in names else VAL_PAIR[::-1]
        raise UserError(f"{path}: has {have} but no {missing}; a validation set needs both")
    return given[0], VAL_PAIR if VAL_PAIR[0] in names else None


def _warn_unused(path: Path, unused: set[str]) -> None:
    """One warning naming the arrays of an .npz that nothing reads (a test set among them)."""
    if not unused:
        return
    test = " (x_test/y_test is a test set: neither trained nor validated on)" if unused & set(TEST_PAIR) else ""
    log.warning("%s: ignoring array%s %s%s; epsweep trains on x_train/y_train or x/y and validates on x_val/y_val "
                "when given, else on a part of the training examples it holds out", path, "s" * (len(unused) > 1),
                ", ".join(sorted(unused)), test)


def read_npz_split(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Keras-style ``x_train``/``y_train`` or plain ``x``/``y`` arrays, and ``x_val``/``y_val``
    when the file has them (else None); never unpickles. The arrays' sizes are read from their
    headers and checked against the data budget first; any other array is warned about."""
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
            train, val = _npz_pairs(path, names)
            used = train + (val or ())
            what = " and ".join((", ".join(used[:-1]), used[-1]))
            check_budget(_npz_arrays_size(arrays, used) * 4, f"arrays {what} as float32", str(path))
            _warn_unused(path, names - set(used))
            x, y = arrays[train[0]], arrays[train[1]]
            return x, y, (arrays[val[0]], arrays[val[1]]) if val else None
    except UserError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):  # object arrays need pickle: refused
            raise UserError(f"{path}: cannot load without unpickling ({e})") from None
        raise UserError(f"{path}: not a readable .npz file ({_short(e)})") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive makes zipfile, zlib and numpy raise almost anything
        raise UserError(f"{path}: not a readable .npz file ({_short(e)})") from None


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The training arrays of :func:`read_npz_split` (its validation arrays are left out)."""
    x, y, _ = read_npz_split(path)
    return x, y


def _append_validation(path: Path, x: np.ndarray, y: np.ndarray, val) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` with a file's validation examples after them, checked to match, so that
    both parts are scaled and checked as one."""
    xv, yv = (np.asarray(a) for a in val)
    y = np.asarray(y)
    if xv.ndim != x.ndim or xv.shape[1:] != x.shape[1:]:
        raise UserError(f"{path}: x_val has examples of shape {xv.shape[1:]}, the training inputs of shape "
                        f"{x.shape[1:]}")
    if y.ndim == 0 or yv.ndim != y.ndim or yv.shape[1:] != y.shape[1:]:
        raise UserError(f"{path}: y_val has labels of shape {yv.shape[1:]} per example, the training labels of "
                        f"shape {y.shape[1:]}")
    if len(xv) != len(yv):
        raise UserError(f"{path}: {len(xv)} validation inputs (x_val) but {len(yv)} labels (y_val)")
    return np.concatenate([x, xv]), np.concatenate([y, yv])


def load_examples(spec: str, targets: bool = False, probabilities: bool = False, *,
                  pixels: bool = False) -> tuple[str, np.ndarray, np.ndarray, int | None]:
    """Resolve a dataset name or path to (name, inputs, labels, validation count), inputs
    scaled to float32 (with ``pixels``, integer inputs are pixels: 0..255, uint16 0..65535; see
    :func:`~epsweep.data.dataset.as_images`). The last ``validation count`` examples are a
    validation set the file gave (an .npz's ``x_val``/``y_val``); None when it gave none. With
    ``targets``, a file's labels are kept as float32 regression targets instead; with
    ``probabilities`` (binary cross-entropy), float values that are not all whole numbers are
    kept as float32 targets, each in [0, 1] (whole numbers stay labels)."""
    if spec == "digits":
        x, y = digits()
        return "digits", x, y, None
    if spec == "synthetic":
        x, y = synthetic()
        return "synthetic", x, y, None
    if not spec:  # Path("") is the current folder
        raise UserError(f"{param('dataset')}: an empty path (built in: {', '.join(BUILTIN_DATASETS)})")
    path = Path(spec)
    status = looked_up(path, f"dataset {spec!r}")
    if status is None:
        raise UserError(f"dataset {spec!r}: no such file or directory (built in: {', '.join(BUILTIN_DATASETS)})")
    val = None
    if path.suffix == ".npz":
        x, y, val = read_npz_split(path)
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
    n_val = None
    if val is not None:
        n_val = len(val[0])
        x, y = _append_validation(path, x, y, val)
    x = as_images(x, str(path), pixels=pixels)
    y = np.asarray(y)
    check = as_targets if targets else as_labels
    if probabilities and y.dtype.kind == "f" and not np.all(y == np.round(y)):
        check = as_probabilities
    return str(path), x, check(y, len(x), str(path)), n_val


def load_arrays(spec: str, targets: bool = False, probabilities: bool = False) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, inputs, labels) of :func:`load_examples`, the training examples only."""
    name, x, y, n_val = load_examples(spec, targets, probabilities)
    n = len(x) - (n_val or 0)
    return name, x[:n], y[:n]


def split_examples(name: str, x: np.ndarray, y: np.ndarray, n_val: int | None, val_split: float, seed: int = 0,
                   num_classes: int | None = None) -> Dataset:
    """:func:`~epsweep.data.dataset.split` of what :func:`load_examples` read, or, when the
    file gave a validation set (``n_val``, the last examples), that set: nothing held out."""
    if n_val is None:
        return split(name, x, y, val_split, seed, num_classes)
    check_val_split(val_split)
    n = len(x) - n_val
    return given_split(name, x[:n], y[:n], x[n:], y[n:])


def load_dataset(spec: str, val_split: float = 0.2, seed: int = 0) -> Dataset:
    """Load ``spec`` (``digits``, ``synthetic``, or a path) and split off validation data (or
    use the validation set an .npz gives: ``x_val``/``y_val``)."""
    check_val_split(val_split)
    name, x, y, n_val = load_examples(spec)
    return split_examples(name, x, y, n_val, val_split, seed)
