"""The in-memory dataset every task trains on, and the checks that make arrays one.

A :class:`Dataset` holds float32 (or uint8 image) inputs and either int32 class labels or, for
regression, float32 targets, split into training and validation parts with a fixed data seed.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from epsweep.errors import UserError, param

log = logging.getLogger(__name__)

MAX_CLASSES = 100_000  # the output layer has one unit per class: labels must lie in 0..99,999
FLOAT32_MAX = float(np.finfo(np.float32).max)
FALLBACK_BUDGET = 4 * 1024**3  # when this machine's memory cannot be read


def memory_budget() -> int:
    """Bytes a dataset may take in memory, checked before it is read or decoded: half of this
    machine's memory (or of its cgroup's limit, when lower); the other half is left for the
    model, the optimizer states and the compiled programs."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return FALLBACK_BUDGET
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return max(total // 2, 1)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: 512 B, 3.5 MiB, 7.2 GiB, 5.4e+06 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB" if n < 1e4 else f"{n:.2g} TiB"


def check_budget(nbytes: int, what: str, source: str) -> None:
    """Refuse, before anything is allocated, data that would take more than
    :func:`memory_budget`: ``what`` says what would take ``nbytes`` (e.g. "60,000 images of
    28 x 28")."""
    budget = memory_budget()
    if nbytes > budget:
        raise UserError(f"{source}: {what} would take {format_bytes(nbytes)} in memory, more than the data budget "
                        f"of {format_bytes(budget)} (half of this machine's memory)")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Inputs and targets, split into train and validation (validation may be empty).

    Targets are integer class labels below ``num_classes``, or float32 regression targets
    (then ``num_classes`` is ``None``). Make one from your own arrays with :meth:`from_arrays`.

    Example:
        >>> import numpy as np
        >>> data = split("blobs", np.random.rand(10, 3).astype(np.float32), np.arange(10) % 2, val_split=0.2)
        >>> data.input_shape, data.num_classes, len(data.x_val)
        ((3,), 2, 2)
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of one example's target: ``()`` for a label or a single number."""
        return tuple(self.y_train.shape[1:])

    def describe(self) -> dict:
        out = {
            "name": self.name,
            "train": int(len(self.x_train)),
            "val": int(len(self.x_val)),
            "input_shape": list(self.input_shape),
            "classes": self.num_classes,
        }
        if self.num_classes is None:
            out["target_shape"] = list(self.target_shape)
        return out

    @classmethod
    def from_arrays(cls, x, y, *, val_split: float = 0.2, x_val=None, y_val=None, seed: int = 0,
                    name: str = "arrays") -> "Dataset":
        """Your own NumPy arrays as a dataset, checked.

        Inputs ``x`` of shape (N, ...) become float32 as they are (no scaling). Targets ``y``
        of shape (N, ...): integer (or bool) values are class labels 0..C-1, with C = the
        largest label + 1 (at least 2); floating values are regression targets, kept as
        float32 (``num_classes`` is then ``None``). Every value must be finite.

        Args:
            x: the inputs, one example per row.
            y: the labels or targets, one per example.
            val_split: the fraction of (x, y) held out for validation, after a shuffle with
                ``seed``; not used when ``x_val`` and ``y_val`` are given.
            x_val: validation inputs (with ``y_val``), shaped like ``x`` past the first axis.
            y_val: validation labels or targets.
            seed: the seed of the shuffle before the split.
            name: the dataset's name in results.

        Returns:
            The :class:`Dataset`.

        Example:
            >>> import numpy as np
            >>> rng = np.random.default_rng(0)
            >>> data = Dataset.from_arrays(rng.normal(size=(50, 4)), rng.integers(0, 3, 50), val_split=0.2)
            >>> data.input_shape, data.num_classes, len(data.x_train), len(data.x_val)
            ((4,), 3, 40, 10)
            >>> Dataset.from_arrays(rng.normal(size=(50, 4)), rng.normal(size=50)).num_classes is None
            True
        """
        x = _checked_inputs(x, "x")
        y = _checked_targets(y, len(x), "y")
        if (x_val is None) != (y_val is None):
            raise UserError(f"give both {param('x_val')} and {param('y_val')}, or neither")
        if x_val is None:
            return split(name, x, y, val_split, seed)
        xv = _checked_inputs(x_val, "x_val", allow_empty=True)
        yv = _checked_targets(y_val, len(xv), "y_val")
        if xv.shape[1:] != x.shape[1:]:
            raise UserError(f"{param('x_val')} has examples of shape {xv.shape[1:]}, {param('x')} of shape "
                            f"{x.shape[1:]}")
        if yv.shape[1:] != y.shape[1:] or (yv.dtype.kind == "f") != (y.dtype.kind == "f"):
            raise UserError(f"{param('y_val')} ({_kind(yv)}) does not match {param('y')} ({_kind(y)})")
        return given_split(name, x, y, xv, yv)


def _kind(y: np.ndarray) -> str:
    what = "regression targets" if y.dtype.kind == "f" else "class labels"
    return f"{what} of shape {y.shape[1:]} per example"


def _checked_inputs(x, name: str, allow_empty: bool = False) -> np.ndarray:
    """``x`` as float32 (N, ...) inputs, or a UserError naming parameter ``name``."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise UserError(f"{param(name)}: inputs have unsupported dtype {x.dtype} (numbers needed)")
    if x.ndim < 2:
        raise UserError(f"{param(name)}: inputs need shape (N, features...), one example per row; got {x.shape}")
    if len(x) == 0 and not allow_empty:
        raise UserError(f"{param(name)}: no examples")
    if 0 in x.shape[1:]:
        raise UserError(f"{param(name)}: inputs have no features (shape {x.shape})")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise UserError(f"{param(name)}: inputs contain NaN or infinite values (or values beyond float32)")
    return x


def _checked_targets(y, n: int, name: str) -> np.ndarray:
    """``y`` as int32 class labels (integer input) or float32 targets (floating input)."""
    y = np.asarray(y)
    if y.ndim == 0:
        raise UserError(f"{param(name)}: needs one label or target per example; got a scalar")
    if len(y) != n:
        raise UserError(f"{param(name)}: {n} examples of inputs but {len(y)} of targets")
    if y.dtype.kind == "f":
        with np.errstate(over="ignore"):
            y = y.astype(np.float32)
        if not np.all(np.isfinite(y)):
            raise UserError(f"{param(name)}: targets contain NaN or infinite values (or values beyond float32)")
        return y
    if y.dtype.kind not in "biu":
        raise UserError(f"{param(name)}: unsupported dtype {y.dtype} (integer labels or float targets)")
    if y.size and y.min() < 0:
        raise UserError(f"{param(name)}: class labels must be >= 0 (got {int(y.min())})")
    if y.size and y.max() >= MAX_CLASSES:
        raise UserError(f"{param(name)}: labels go up to {int(y.max()):,}; at most {MAX_CLASSES:,} classes are "
                        f"supported (float targets are regression targets)")
    return y.astype(np.int32)


def check_val_split(val_split: float) -> None:
    """Refuse a validation fraction outside [0, 1): the loaders call it before they read a file."""
    if not 0 <= val_split < 1:
        raise UserError(f"{param('val_split')}: {val_split:g} is out of range (0 <= val_split < 1)")


def check_seed(seed) -> None:
    """Refuse a data seed that is not a whole number >= 0 (NumPy's generators take no other)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed: {seed!r} must be a whole number >= 0 (the shuffle's seed)")


def split(name: str, x: np.ndarray, y: np.ndarray, val_split: float, seed: int = 0,
          num_classes: int | None = None) -> Dataset:
    """Shuffle with ``seed`` and hold out a ``val_split`` fraction for validation.

    ``num_classes`` (e.g. the class folders of an ImageFolder tree, some perhaps without a
    readable image) defaults to the largest label + 1; always at least 2. Floating ``y`` are
    regression targets: no classes.
    """
    check_val_split(val_split)
    check_seed(seed)
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_split))
    if n - n_val < 1:
        raise UserError(f"dataset {name!r} has {n} examples: too few to hold out {val_split:g} for validation")
    train, val = order[: n - n_val], order[n - n_val :]
    if n_val == 0 and val_split > 0:
        log.warning("dataset %r has %d example%s: holding out %g of them rounds to none, so nothing is validated "
                    "(no val loss or accuracy)", name, n, "s" * (n != 1), val_split)
    if y.dtype.kind != "f" and n and np.all(y == y.flat[0]):
        log.warning("dataset %r: every label is %d, one class; accuracy and loss say little", name, int(y.flat[0]))
    if y.dtype.kind == "f":
        return Dataset(name, x[train], y[train], x[val], y[val], None)
    labelled = int(y.max()) + 1 if len(y) else 0
    if num_classes is None:
        num_classes = labelled
    elif num_classes < labelled:
        raise ValueError(f"{num_classes} classes but labels up to {labelled - 1}")
    if num_classes > MAX_CLASSES:
        raise UserError(f"dataset {name!r} has {num_classes:,} classes; at most {MAX_CLASSES:,} are supported")
    return Dataset(name, x[train], y[train], x[val], y[val], max(num_classes, 2))


def given_split(name: str, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> Dataset:
    """Checked arrays to train on and a validation set given with them (none held out): labels
    of both count towards the classes (at least 2); floating ``y`` are regression targets."""
    classes = None
    if y.dtype.kind != "f":
        classes = max(2, int(max(y.max() if len(y) else 0, y_val.max() if len(y_val) else 0)) + 1)
    return Dataset(name, x, y, x_val, y_val, classes)


def as_images(x: np.ndarray, source: str, *, pixels: bool = False) -> np.ndarray:
    """Scale to float32: integer inputs by their range (0..16 for digits, 0..255, 0..65535 for
    16-bit images, else the largest magnitude), or with ``pixels`` as pixels (see
    :func:`integer_pixel_scale`); add a channel axis to (N, H, W) arrays. Inputs with no
    features, e.g. (N, 0), or beyond float32's range are refused."""
    if x.dtype.kind in "iub":
        top = float(np.abs(x).max()) if x.size else 1.0
        x = x.astype(np.float32) / (integer_pixel_scale(x, source) if pixels else _integer_scale(top))
    elif x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise UserError(f"{source}: inputs contain NaN or infinite values")
        top = float(np.abs(x).max()) if x.size else 0.0
        if top > FLOAT32_MAX:  # checked before the cast, which would make it infinite
            raise UserError(f"{source}: inputs reach {top:.3g}, beyond float32's range (±{FLOAT32_MAX:.3g}), "
                            f"which the engine trains in")
        x = x.astype(np.float32)
    else:
        raise UserError(f"{source}: inputs have unsupported dtype {x.dtype}")
    given = x.shape
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise UserError(f"{source}: inputs must have shape (N, features), (N, H, W) or (N, H, W, C); got {x.shape}")
    if x[0].size == 0:
        raise UserError(f"{source}: inputs have no features (shape {given})")
    return x


def integer_pixel_scale(x: np.ndarray, source: str) -> float:
    """What integer pixels are divided by: 255 (0..255), 65535 for a uint16 array (0..65535),
    1 for booleans (black and white). Values outside that range, negative ones included, are a
    UserError naming ``source`` and the range found: never a scale guessed from the values."""
    if x.dtype.kind == "b":
        return 1.0
    top = 65535 if x.dtype == np.uint16 else 255
    low, high = (int(x.min()), int(x.max())) if x.size else (0, 0)
    if low < 0 or high > top:
        raise UserError(f"{source}: integer pixels run from {low:,} to {high:,}; expected 0..255 (or a uint16 "
                        f"array, 0..65535)" + ("; negative values are not pixels" if low < 0 else ""))
    return float(top)


def _integer_scale(top: float) -> float:
    """What integer inputs are divided by: their range as pixels (0..16 for the digits,
    0..255 for 8-bit and 0..65535 for 16-bit images), else their largest magnitude."""
    for scale in (255.0, 65535.0):
        if top <= scale:
            return scale if top > 16 else max(top, 1.0)
    return top


def as_labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)  # one-hot
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise UserError(f"{source}: labels must be a vector; got shape {y.shape}")
    if len(y) != n:
        raise UserError(f"{source}: {n} inputs but {len(y)} labels")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise UserError(f"{source}: labels must be whole numbers")
    elif y.dtype.kind not in "iub":
        raise UserError(f"{source}: labels have unsupported dtype {y.dtype}")
    if n and y.min() < 0:
        raise UserError(f"{source}: labels must be >= 0")
    if n and y.max() >= MAX_CLASSES:  # checked before the cast: 2e9 or 2**40 would wrap in int32
        top = y.max()
        shown = f"{int(top):,}" if top < 1e15 else f"{float(top):.3g}"
        raise UserError(f"{source}: labels go up to {shown}; at most {MAX_CLASSES:,} classes "
                        f"are supported (labels 0..{MAX_CLASSES - 1})")
    return y.astype(np.int32)


def as_probabilities(y: np.ndarray, n: int, source: str) -> np.ndarray:
    """Targets of binary cross-entropy read from ``source``: as :func:`as_targets`, each in [0, 1]."""
    y = as_targets(y, n, source)
    if y.size and (y.min() < 0 or y.max() > 1):
        raise UserError(f"{source}: {param('loss')} binary_cross_entropy needs targets in [0, 1] (0/1 labels or "
                        f"probabilities); these run from {float(y.min()):g} to {float(y.max()):g}")
    return y


def as_targets(y: np.ndarray, n: int, source: str) -> np.ndarray:
    """Regression targets read from ``source``: numbers, one (or one array) per input, finite, as float32."""
    if y.dtype.kind not in "biuf":
        raise UserError(f"{source}: targets have unsupported dtype {y.dtype}")
    if y.ndim == 0 or len(y) != n:
        raise UserError(f"{source}: {n} inputs but {1 if y.ndim == 0 else len(y)} targets")
    with np.errstate(over="ignore"):
        y = y.astype(np.float32)
    if not np.all(np.isfinite(y)):
        raise UserError(f"{source}: targets contain NaN or infinite values")
    return y
