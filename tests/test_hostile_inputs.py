"""Hostile inputs: every one exits with code 2 and one plain line naming the problem, never a
traceback. Almost all fail before any training, so they run in-process in milliseconds."""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from epsweep.cli import main

EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
RECORD = {"eps": 1e-8, "decay": 0.9, "lr": 0.01, "momentum": 0.0, "convention": "optax", "final_loss": 0.5,
          "val_loss": 0.6, "val_accuracy": 0.9, "diverged": False, "loss_curve": [2.3, 1.0, 0.5]}
HUGE = "1" + "0" * 400  # a JSON integer no float holds


def png_header(width, height):
    """A PNG that claims ``width x height`` pixels (no pixel data): Pillow refuses it on open."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    good = io.BytesIO()
    np.savez(good, x=rng.random((40, 8, 8)).astype(np.float32), y=np.arange(40) % 3)
    (d / "truncated.npz").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (d / "empty.npz").write_bytes(b"")
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
    (d / "bad.csv").write_text("eps,decay,lr,final_loss,diverged\n1e-8,0.9,fast,0.5,False\n")
    (d / "ragged.csv").write_text("eps,decay,lr,final_loss,diverged\n1e-8,0.9\n")
    (d / "nan.csv").write_text("eps,decay,lr,final_loss,diverged\nnan,0.9,0.1,0.5,False\n")
    (d / "good.json").write_text(json.dumps({"meta": {}, "results": [RECORD]}))
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
    return d


G = ["grid", "--task", "quadratic", "--steps", "5"]  # anything that gets past validation is cheap

CASES = [
    # bad numbers
    (["grid", "--eps", "nan"], "--eps: 'nan' is not a finite number"),
    (["grid", "--eps", "inf"], "--eps: 'inf' is not a finite number"),
    (["grid", "--lr", "-inf"], "--lr: '-inf' is not a finite number"),
    (["grid", "--eps", "1e-8,abc"], "'abc' is not a number"),
    (["grid", "--eps", "-1"], "--eps: -1 is out of range"),
    (["grid", "--decay", "1.5"], "--decay: 1.5 is out of range"),
    (["grid", "--momentum", "1"], "--momentum: 1 is out of range"),
    (["grid", "--lr", "0"], "--lr: 0 is out of range"),
    (["grid", "--eps", "log:0:1:5"], "needs positive ends"),
    (["grid", "--eps", "log:1e-8:1:x"], "is not an integer"),
    (["grid", "--steps", "0"], "--steps: 0 must be a positive integer"),
    (["grid", "--steps", "-3"], "--steps: -3 must be a positive integer"),
    (["grid", "--steps", "ten"], "Invalid value for '--steps'"),
    (["grid", "--batch-size", "0"], "--batch-size: 0 must be a positive integer"),
    (["grid", "--seeds", "0"], "--seeds: 0 must be a positive integer"),
    (["grid", "--seed", "-1"], "--seed: -1 must lie in [0, 2^32 - 1]"),
    (["grid", "--seeds", "99999999999"], "--seeds: 99999999999 is more than 10,000 seeds"),
    (["grid", "--steps", "99999999999"], "--steps: 99999999999 is more than 10,000,000"),
    (["grid", "--epochs", "99999999"], "--epochs: 99999999 epochs of 44 steps is more than 10,000,000 steps"),
    (["grid", "--chunk-size", "0"], "--chunk-size: 0 must be a positive integer"),
    (["grid", "--val-split", "1"], "--val-split: 1 is out of range"),
    (["grid", "--val-split", "nan"], "--val-split: nan is out of range"),
    # numbers the float32 engine would silently change
    (["grid", "--decay", "0.999999999999"], "--decay: 0.999999999999 rounds to 1 in float32"),
    (["grid", "--decay", "0.999999999999"], "use at most 0.99999994"),
    (["grid", "--momentum", "0.99999999"], "--momentum: 0.99999999 rounds to 1 in float32"),
    (["grid", "--eps", "1e-50"], "--eps: 1e-50 becomes 0 in float32"),
    (["grid", "--eps", "1e-40"], "use 0 or at least 1.1754944e-38"),
    (["grid", "--lr", "1e300"], "--lr: 1e+300 overflows float32"),
    (["grid", "--lr", "1e-45"], "--lr: 1e-45 becomes 0 in float32"),
    # empty or huge grids
    (["grid", "--eps", ""], "--eps: empty value in ''"),
    (["grid", "--eps", ","], "--eps: empty value in ','"),
    (["grid", "--eps"], "requires an argument"),
    (["grid", "--eps", "log:1e-8:1:0"], "count in 'log:1e-8:1:0' must be between 1 and 100000"),
    (["grid", "--eps", "lin:0:1:1000001"], "must be between 1 and 100000"),
    (["grid", "--eps", "log:1e-10:1:1001", "--lr", "log:1e-4:1:1000"], "the grid has 1,001,000 settings"),
    (["grid", "--convention", ","], "unknown convention ''"),
    # data files: missing, empty, truncated, wrong shape
    (["grid", "--dataset", "{d}/missing.npz"], "no such file or directory"),
    (["grid", "--dataset", "{d}/empty.npz"], "not a readable .npz file"),
    (["grid", "--dataset", "{d}/truncated.npz"], "not a readable .npz file"),
    (["grid", "--dataset", "{d}/flat.npz"], "inputs must have shape (N, features), (N, H, W) or (N, H, W, C)"),
    (["grid", "--dataset", "{d}/five_d.npz"], "inputs must have shape"),
    (["grid", "--dataset", "{d}/mismatch.npz"], "40 inputs but 39 labels"),
    (["grid", "--dataset", "{d}/nan.npz"], "inputs contain NaN or infinite values"),
    (["grid", "--dataset", "{d}/inf.npz"], "inputs contain NaN or infinite values"),
    (["grid", "--dataset", "{d}/fraction_labels.npz"], "labels must be whole numbers"),
    (["grid", "--dataset", "{d}/negative_labels.npz"], "labels must be >= 0"),
    (["grid", "--dataset", "{d}/wrong_keys.npz"], "needs arrays x_train/y_train or x/y; found images, labels"),
    (["grid", "--dataset", "{d}/empty_arrays.npz"], "dataset is empty"),
    (["grid", "--dataset", "{d}/pickled.npz"], "cannot load without unpickling"),
    (["grid", "--dataset", "{d}"], "truncated IDX header"),
    (["grid", "--dataset", "{d}/data.txt"], "unknown dataset format"),
    (["grid", "--task", "cnn", "--dataset", "{d}/fraction_labels.npz"], "labels must be whole numbers"),
    (["grid", "--dataset", "{d}/scalar.npz"], "scalar.npz: inputs must have shape (N, features), (N, H, W) or"),
    (["grid", "--dataset", "{d}/scalar.npz"], "(N, H, W, C); got a scalar"),
    (["grid", "--dataset", "{d}/huge_label.npz"], "labels go up to 2,000,000,000; at most 100,000 classes"),
    (["grid", "--dataset", "{d}/huge_int_label.npz"], "labels go up to 1,099,511,627,776"),
    (["grid", "--dataset", "{d}/no_features.npz"], "inputs have no features (shape (10, 0))"),
    (["grid", "--dataset", "{d}/no_pixels.npz"], "inputs have no features (shape (10, 0, 0))"),
    (["grid", "--task", "quadratic", "--dataset", "/no/such.npz"],
     "task quadratic takes no dataset (got --dataset /no/such.npz)"),
    (["grid", "--task", "toy", "--dataset", "synthetic"], "task toy takes no dataset (got --dataset synthetic)"),
    # your own model (more in test_own_model.py)
    (["grid", "--model", "{d}/missing.py:Net"], "--model: {d}/missing.py: no such file"),
    (["grid", "--model", "{d}/data.txt:Net"], "--model: cannot import {d}/data.txt (not a Python file)"),
    (["grid", "--model", "{d}/:Net"], "--model: {d} is not a file"),
    (["grid", "--model", "no_such_package.models:Net"], "cannot import no_such_package.models: ModuleNotFoundError"),
    (["grid", "--model", "Net"], "--model: 'Net' must look like FILE.py:NAME or package.module:NAME"),
    (["grid", "--metric", "none"], "--metric applies to --model only"),
    # images for inception: a decompression bomb is skipped (here: nothing else to read); 0..1 or 0..255 only
    (["inception", "--dataset", "{d}/bombs", "--image-size", "75", "--steps", "1", "-q"],
     "none of the 1 images could be read"),
    (["inception", "--dataset", "{d}/standardised.npz", "--image-size", "75", "--steps", "1", "-q"],
     "expected 0..1 or 0..255"),
    # unwritable output paths (a parent that is a file works even for root)
    (["grid", "--output", "{d}/a_file/out.jsonl"], "--output: {d}/a_file is not a directory"),
    (["grid", "--output", "{d}"], "is a directory"),
    (["grid", "--output", "{d}/no/such/dir/out.csv"], "does not exist"),
    (["grid", "--output", "{d}/out.txt"], "cannot tell the format of"),
    (["grid", "-f", "csv", "--output", "{d}/a_file/out.csv"], "is not a directory"),
    # conflicting flags
    (["grid", "--steps", "5", "--epochs", "1"], "give --steps or --epochs, not both"),
    (["grid", "-f", "csv", "-o", "{d}/out.jsonl"], "--format csv conflicts with --output out.jsonl"),
    (["grid", "--resume"], "--resume needs --output FILE.jsonl"),
    ([*G, "--resume", "--output", "{d}/r.json"], "--resume works with jsonl output only"),
    ([*G, "--resume", "--output", "{d}/r.csv"], "--resume works with jsonl output only"),
    ([*G, "--resume", "--output", "{d}/other_run.jsonl"], "comes from a different run"),
    ([*G, "--resume", "--output", "{d}/notes.jsonl"], "line 1: not valid JSON"),
    ([*G, "--resume", "--output", "{d}/inf.jsonl"], "line 1: not valid JSON (Infinity is not allowed"),
    (["grid", "--task", "quadratic", "--epochs", "2"], "task quadratic has no data, so no epochs"),
    (["grid", "--format", "xml"], "unknown format 'xml'"),
    (["grid", "--task", "resnet"], "unknown task 'resnet'"),
    (["grid", "--convention", "jax"], "unknown convention 'jax'"),
    (["grid", "--bogus"], "No such option: --bogus"),
    # report: missing, empty, truncated or wrong-shape results
    (["report", "{d}/missing.jsonl"], "no such file"),
    (["report", "{d}"], "is a directory"),
    (["report", "{d}/empty.json"], "file is empty"),
    (["report", "{d}/truncated.json"], "not valid JSON"),
    (["report", "{d}/nan.json"], "NaN is not allowed"),
    (["report", "{d}/inf.jsonl"], "Infinity is not allowed (missing numbers are written as null)"),
    (["report", "{d}/shape.json"], "meta must be an object and results a list"),
    (["report", "{d}/list_of_numbers.json"], "a record must be a JSON object, not int"),
    (["report", "{d}/missing_fields.json"], "record has no decay, final_loss, diverged"),
    (["report", "{d}/string_eps.json"], "eps must be a finite number, not 'small'"),
    (["report", "{d}/bad_curve.json"], "loss_curve must be a list of numbers"),
    (["report", "{d}/corrupt.jsonl"], "line 2: not valid JSON"),
    (["report", "{d}/meta_late.jsonl"], "a meta line can only be the first line"),
    (["report", "{d}/only_meta.jsonl"], "no results in the file yet"),
    (["report", "{d}/binary.jsonl"], "not UTF-8 text"),
    (["report", "{d}/bad.csv"], "lr 'fast' is not a number"),
    (["report", "{d}/ragged.csv"], "2 cells but the header has 5"),
    (["report", "{d}/nan.csv"], "eps is nan; missing numbers must be empty cells"),
    (["report", "{d}/results.xml"], "cannot tell the format (expected .json, .jsonl or .csv)"),
    (["report", "{d}/deep.json"], "deep.json: nested more than 64 levels deep"),
    (["report", "{d}/deep.jsonl"], "deep.jsonl, line 1: nested more than 64 levels deep"),
    (["report", "{d}/deep_field.json"], "nested more than 64 levels deep"),
    (["report", "{d}/huge_eps.json"], "results[0].eps is a number beyond ±1e300"),
    (["report", "{d}/huge_loss.jsonl"], "line 1: final_loss is a number beyond ±1e300"),
    (["report", "{d}/huge_curve.json"], "results[0].loss_curve[1] is a number beyond ±1e300"),
    (["report", "{d}/huge.csv"], "line 2: final_loss '1e400' is a number beyond ±1e300"),
    (["report", "{d}/string_std.json"], "final_loss_std must be a number or null, not 'abc'"),
    (["report", "{d}/string_seeds.json"], "seeds must be a whole number >= 0, not 'many'"),
    (["plot", "{d}/deep.json", "-o", "{d}/p.png"], "nested more than 64 levels deep"),
    (["plot", "{d}/huge_eps.json", "-o", "{d}/p.png"], "is a number beyond ±1e300"),
    (["report"], "Missing argument"),
    # report: bad options
    (["report", "{d}/good.json", "--top", "0"], "--top: 0 must be a positive integer"),
    (["report", "{d}/good.json", "--top", "many"], "Invalid value for '--top'"),
    (["report", "{d}/good.json", "--sort", "speed"], "--sort: unknown field 'speed'"),
    (["report", "{d}/good.json", "--where", "lr~0.1"], "must look like FIELD=VALUE"),
    (["report", "{d}/good.json", "--where", "lr="], "must look like FIELD=VALUE"),
    (["report", "{d}/good.json", "--where", "speed=1"], "--where: unknown field 'speed'"),
    (["report", "{d}/good.json", "--where", "lr<nan"], "'nan' in 'lr<nan' is not a finite number"),
    (["report", "{d}/good.json", "--where", "lr=fast"], "'fast' in 'lr=fast' is not a number"),
    (["report", "{d}/good.json", "--where", "lr=0.5"], "no settings match (lr in the file: 0.01)"),
    (["report", "{d}/good.json", "--reverse"], "--reverse needs --sort"),
    (["report", "{d}/good.json", "-o", "{d}/a_file/r.csv"], "is not a directory"),
    (["report", "{d}/good.json", "-f", "yaml"], "unknown format 'yaml'"),
    # plot
    (["plot", "{d}/good.json"], "Missing option '--output'"),
    (["plot", "{d}/good.json", "-o", "{d}/plot.xyz"], "cannot tell the image format"),
    (["plot", "{d}/good.json", "-o", "{d}/a_file/plot.png"], "is not a directory"),
    (["plot", "{d}/good.json", "-o", "{d}"], "is a directory"),
    (["plot", "{d}/missing.json", "-o", "{d}/p.png"], "no such file"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_exit_2_with_one_clear_line(args, message, files, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", open(files / "stdin_empty"))
    argv = [a.replace("{d}", str(files)) for a in args]
    if args[0] == "plot":
        pytest.importorskip("matplotlib")
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("epsweep: error: ") and err.count("\n") == 1, err
    assert message.replace("{d}", str(files)) in err
    assert "Traceback" not in err and out == ""


BAD_META = [
    ({"data": {}}, 'ignored meta data {} (expected an object with "name", "train" and "val")'),
    ({"seeds": 5}, "ignored meta seeds 5 (expected a list of seeds)"),
    ({"title": 5}, "ignored meta title 5 (expected text)"),
    ({"steps": "abc"}, 'ignored meta steps "abc" (expected a positive whole number)'),
    ({"settings": [1]}, "ignored meta settings [1] (expected a whole number)"),
    ({"data": {"name": 5, "train": "a"}, "task": ["mlp"]}, "ignored meta task"),
]


@pytest.mark.parametrize("meta, note", BAD_META, ids=[json.dumps(m)[:40] for m, _ in BAD_META])
@pytest.mark.parametrize("command", ["report", "plot"])
def test_malformed_meta_is_dropped_with_a_note(meta, note, command, tmp_path, capsys):
    """The records are fine, so they are shown; each meta key of the wrong type is ignored, saying so."""
    if command == "plot":
        pytest.importorskip("matplotlib")
    path = tmp_path / "bad_meta.json"
    path.write_text(json.dumps({"meta": meta, "results": [RECORD, {**RECORD, "eps": 1.0}]}))
    argv = [command, str(path)] + (["-o", str(tmp_path / "p.png")] if command == "plot" else [])
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert note in err and "Traceback" not in err
    if command == "plot":
        assert (tmp_path / "p.png").stat().st_size > 0
    else:
        assert "final loss" in out


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


def test_stdin_dash_with_nothing_piped(files, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", open(files / "stdin_empty"))
    assert main(["grid", "--eps", "-"]) == 2
    assert capsys.readouterr().err == "epsweep: error: --eps: no values on standard input\n"


@pytest.mark.parametrize("args, message", [
    (["grid", "--dataset", "{d}/truncated.npz"], "not a readable .npz file"),
    (["report", "{d}/nan.json"], "NaN is not allowed"),
    (["grid", "--output", "{d}/a_file/out.jsonl"], "is not a directory"),
    (["plot", "{d}/good.json", "-o", "{d}/plot.xyz"], "cannot tell the image format"),
])
def test_through_the_executable(args, message, files):
    assert EXE, "the epsweep executable is not installed"
    argv = [a.replace("{d}", str(files)) for a in args]
    out = subprocess.run([EXE, *argv], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("epsweep: error: ") and out.stderr.count("\n") == 1 and message in out.stderr


def test_only_one_option_reads_stdin(files):
    """'-' twice would hand the same piped values to two axes: refused, naming both."""
    done = subprocess.run([EXE, "grid", "--eps", "-", "--lr", "-", "--steps", "1"], input="1e-8 1",
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "epsweep: error: only one option can read values from standard input ('-'); got --eps and --lr"]
