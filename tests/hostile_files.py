"""The files the hostile cases of test_hostile_inputs.py read: broken, crafted and hostile data,
results and images, each made small (a bomb is its header, not its payload)."""

import gzip
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

RECORD = {"eps": 1e-8, "decay": 0.9, "lr": 0.01, "momentum": 0.0, "convention": "optax", "final_loss": 0.5,
          "val_loss": 0.6, "val_accuracy": 0.9, "diverged": False, "loss_curve": [2.3, 1.0, 0.5]}
HUGE = "1" + "0" * 400  # a JSON integer no float holds


def png_header(width, height):
    """A PNG that claims ``width x height`` pixels (no pixel data): Pillow refuses it on open."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def make_files(d: Path) -> Path:
    """Every file the hostile cases name, in directory ``d``."""
    rng = np.random.default_rng(0)
    good = io.BytesIO()
    np.savez(good, x=rng.random((40, 8, 8)).astype(np.float32), y=np.arange(40) % 3)
    (d / "truncated.npz").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (d / "empty.npz").write_bytes(b"")
    (d / "text.npz").write_text("x,y\n1,2\n")  # a CSV given the wrong name
    np.savez(d / "flat.npz", x=rng.random(40), y=np.arange(40) % 3)  # inputs of shape (40,)
    np.savez(d / "five_d.npz", x=rng.random((4, 2, 2, 2, 2)), y=np.arange(4) % 2)
    np.savez(d / "mismatch.npz", x=rng.random((40, 8, 8)), y=np.arange(39) % 3)
    nan_x = rng.random((40, 8, 8))
    nan_x[3, 2, 1] = np.nan
    np.savez(d / "nan.npz", x=nan_x, y=np.arange(40) % 3)
    np.savez(d / "inf.npz", x=np.full((40, 4), np.inf), y=np.arange(40) % 3)
    np.savez(d / "fraction_labels.npz", x=rng.random((40, 4)), y=np.linspace(0, 1, 40))
    np.savez(d / "negative_labels.npz", x=rng.random((40, 4)), y=-np.ones(40, int))
    np.savez(d / "wrong_keys.npz", images=rng.random((40, 4)), labels=np.arange(40) % 3)
    np.savez(d / "empty_arrays.npz", x=np.zeros((0, 4)), y=np.zeros(0, int))
    np.savez(d / "scalar.npz", x=np.float32(3), y=np.int64(1))
    np.savez(d / "huge_label.npz", x=rng.random((40, 4)), y=np.r_[np.arange(39) % 3, 2e9])
    np.savez(d / "huge_int_label.npz", x=rng.random((40, 4)), y=np.r_[np.arange(39) % 3, 2**40])
    np.savez(d / "no_features.npz", x=np.zeros((10, 0)), y=np.arange(10) % 2)
    np.savez(d / "no_pixels.npz", x=np.zeros((10, 0, 0)), y=np.arange(10) % 2)
    np.savez(d / "standardised.npz", x=rng.normal(size=(10, 8, 8)), y=np.arange(10) % 2)
    np.savez(d / "two_pairs.npz", x=rng.random((10, 4)), y=np.arange(10) % 2, x_train=rng.random((8, 4)),
             y_train=np.arange(8) % 2)
    np.savez(d / "half_val.npz", x=rng.random((10, 4)), y=np.arange(10) % 2, y_val=np.arange(4) % 2)
    np.savez(d / "wide_val.npz", x=rng.random((10, 4)), y=np.arange(10) % 2, x_val=rng.random((4, 5)),
             y_val=np.arange(4) % 2)
    (d / "bombs" / "cats").mkdir(parents=True)
    (d / "bombs" / "cats" / "bomb.png").write_bytes(png_header(20_000, 20_000))  # 400 megapixels
    with zipfile.ZipFile(d / "pickled.npz", "w") as z:  # an object array needs pickle: refused
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("x.npy", buffer.getvalue())
        z.writestr("y.npy", buffer.getvalue())
    (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x0a\x00\x00")  # cut header
    (d / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x0a" + bytes(10))
    (d / "data.txt").write_text("1,2,3\n")
    (d / "a_file").write_text("not a directory\n")
    (d / "stdin_empty").write_text("")
    # results files for report / plot / resume
    (d / "empty.json").write_text("")
    (d / "truncated.json").write_text(json.dumps({"meta": {}, "results": [RECORD]})[:60])
    (d / "nan.json").write_text(json.dumps({"meta": {}, "results": [{**RECORD, "final_loss": float("nan")}]}))
    (d / "inf.jsonl").write_text(json.dumps({**RECORD, "val_loss": float("inf")}) + "\n")
    (d / "shape.json").write_text(json.dumps({"meta": {}, "results": {"eps": 1}}))
    (d / "list_of_numbers.json").write_text(json.dumps([1, 2, 3]))
    (d / "missing_fields.json").write_text(json.dumps({"results": [{"eps": 1e-8, "lr": 0.1}]}))
    (d / "string_eps.json").write_text(json.dumps({"results": [{**RECORD, "eps": "small"}]}))
    (d / "bad_curve.json").write_text(json.dumps({"results": [{**RECORD, "loss_curve": ["a"]}]}))
    (d / "corrupt.jsonl").write_text(json.dumps(RECORD) + "\n{not json}\n" + json.dumps(RECORD) + "\n")
    (d / "meta_late.jsonl").write_text(json.dumps(RECORD) + "\n" + json.dumps({"meta": {}}) + "\n")
    (d / "only_meta.jsonl").write_text(json.dumps({"meta": {"format": "epsweep-stream/1"}}) + "\n")
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    (d / "garbage.jsonl").write_bytes(b"\x00\x01\x02 no newline")  # no whole line: not a stream cut short
    (d / "no_newline.jsonl").write_text(json.dumps(RECORD))  # one whole record, no newline after it
    (d / "bad.csv").write_text("eps,decay,lr,final_loss,diverged\n1e-8,0.9,fast,0.5,False\n")
    (d / "ragged.csv").write_text("eps,decay,lr,final_loss,diverged\n1e-8,0.9\n")
    (d / "excel.csv").write_bytes(b"\xef\xbb\xbfeps,decay,lr,final_loss,diverged\r\n1e-8,0.9,0.1,0.5,False\r\n")  # BOM
    (d / "pandas.csv").write_text(",eps,decay,lr,final_loss,diverged,loss_curve\n"  # DataFrame.to_csv()
                                  '0,1e-8,0.9,0.1,0.5,False,"[1.0, nan, None, inf, 0.5]"\n')
    (d / "long_number.jsonl").write_text('{"eps": ' + "1" * 5000 + "}\n")  # beyond Python's int parsing guard
    (d / "bom_meta.jsonl").write_text(json.dumps(RECORD) + "\n")  # its meta, saved by an editor, has a BOM too
    (d / "bom_meta.meta.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"format": "epsweep-stream/1",
                                                                        "title": "from an editor"}).encode())
    (d / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORD).encode() + b"\n")  # an editor's byte-order mark
    (d / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"meta": {}, "results": [RECORD]}).encode())
    (d / "nan.csv").write_text("eps,decay,lr,final_loss,diverged\nnan,0.9,0.1,0.5,False\n")
    (d / "good.json").write_text(json.dumps({"meta": {}, "results": [RECORD]}))
    (d / "taken.meta.json").write_text(json.dumps({"meta": {}, "results": [RECORD]}))  # results, named as a meta
    (d / "clash.jsonl").write_text(json.dumps(RECORD) + "\n")  # records, and beside them results named as its meta
    (d / "clash.meta.json").write_text(json.dumps({"meta": {}, "results": [RECORD]}))
    (d / ("a" * 249 + ".jsonl")).write_text(json.dumps(RECORD) + "\n")  # its NAME.meta.json is too long a name
    (d / "results.xml").write_text("<results/>")
    (d / "other_run.jsonl").write_text(json.dumps({"meta": {"format": "epsweep-stream/1", "run": {"steps": 1}}})
                                       + "\n" + json.dumps(RECORD) + "\n")
    (d / "notes.jsonl").write_text("these are my notes\n")
    (d / "deep.json").write_text("[" * 100_000)
    (d / "deep.jsonl").write_text("[" * 100_000 + "\n")
    nested = []
    for _ in range(80):
        nested = [nested]
    (d / "deep_field.json").write_text(json.dumps({"results": [{**RECORD, "notes": nested}]}))
    (d / "huge_eps.json").write_text(json.dumps({"results": [RECORD]}).replace("1e-08", HUGE))
    (d / "huge_loss.jsonl").write_text(json.dumps(RECORD).replace('"final_loss": 0.5', f'"final_loss": {HUGE}') + "\n")
    (d / "huge_curve.json").write_text(json.dumps({"results": [{**RECORD, "loss_curve": [1.0, 1e301]}]}))
    (d / "huge.csv").write_text("eps,decay,lr,final_loss,diverged\n1e-8,0.9,0.1,1e400,False\n")
    (d / "string_std.json").write_text(json.dumps({"results": [{**RECORD, "final_loss_std": "abc"}]}))
    (d / "string_seeds.json").write_text(json.dumps({"results": [{**RECORD, "seeds": "many"}]}))
    # --- added with the cases run through the executable ---
    (d / "br[/x]").mkdir(parents=True)  # a directory "br[" holding "x]"
    np.savez(d / "br[/x]" / "a.npz", x=rng.random((40, 8, 8)).astype(np.float32), y=np.arange(40) % 3)
    (d / "[bold]x.npz").write_bytes(b"")
    (d / "markup.json").write_text(json.dumps({"meta": {"title": "cost [v2] [/] [bold]x", "data": {
        "name": "d[/x]", "train": 1, "val": 1}}, "results": [RECORD, {**RECORD, "eps": 1.0}]}))
    (d / "markup_convention.json").write_text(json.dumps({"results": [RECORD, {**RECORD, "convention": "[/]"}]}))
    (d / "dollar_convention.json").write_text(json.dumps({"results": [RECORD, {**RECORD, "optimizer": "$x$"}]}))
    (d / "dollar_title.json").write_text(json.dumps({"meta": {"task": "$\\sqrt{$"},
                                                     "results": [RECORD, {**RECORD, "eps": 1.0}]}))
    for name, header, data in [
        ("idx_ndim", b"\x00\x00\x08\xff", b""),
        ("idx_overflow", b"\x00\x00\x08\x04" + struct.pack(">IIII", *[2**32 - 1] * 4), b""),
        ("idx_wraps", b"\x00\x00\x0e\x04" + struct.pack(">IIII", *[65536] * 4), b""),
        ("idx_big", b"\x00\x00\x08\x03" + struct.pack(">III", 100_000, 1000, 1000), bytes(100)),
        ("idx_short", b"\x00\x00\x08\x03" + struct.pack(">III", 10, 2, 2), bytes(39)),
        ("idx_long", b"\x00\x00\x08\x03" + struct.pack(">III", 10, 2, 2), bytes(41)),
    ]:
        (d / name).mkdir()
        (d / name / "train-images-idx3-ubyte").write_bytes(header + data)
        (d / name / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(10))
    (d / "gzbomb").mkdir()  # a 10 x 2 x 2 header, then 20 MB of zeros: 20 KB compressed
    with gzip.open(d / "gzbomb" / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">III", 10, 2, 2))
        for _ in range(20):
            f.write(bytes(1 << 20))
    (d / "gzbomb" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(10)))
    (d / "deflate").mkdir()
    (d / "deflate" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage!")
    (d / "deflate" / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    (d / "zero").mkdir()
    os.symlink("/dev/zero", d / "zero" / "train-images-idx3-ubyte")
    (d / "zero" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(10))
    np.save(d / "renamed.npy", rng.random((10, 4)))
    (d / "renamed.npy").rename(d / "renamed.npz")
    with zipfile.ZipFile(d / "npz_bomb.npz", "w") as z:  # headers claim 8e12 values; no data follows
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (100_000, 100_000, 800)})
        z.writestr("x.npy", header.getvalue())
        buffer = io.BytesIO()
        np.save(buffer, np.arange(10))
        z.writestr("y.npy", buffer.getvalue())
    compressed = io.BytesIO()
    np.savez_compressed(compressed, x=rng.random((200, 50)), y=np.arange(200) % 3)
    damaged = bytearray(compressed.getvalue())
    damaged[200:240] = bytes(40)
    (d / "corrupt_deflate.npz").write_bytes(bytes(damaged))
    np.savez(d / "huge_values.npz", x=np.r_[rng.random(39), 1e300].reshape(10, 4), y=np.arange(10) % 2)
    pixels = np.full((4, 8, 8), 100, np.int32)
    pixels[0, 0, 0] = 280  # one value beyond 0..255: not 16-bit pixels
    np.savez(d / "pixels_280.npz", x=pixels, y=np.arange(4) % 2)
    pixels[0, 0, 0] = -5  # and one below 0
    np.savez(d / "pixels_negative.npz", x=pixels, y=np.arange(4) % 2)
    np.savez(d / "uint16.npz", x=np.linspace(0, 65535, 4 * 8 * 8).astype(np.uint16).reshape(4, 8, 8),
             y=np.arange(4) % 2)
    (d / "bigimg" / "cats").mkdir(parents=True)
    (d / "bigimg" / "cats" / "big.png").write_bytes(png_header(10_000, 10_000))  # 1e8 pixels: Pillow warns
    (d / "bigcell.csv").write_text("eps,decay,lr,final_loss,diverged,note\n1e-8,0.9,0.1,0.5,False,"
                                   + "x" * 200_000 + "\n")  # a cell beyond csv's 128 KiB field limit
    (d / "other_sweep.jsonl").write_text(json.dumps(RECORD) + "\n")
    (d / "other_sweep.meta.json").write_text(json.dumps({"format": "epsweep-stream/1",
                                                                 "run": {"train": {"steps": 1}}}))
    for name, meta in (("future", {"format": "epsweep-stream/99"}), ("no_run", {"format": "epsweep-stream/1",
                                                                                "run": None})):
        (d / f"{name}.jsonl").write_text(json.dumps(RECORD) + "\n")
        (d / f"{name}.meta.json").write_text(json.dumps(meta))
    (d / "other.json").write_text(json.dumps({"meta": {"run": {"train": {"steps": 1}}}, "results": [RECORD]}))
    (d / "notes.csv").write_text("name,age\nbob,3\n")
    two = json.dumps({"meta": {}, "results": [RECORD, {**RECORD, "eps": 1.0}]})
    (d / "two.json").write_text(two)
    (d / "two_copy.json").write_text(two)
    (d / "bad_sidecar.jsonl").write_text(json.dumps(RECORD) + "\n")
    (d / "bad_sidecar.meta.json").write_text("[1, 2]")
    (d / "x.meta.json").write_text(json.dumps({"format": "epsweep-stream/1", "task": "mlp"}))
    (d / "claimed.jsonl").write_text("")
    (d / "stdin_values").write_text("1e-8 1\n")
    (d / "stdin_bom").write_bytes(b"\xef\xbb\xbf0.25\r\n")  # as PowerShell pipes text
    # model files: a syntax error; names that are files but not .py (good.txt would import good.py)
    (d / "syn.py").write_text("import os\ndef f(:\n    pass\n")
    (d / "good.py").write_text("raise SystemExit('good.py was run')\n")
    (d / "good.txt").write_text("import flax.linen as nn\n")
    (d / "noext").write_text("import flax.linen as nn\n")
    (d / "one.py").write_text("import flax.linen as nn\n\n\nclass One(nn.Module):\n    @nn.compact\n"
                              "    def __call__(self, x):\n        return nn.Dense(1)(x)\n")
    np.savez(d / "bad_probabilities.npz", x=rng.random((40, 4)), y=np.linspace(-0.5, 1.5, 40))
    return d
