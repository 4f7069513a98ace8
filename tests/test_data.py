"""Dataset loaders on small files the tests write: IDX (plain and gzip), MNIST directories,
Keras-style and plain .npz, and the malformed versions of each."""

import errno
import gzip
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from epsweep.data import MAX_CLASSES, as_images, digits, load_arrays, load_dataset, read_idx, split, synthetic
from epsweep.errors import UserError


def write_idx(path, array, compress=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(body)


@pytest.fixture
def mnist_like():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=20).astype(np.uint8)


def test_embedded_digits():
    x, y = digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() == 1.0
    assert np.bincount(y).tolist()[:3] == [178, 182, 177]


def test_split_is_deterministic_and_disjoint():
    a, b = load_dataset("digits", 0.2), load_dataset("digits", 0.2)
    assert len(a.x_train) == 1438 and len(a.x_val) == 359 and a.num_classes == 10
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not {t.tobytes() for t in a.x_train[:200]} & {v.tobytes() for v in a.x_val}


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_directory(tmp_path, mnist_like, compress):
    x, y = mnist_like
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", x, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y, compress)
    name, xs, ys = load_arrays(str(tmp_path))
    assert xs.shape == (20, 28, 28, 1) and xs.dtype == np.float32
    np.testing.assert_allclose(xs[..., 0], x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ys, y)
    # the images file itself finds its labels beside it
    _, xs2, _ = load_arrays(str(tmp_path / f"train-images-idx3-ubyte{suffix}"))
    np.testing.assert_array_equal(xs, xs2)


def test_idx_round_trips_other_dtypes(tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    write_idx(tmp_path / "a.idx", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), array)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-5], "holds 15,675 bytes of data, not the 15,680 bytes its header announces"),
    (lambda b: b + b"\x00", "holds more data than the 15,680 bytes its header announces"),
    (lambda b: b"\x01\x02" + b[2:], "bad magic"),
    (lambda b: b[:6], "truncated IDX header"),
])
def test_malformed_idx(tmp_path, mnist_like, damage, message):
    x, y = mnist_like
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match=message):
        load_arrays(str(tmp_path))


def test_keras_and_plain_npz(tmp_path):
    x, y = synthetic(n=50)
    np.savez(tmp_path / "keras.npz", x_train=(x[..., 0] * 255).astype(np.uint8), y_train=y, x_test=x[:5], y_test=y[:5])
    np.savez(tmp_path / "plain.npz", x=x.reshape(50, -1), y=np.eye(10)[y])  # features, one-hot labels
    _, xk, yk = load_arrays(str(tmp_path / "keras.npz"))
    _, xp, yp = load_arrays(str(tmp_path / "plain.npz"))
    assert xk.shape == (50, 8, 8, 1) and xp.shape == (50, 64)
    np.testing.assert_array_equal(yk, y)
    np.testing.assert_array_equal(yp, y)


def test_an_npz_validation_pair_is_used_and_arrays_left_unread_are_named(tmp_path, monkeypatch):
    """x_val/y_val are the validation set (nothing held out); x_test/y_test are not used, and a
    warning says so rather than dropping them unsaid."""
    from epsweep.data import sources

    warned = []
    monkeypatch.setattr(sources.log, "warning", lambda message, *args: warned.append(message % args))
    rng = np.random.default_rng(0)
    x, xv = rng.random((30, 4)), rng.random((10, 4))
    np.savez(tmp_path / "given.npz", x_train=x, y_train=np.arange(30) % 3, x_val=xv, y_val=np.arange(10) % 4)
    data = load_dataset(str(tmp_path / "given.npz"), 0.5)
    assert (len(data.x_train), len(data.x_val), data.num_classes, warned) == (30, 10, 4, [])
    np.testing.assert_array_equal(data.x_val, xv.astype(np.float32))
    np.testing.assert_array_equal(data.y_val, np.arange(10) % 4)
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=np.arange(30) % 3, x_test=xv, y_test=np.arange(10) % 3)
    data = load_dataset(str(tmp_path / "keras.npz"), 0.2)
    assert (len(data.x_train), len(data.x_val)) == (24, 6)
    assert warned == [f"{tmp_path}/keras.npz: ignoring arrays x_test, y_test (x_test/y_test is a test set: neither "
                      f"trained nor validated on); epsweep trains on x_train/y_train or x/y and validates on "
                      f"x_val/y_val when given, else on a part of the training examples it holds out"]


@pytest.mark.parametrize("arrays, message", [
    (dict(a=np.zeros(3)), "needs arrays x_train/y_train or x/y"),
    (dict(x=np.zeros((4, 2)), y=np.zeros(3)), "4 inputs but 3 labels"),
    (dict(x=np.full((4, 2), np.nan), y=np.zeros(4)), "NaN"),
    (dict(x=np.zeros((4, 2)), y=-np.ones(4)), "labels must be >= 0"),
    (dict(x=np.zeros((4, 2)), y=np.full(4, 0.5)), "whole numbers"),
    (dict(x=np.zeros((0, 2)), y=np.zeros(0)), "empty"),
    (dict(x=np.zeros((4, 2, 2, 2, 2)), y=np.zeros(4)), "inputs must have shape"),
    (dict(x=np.float32(1), y=np.zeros(1)), "got a scalar"),
    (dict(x=np.zeros((4, 0)), y=np.zeros(4)), r"no features \(shape \(4, 0\)\)"),
    (dict(x=np.zeros((4, 0, 0), np.uint8), y=np.zeros(4)), r"no features \(shape \(4, 0, 0\)\)"),
    (dict(x=np.zeros((4, 2)), y=np.array([0, 1, 2, 2e9])), "labels go up to 2,000,000,000; at most 100,000"),
    (dict(x=np.zeros((4, 2)), y=np.array([0, 1, 2, 2**40])), "labels go up to 1,099,511,627,776"),
    (dict(x=np.zeros((4, 2)), y=np.array([0, 1, 2, 1e300])), "labels go up to 1e[+]300"),
])
def test_malformed_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message):
        load_arrays(str(tmp_path / "bad.npz"))


def test_npz_with_objects_is_refused_not_unpickled(tmp_path):
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(UserError, match="unpickling"):
        load_arrays(str(tmp_path / "evil.npz"))


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_arrays(str(tmp_path / "nope.npz"))
    (tmp_path / "data.txt").write_text("1,2,3")
    with pytest.raises(UserError, match="unknown dataset format"):
        load_arrays(str(tmp_path / "data.txt"))
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_arrays(str(tmp_path / "trunc.npz"))


def test_largest_label_allowed_and_class_count_passed_through(tmp_path):
    np.savez(tmp_path / "many.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 2, MAX_CLASSES - 1]))
    _, x, y = load_arrays(str(tmp_path / "many.npz"))
    assert split("many", x, y, 0.0).num_classes == MAX_CLASSES
    labels = np.array([0, 1, 0, 1])
    assert split("folders", np.zeros((4, 2)), labels, 0.0, num_classes=3).num_classes == 3  # a class with no data
    assert split("folders", np.zeros((4, 2)), labels, 0.0).num_classes == 2
    with pytest.raises(UserError, match="at most 100,000"):
        split("folders", np.zeros((4, 2)), labels, 0.0, num_classes=MAX_CLASSES + 1)


# --- images (Pillow) --------------------------------------------------------------------------


def test_decompression_bomb_is_skipped_and_its_class_still_counts(tmp_path, monkeypatch):
    from PIL import Image

    from epsweep.data.images import load_image_dataset

    for name, side in (("ants", 20), ("bees", 20), ("wasps", 50)):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(tmp_path / name / "x.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # beyond 2,000 pixels is a bomb: 50 x 50 is one
    warnings = []
    data = load_image_dataset(str(tmp_path), 16, 0.0, warn=warnings.append)
    assert data.num_classes == 3 and sorted(data.y_train.tolist()) == [0, 1]  # wasps: the last class, kept
    assert any("wasps/x.png" in w and "decompression bomb" in w for w in warnings), warnings
    assert any("class 'wasps' has no readable images" in w for w in warnings), warnings


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied"),
                                   OSError(errno.EIO, "Input/output error")])
def test_a_folder_that_cannot_be_read_among_the_images_is_skipped_with_a_warning(tmp_path, monkeypatch, error):
    """Not a traceback (rglob raised, or silently left out a folder it was refused)."""
    from PIL import Image

    from epsweep.data.images import load_image_dataset

    for folder in ("ants", "bees", "bees/locked"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / folder / "x.png")
    scandir = os.scandir

    def refusing(path="."):
        if os.path.basename(path) == "locked":
            raise type(error)(error.errno, error.strerror, str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    warnings = []
    data = load_image_dataset(str(tmp_path), 4, 0.0, warn=warnings.append)
    assert sorted(data.y_train.tolist()) == [0, 1]
    assert warnings == [f"skipping unreadable folder {tmp_path}/bees/locked: {error.strerror}"]


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_images_in_0_1_or_0_255_give_the_same_pixels(scale):
    from epsweep.data.images import resize_arrays

    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype(np.float32)
    pixels = resize_arrays(x / 255.0 * scale, 8)
    np.testing.assert_array_equal(pixels[..., 0], x[..., 0].astype(np.uint8))


@pytest.mark.parametrize("values", [(-1.0, 1.0), (0.0, 300.0)])
def test_float_images_out_of_both_ranges_are_refused(values):
    from epsweep.data.images import resize_arrays

    x = np.linspace(*values, 2 * 8 * 8).reshape(2, 8, 8, 1)
    with pytest.raises(UserError, match="expected 0..1 or 0..255"):
        resize_arrays(x, 8, source="my.npz")


def test_a_thin_strip_image_is_resized_within_bounded_memory(tmp_path):
    """A 10000 x 1 PNG (a few bytes) at 299 pixels would resize whole to 2,990,000 x 299 RGB
    (2.7 GB); only its square is resampled, so loading it fits in 1 GiB of address space."""
    from PIL import Image

    (tmp_path / "strips").mkdir()
    Image.fromarray(np.full((1, 10000, 3), 200, np.uint8)).save(tmp_path / "strips" / "strip.png")
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from epsweep.data.images import load_image_folder
        x, y, classes = load_image_folder(__import__("pathlib").Path({str(tmp_path)!r}), 299)
        print(x.shape, int(x.min()), int(x.max()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(1,", "299,", "299,", "3)", "200", "200"]


def test_16_bit_greyscale_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from epsweep.data.images import load_image_folder

    values = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)
    (tmp_path / "deep").mkdir()
    Image.fromarray(values).save(tmp_path / "deep" / "sixteen.png")  # a 16-bit greyscale PNG
    x, _, _ = load_image_folder(tmp_path, 8)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(x[0, ..., 0], expected)
    assert x[0].min() == 0 and x[0].max() == 255 and len(np.unique(x[0])) > 50  # not saturated to white


@pytest.mark.parametrize("dtype, top, scale", [(np.uint8, 255, 255), (np.uint16, 40000, 65535),
                                               (np.uint8, 16, 16), (np.int32, 1_000_000, 1_000_000)])
def test_integer_inputs_are_scaled_by_their_range(dtype, top, scale):
    x = np.array([[0, top // 2, top]], dtype)
    np.testing.assert_allclose(as_images(x, "x"), np.array([[0, top // 2, top]]) / scale, rtol=1e-6)


@pytest.mark.parametrize("dtype, top, scale", [(np.uint8, 16, 255), (np.int32, 255, 255), (np.uint16, 280, 65535)])
def test_integer_pixels_mean_0_255_whatever_their_range(dtype, top, scale):
    """Images (epsweep inception): a dark uint8 image stays dark, a uint16 array is 0..65535."""
    x = np.array([[0, top // 2, top]], dtype)
    np.testing.assert_allclose(as_images(x, "x", pixels=True), np.array([[0, top // 2, top]]) / scale, rtol=1e-6)


@pytest.mark.parametrize("load", ["load_dataset", "load_any_dataset", "load_image_dataset"])
def test_the_validation_fraction_is_checked_before_any_file_is_read(load):
    """A wrong --val-split is said at once, not after minutes of decoding images: the loaders
    refuse it before they look for the file (which does not exist here)."""
    from epsweep.data import images, sources

    loader = getattr(images if load != "load_dataset" else sources, load)
    args = ("/no/such/file.npz", 75, 1.5) if load == "load_image_dataset" else ("/no/such/file.npz", 1.5)
    with pytest.raises(UserError, match=r"val_split: 1.5 is out of range"):
        loader(*args)


def test_degenerate_data_trains_with_a_warning_each(caplog):
    """Two examples leave none for validation at 0.2, and one class makes accuracy trivial:
    both train (a smoke test of a pipeline may want exactly that), each with one warning."""
    from epsweep.data.dataset import Dataset

    with caplog.at_level("WARNING", logger="epsweep"):
        data = Dataset.from_arrays(np.zeros((2, 4), np.float32), np.zeros(2, int), val_split=0.2)
    assert len(data.x_val) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "dataset 'arrays' has 2 examples: holding out 0.2 of them rounds to none, so nothing is validated (no val "
        "loss or accuracy)",
        "dataset 'arrays': every label is 0, one class; accuracy and loss say little"]
