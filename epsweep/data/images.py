"""Image datasets for the image models: ImageFolder trees, .npz image arrays, built-in sets.

Images are decoded once with Pillow, converted to RGB, resized so the shorter side is
``size`` and centre-cropped to ``size x size``, and kept as uint8 (N, size, size, 3): a
quarter of the memory of float32, normalised inside the compiled program. Unreadable files
(decompression bombs included) are reported through ``warn`` and skipped; the classes are the
class folders, whether or not each has a readable image.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from epsweep.data.dataset import Dataset, check_budget, check_val_split, split
from epsweep.data.sources import IMAGE_SUFFIXES, load_examples, split_examples
from epsweep.errors import UserError, param

MAX_RESIZED_PIXELS = 4  # x size^2: an image resized whole may be up to 4:1 (beyond, only its square is)
Progress = Callable[[int, int], None]
Warn = Callable[[str], None]


def _rgb(image):
    """``image`` as 8-bit RGB. 16-bit (and 32-bit integer) greyscale is scaled down to 0..255
    first: Pillow's own conversion would clip it, turning a 16-bit PNG white."""
    from PIL import Image

    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if values.max(initial=0) > 65535:
            top = float(values.max())
        image = Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def _fit(image, size: int):
    """Resize the shorter side to ``size`` (bicubic) and centre-crop a square. An image much
    longer than it is wide (a thin strip: 10000 x 1 pixels would resize to 2990000 x 299) has
    only the square's source region resampled, so no image costs more than
    :data:`MAX_RESIZED_PIXELS` x ``size * size`` pixels on the way."""
    from PIL import Image

    image = _rgb(image)
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    if new[0] * new[1] > MAX_RESIZED_PIXELS * size * size:
        sx, sy = width / new[0], height / new[1]  # source pixels per resized pixel
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC)
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def check_images_budget(count: int, size: int, source: str) -> None:
    """Refuse, before decoding any, ``count`` images of ``size x size`` RGB that would not fit
    the data budget (see :func:`~epsweep.data.dataset.memory_budget`)."""
    check_budget(count * size * size * 3, f"{count:,} images of {size:,} x {size:,} pixels", source)


def _image_files(folder: Path, warn: Warn | None) -> list[Path]:
    """The image files under ``folder`` (searched recursively, links to folders not followed),
    sorted; a folder that cannot be read is reported through ``warn`` and skipped."""
    def skipped(error: OSError) -> None:
        if warn is not None:
            warn(f"skipping unreadable folder {error.filename or folder}: {error.strerror or error}")

    found = []
    for parent, _, names in os.walk(folder, onerror=skipped):
        found += [Path(parent, name) for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(path for path in found if os.path.isfile(path))


def scan_image_folder(root: Path, warn: Warn | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files and labels of an ImageFolder tree: one sub-folder per class, sorted by name. A
    folder inside that cannot be read is reported through ``warn`` and skipped."""
    try:
        names = os.listdir(root)
    except OSError as e:
        raise UserError(f"{root}: cannot read ({e.strerror or e})") from None
    classes = sorted(name for name in names if not name.startswith(".") and os.path.isdir(root / name))
    if not classes:
        raise UserError(f"{root}: no class sub-folders (expected ROOT/CLASS/IMAGE files)")
    files, labels = [], []
    for index, name in enumerate(classes):
        found = _image_files(root / name, warn)
        files += found
        labels += [index] * len(found)
    if not files:
        raise UserError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) under its class folders")
    return files, np.asarray(labels, np.int32), classes


def load_image_folder(root: Path, size: int, progress: Progress | None = None,
                      warn: Warn | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image of an ImageFolder tree; corrupt ones and decompression bombs
    (beyond Pillow's ``MAX_IMAGE_PIXELS``) are reported and skipped. Label ``i`` is
    ``classes[i]``; a class left with no readable image is warned about and still counted."""
    from PIL import Image, UnidentifiedImageError

    files, labels, classes = scan_image_folder(root, warn)
    check_images_budget(len(files), size, str(root))
    images, kept = [], []
    for i, path in enumerate(files):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    images.append(_fit(image, size))
            kept.append(i)
            if warn is not None and any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
                warn(f"large image {path}: more than {Image.MAX_IMAGE_PIXELS:,} pixels (decoded; beyond "
                     f"{2 * Image.MAX_IMAGE_PIXELS:,} an image is skipped as a decompression bomb)")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            if warn is not None:
                warn(f"skipping unreadable image {path}: {' '.join(str(e).split()) or type(e).__name__}")
        if progress is not None:
            progress(i + 1, len(files))
    if not images:
        raise UserError(f"{root}: none of the {len(files)} images could be read")
    present = set(labels[kept].tolist())
    for index, name in enumerate(classes):
        if index not in present and warn is not None:
            warn(f"class {name!r} has no readable images (it still counts as a class)")
    return np.stack(images), labels[kept], classes


def pixel_scale(x: np.ndarray, source: str = "images") -> float:
    """What turns ``x`` into 0..255 pixel values, read from its range: 255 when every value
    lies in [0, 1], 1 when they lie in [0, 255] (e.g. float images saved as 0..255).
    Anything else (negative values, as in standardised images, or above 255) is a UserError
    rather than a guess; half a pixel level of slack either side is allowed."""
    if x.size == 0:
        return 255.0
    low, high = float(x.min()), float(x.max())
    scale = 255.0 if high <= 1 + 0.5 / 255 else 1.0
    if low < -0.5 / scale or high > 255.5 / scale:
        raise UserError(f"{source}: image values run from {low:.4g} to {high:.4g}; "
                        f"expected 0..1 or 0..255 (negative values mean standardised images: undo that first)")
    return scale


def resize_arrays(x: np.ndarray, size: int, progress: Progress | None = None, source: str = "images") -> np.ndarray:
    """Convert images to uint8 RGB and fit each to ``size x size``. Values in [0, 1] are
    scaled by 255; values in [0, 255] (float 0..255 images) are kept (see :func:`pixel_scale`)."""
    from PIL import Image

    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise UserError(f"inputs of shape {x.shape} are not images")
        x = x.reshape(-1, side, side, 1)
    pixels = np.clip(np.round(x * pixel_scale(x, source)), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    if pixels.shape[-1] != 3:
        raise UserError(f"images must have 1 or 3 channels; got shape {x.shape}")
    if pixels.shape[1:3] == (size, size):
        return pixels
    check_images_budget(len(pixels), size, source)
    out = np.empty((len(pixels), size, size, 3), np.uint8)
    for i, image in enumerate(pixels):
        out[i] = _fit(Image.fromarray(image), size)
        if progress is not None:
            progress(i + 1, len(pixels))
    return out


def is_image_folder(spec: str) -> bool:
    """Whether ``spec`` names an ImageFolder tree (a directory that is not an MNIST IDX one)."""
    path = Path(spec)
    try:
        return spec not in ("", "digits", "synthetic") and path.is_dir() and not any(path.glob("*idx*-ubyte*"))
    except OSError:  # a name too long, say: not a folder; reading it as a file says why it fails
        return False


def load_any_dataset(spec: str, val_split: float = 0.2, seed: int = 0, *, targets: bool = False,
                     probabilities: bool = False, image_size: int | None = None, progress: Progress | None = None,
                     warn: Warn | None = None) -> Dataset:
    """Every format the tool reads, for a model of the user's: ``digits``, ``synthetic``, .npz,
    MNIST IDX, or an ImageFolder tree (its images resized to ``image_size`` and scaled to
    float32 in [0, 1]). With ``targets`` a file's second array holds regression targets; with
    ``probabilities`` (binary cross-entropy) it may hold float targets in [0, 1]."""
    check_val_split(val_split)
    if is_image_folder(spec):
        if targets:
            raise UserError(f"{spec}: an ImageFolder directory holds class labels, not regression targets")
        if image_size is None:
            raise UserError(f"{spec} is an ImageFolder directory: give {param('image_size')} (the square its "
                            f"images are resized to)")
        if image_size < 1:
            raise UserError(f"{param('image_size')}: {image_size} must be a positive integer")
        x, y, classes = load_image_folder(Path(spec), image_size, progress, warn)
        x = x.astype(np.float32)
        x /= 255.0  # in place: one float copy of the images, not two
        return split(spec, x, y, val_split, seed, num_classes=len(classes))
    if image_size is not None:
        raise UserError(f"{param('image_size')} applies to ImageFolder directories only; {spec} is not one")
    name, x, y, n_val = load_examples(spec, targets=targets, probabilities=probabilities)
    return split_examples(name, x, y, n_val, val_split, seed)


def load_image_dataset(spec: str, size: int, val_split: float = 0.2, seed: int = 0,
                       progress: Progress | None = None, warn: Warn | None = None) -> Dataset:
    """``digits``, ``synthetic``, an ImageFolder directory or an .npz of images and labels,
    as uint8 RGB images of ``size x size``, split for validation."""
    check_val_split(val_split)
    if is_image_folder(spec):
        x, y, classes = load_image_folder(Path(spec), size, progress, warn)
        return split(str(Path(spec)), x, y, val_split, seed, num_classes=len(classes))
    name, x, y, n_val = load_examples(spec, pixels=True)  # integer pixels mean 0..255 (uint16: 0..65535)
    return split_examples(name, resize_arrays(x, size, progress, name), y, n_val, val_split, seed)
