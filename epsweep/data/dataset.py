"""The in-memory dataset every task trains on, and the checks that make arrays one.

A :class:`Dataset` holds float32 (or uint8 image) inputs and int32 labels, split into training
and validation parts with a fixed data seed.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from epsweep.errors import UserError, param

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
    """Inputs and integer labels, split into train and validation (validation may be empty).

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
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "train": int(len(self.x_train)),
            "val": int(len(self.x_val)),
            "input_shape": list(self.input_shape),
            "classes": self.num_classes,
        }


def split(name: str, x: np.ndarray, y: np.ndarray, val_split: float, seed: int = 0,
          num_classes: int | None = None) -> Dataset:
    """Shuffle with ``seed`` and hold out a ``val_split`` fraction for validation.

    ``num_classes`` (e.g. the class folders of an ImageFolder tree, some perhaps without a
    readable image) defaults to the largest label + 1; always at least 2.
    """
    if not 0 <= val_split < 1:
        raise UserError(f"{param('val_split')}: {val_split:g} is out of range (0 <= val_split < 1)")
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_split))
    if n - n_val < 1:
        raise UserError(f"dataset {name!r} has {n} examples: too few to hold out {val_split:g} for validation")
    train, val = order[: n - n_val], order[n - n_val :]
    labelled = int(y.max()) + 1 if len(y) else 0
    if num_classes is None:
        num_classes = labelled
    elif num_classes < labelled:
        raise ValueError(f"{num_classes} classes but labels up to {labelled - 1}")
    if num_classes > MAX_CLASSES:
        raise UserError(f"dataset {name!r} has {num_classes:,} classes; at most {MAX_CLASSES:,} are supported")
    return Dataset(name, x[train], y[train], x[val], y[val], max(num_classes, 2))


def as_images(x: np.ndarray, source: str) -> np.ndarray:
    """Scale to float32: integer pixels by their range (0..16 for digits, 0..255, 0..65535 for
    16-bit images, else the largest magnitude); add a channel axis to (N, H, W) arrays. Inputs
    with no features, e.g. (N, 0), or beyond float32's range are refused."""
    if x.dtype.kind in "iub":
        top = float(np.abs(x).max()) if x.size else 1.0
        x = x.astype(np.float32) / _integer_scale(top)
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
