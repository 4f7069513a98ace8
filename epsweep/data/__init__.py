"""Data: the :class:`Dataset` every task trains on, and loaders for built-in sets, files and images."""

from epsweep.data.dataset import MAX_CLASSES, Dataset, as_images, as_labels, as_targets, split
from epsweep.data.sources import (
    BUILTIN_DATASETS,
    digits,
    load_arrays,
    load_dataset,
    read_idx,
    read_npz,
    synthetic,
    toy,
)

__all__ = [
    "BUILTIN_DATASETS", "MAX_CLASSES", "Dataset", "as_images", "as_labels", "as_targets", "digits", "load_arrays",
    "load_dataset", "read_idx", "read_npz", "split", "synthetic", "toy",
]
