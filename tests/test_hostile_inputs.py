"""Hostile inputs: each case exits with code 2 and one plain line on stderr naming the problem
(never a traceback, never a result lost), or, where it says so, succeeds and shows the hostile
text literally. A new case is one line of CASES.

A case that needs a process of its own (standard input or output, the environment, a working
directory, several processes) runs through the installed ``epsweep`` executable, as does every
eighth of the others; the rest run in-process through ``epsweep.cli.main``, each line and exit
code held to the same rules (a Python warning counts as a line on stderr, as a process prints
it). Almost all fail before any training. The executable's cases run two at a time (the
machine's cores), in a fixture that starts every selected case at once."""

import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from hostile_files import RECORD, make_files

from epsweep.cli import main
from epsweep.results.files import FileClaim
from epsweep.results.reading import meta_path, read_results

EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
Q = "grid --task quadratic --steps 3 -q"  # a sweep that gets past validation trains in a second


@dataclasses.dataclass(frozen=True)
class Case:
    """``args`` (one shell-quoted string; ``{d}``: the files' directory, ``{port}``: a free TCP
    port), the texts the one stderr line must hold, the exit code (0: the texts are looked for
    on stdout instead), standard input (a file; default: none) and output (a file, or "closed";
    default: a pipe), extra environment variables, the working directory (default: the
    tests'), and ``alone``: only in a process of its own (a memory bomb, whose refusal could
    regress into allocating; a limit the interpreter holds for the whole process)."""

    args: str
    messages: tuple[str, ...]
    code: int = 2
    stdin: str | None = None
    stdout: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    alone: bool = False


def C(args: str, *messages: str, code: int = 2, stdin=None, stdout=None, env=None, cwd=None, alone=False) -> Case:
    return Case(args, messages, code, stdin, stdout, tuple((env or {}).items()), cwd, alone)


G = "grid --task quadratic --steps 5"
LONG = "x" * 300  # a file name longer than any file system takes

CASES = [
    # bad numbers
    C('grid --eps nan', "--eps: 'nan' is not a finite number"),
    C('grid --eps inf', "--eps: 'inf' is not a finite number"),
    C('grid --lr -inf', "--lr: '-inf' is not a finite number"),
    C('grid --eps 1e-8,abc', "'abc' is not a number"),
    C('grid --eps -1', '--eps: -1 is out of range'),
    C('grid --decay 1.5', '--decay: 1.5 is out of range'),
    C('grid --momentum 1', '--momentum: 1 is out of range'),
    C('grid --lr 0', '--lr: 0 is out of range'),
    C('grid --eps log:0:1:5', 'needs positive ends'),
    C('grid --eps log:1e-8:1:x', 'is not an integer'),
    C('grid --steps 0', '--steps: 0 must be a positive integer'),
    C('grid --steps -3', '--steps: -3 must be a positive integer'),
    C('grid --steps ten', "--steps: 'ten' is not a whole number"),
    C('grid --steps 1e3', "--steps: '1e3' is not a whole number"),
    C('grid --val-split half', "--val-split: 'half' is not a number"),
    C('grid --batch-size 0', '--batch-size: 0 must be a positive integer'),
    C('grid --seeds 0', '--seeds: 0 must be a positive integer'),
    C('grid --seed -1', '--seed: -1 must lie in [0, 2^32 - 1]'),
    C('grid --seeds 99999999999', '--seeds: 99999999999 is more than 10,000 seeds'),
    C('grid --steps 99999999999', '--steps: 99999999999 is more than 10,000,000'),
    C('grid --epochs 99999999', '--epochs: 99999999 epochs of 44 steps is more than 10,000,000 steps'),
    C('grid --chunk-size 0', '--chunk-size: 0 must be a positive integer'),
    C('grid --val-split 1', '--val-split: 1 is out of range'),
    C('grid --val-split nan', '--val-split: nan is out of range'),
    # numbers the float32 engine would silently change
    C('grid --decay 0.999999999999', '--decay: 0.999999999999 rounds to 1 in float32', 'use at most 0.99999994'),
    C('grid --momentum 0.99999999', '--momentum: 0.99999999 rounds to 1 in float32'),
    C('grid --eps 1e-50', '--eps: 1e-50 becomes 0 in float32'),
    C('grid --eps 1e-40', 'use 0 or at least 1.1754944e-38'),
    C('grid --lr 1e300', '--lr: 1e+300 overflows float32'),
    C('grid --lr 1e-45', '--lr: 1e-45 is a subnormal float32, which the engine flushes to 0'),
    C('grid --decay 1.0000001', '--decay: 1.0000001 is out of range (0 <= decay < 1)'),  # the value as typed
    # empty or huge grids
    C("grid --eps ''", "--eps: empty value in ''"),
    C('grid --eps ,', "--eps: empty value in ','"),
    C('grid --eps', 'requires an argument'),
    C('grid --eps log:1e-8:1:0', "count in 'log:1e-8:1:0' must be between 1 and 100000"),
    C('grid --eps lin:0:1:1000001', 'must be between 1 and 100000'),
    C('grid --eps log:1e-10:1:1001 --lr log:1e-4:1:1000', 'the grid has 1,001,000 settings'),
    C('grid --convention ,', "unknown convention ''"),
    # data files: missing, empty, truncated, wrong shape
    C("grid --dataset {d}/missing.npz", 'no such file or directory'),
    C("grid --dataset {d}/empty.npz", 'empty.npz: not an .npz file (not a zip archive)'),
    C("grid --dataset {d}/text.npz", 'text.npz: not an .npz file (not a zip archive); save one with numpy.savez'),
    C("grid --dataset {d}/truncated.npz", 'not a readable .npz file'),
    C("grid --dataset {d}/flat.npz", 'inputs must have shape (N, features), (N, H, W) or (N, H, W, C)'),
    C("grid --dataset {d}/five_d.npz", 'inputs must have shape'),
    C("grid --dataset {d}/mismatch.npz", '40 inputs but 39 labels'),
    C("grid --dataset {d}/nan.npz", 'inputs contain NaN or infinite values'),
    C("grid --dataset {d}/inf.npz", 'inputs contain NaN or infinite values'),
    C("grid --dataset {d}/fraction_labels.npz", 'labels must be whole numbers'),
    C("grid --dataset {d}/negative_labels.npz", 'labels must be >= 0'),
    C("grid --dataset {d}/wrong_keys.npz", 'needs arrays x_train/y_train or x/y; found images, labels'),
    C("grid --dataset {d}/empty_arrays.npz", 'dataset is empty'),
    C("grid --dataset {d}/two_pairs.npz", 'two_pairs.npz: holds both x/y and x_train/y_train, so which to train on'),
    C("grid --dataset {d}/half_val.npz", 'half_val.npz: has y_val but no x_val; a validation set needs both'),
    C("grid --dataset {d}/wide_val.npz", 'x_val has examples of shape (5,), the training inputs of shape (4,)'),
    C("grid --dataset {d}/pickled.npz", 'cannot load without unpickling'),
    C("grid --dataset {d}", 'truncated IDX header'),
    C("grid --dataset {d}/data.txt", 'unknown dataset format'),
    C("grid --dataset {d}/bombs", "bombs: a folder of images (one sub-folder per class), which the built-in tasks do "
      "not read: train a model of your own on it (--model FILE.py:NAME with --image-size PIXELS), or Inception-v3"),
    C("grid --task cnn --dataset {d}/fraction_labels.npz", 'labels must be whole numbers'),
    C("grid --dataset {d}/scalar.npz", 'scalar.npz: inputs must have shape (N, features), (N, H, W) or',
      '(N, H, W, C); got a scalar'),
    C("grid --dataset {d}/huge_label.npz", 'labels go up to 2,000,000,000; at most 100,000 classes'),
    C("grid --dataset {d}/huge_int_label.npz", 'labels go up to 1,099,511,627,776'),
    C("grid --dataset {d}/no_features.npz", 'inputs have no features (shape (10, 0))'),
    C("grid --dataset {d}/no_pixels.npz", 'inputs have no features (shape (10, 0, 0))'),
    C('grid --task quadratic --dataset /no/such.npz', 'task quadratic takes no dataset (got --dataset /no/such.npz)'),
    C('grid --task toy --dataset synthetic', 'task toy takes no dataset (got --dataset synthetic)'),
    # your own model (more in test_own_model.py)
    C("grid --model {d}/missing.py:Net", "--model: {d}/missing.py: no such file"),
    C("grid --model {d}/data.txt:Net", "--model: {d}/data.txt is not a Python file (.py)"),
    C("grid --model good.txt:Net", "--model: good.txt is not a Python file (.py)", cwd="{d}"),  # good.py not run
    C("grid --model noext:Net", "--model: noext is not a Python file (.py)", cwd="{d}"),
    C("grid --model {d}/syn.py:Net", "--model: cannot import {d}/syn.py: {d}/syn.py:2: SyntaxError: "),
    C("grid --model {d}/:Net", "--model: {d} is not a file"),
    C("grid --model no_such_package.models:Net", "cannot import no_such_package.models: ModuleNotFoundError"),
    C("grid --model Net", "--model: 'Net' must look like FILE.py:NAME or package.module:NAME"),
    C("grid --model models.py:Net:extra", "--model: 'models.py:Net:extra' must look like FILE.py:NAME or"),
    C("grid --metric none", "--metric applies to --model only"),
    C("grid --model {d}/one.py:One --loss binary_cross_entropy --dataset {d}/bad_probabilities.npz",
      "bad_probabilities.npz: --loss binary_cross_entropy needs targets in [0, 1] (0/1 labels or probabilities); "
      "these run from -0.5 to 1.5"),
    # images for inception: a decompression bomb is skipped (here: nothing else to read); 0..1 or 0..255 only
    C("inception --dataset {d}/bombs --image-size 75 --steps 1 -q", 'none of the 1 images could be read', alone=True),
    C("inception --dataset {d}/standardised.npz --image-size 75 --steps 1 -q", 'expected 0..1 or 0..255'),
    # unwritable output paths (a parent that is a file works even for root)
    C("grid --output {d}/a_file/out.jsonl", '--output: {d}/a_file is not a directory'),
    C("grid --output {d}", 'is a directory'),
    C("grid --output {d}/no/such/dir/out.csv", 'does not exist'),
    C("grid --output {d}/out.txt", 'cannot tell the format of'),
    C("grid -f csv --output {d}/a_file/out.csv", 'is not a directory'),
    # conflicting flags
    C('grid --steps 5 --epochs 1', 'give --steps or --epochs, not both'),
    C("grid -f csv -o {d}/out.jsonl", '--format csv conflicts with --output out.jsonl'),
    C('grid --resume', '--resume needs --output FILE.jsonl'),
    C("grid --task quadratic --steps 5 --resume --output {d}/r.json", '--resume works with jsonl output only'),
    C("grid --task quadratic --steps 5 --resume --output {d}/r.csv", '--resume works with jsonl output only'),
    C("grid --task quadratic --steps 5 --resume --output {d}/other_run.jsonl", 'comes from a different run'),
    C("grid --task quadratic --steps 5 --resume --output {d}/notes.jsonl", 'line 1: not valid JSON'),
    C("grid --task quadratic --steps 5 --resume --output {d}/inf.jsonl",
      'line 1: not valid JSON (Infinity is not allowed'),
    C('grid --task quadratic --epochs 2', 'task quadratic has no data, so no epochs'),
    C('grid --format xml', "unknown format 'xml'"),
    C('grid --task resnet', "unknown task 'resnet'"),
    C('grid --convention jax', "unknown convention 'jax'"),
    C('grid --bogus', 'No such option: --bogus'),
    # report: missing, empty, truncated or wrong-shape results
    C("report {d}/missing.jsonl", 'no such file'),
    C("report {d}", 'is a directory'),
    C("report {d}/empty.json", 'file is empty'),
    C("report {d}/truncated.json", 'not valid JSON'),
    C("report {d}/nan.json", 'NaN is not allowed'),
    C("report {d}/inf.jsonl", 'Infinity is not allowed (missing numbers are written as null)'),
    C("report {d}/shape.json", 'meta must be an object and results a list'),
    C("report {d}/list_of_numbers.json", 'a record must be a JSON object, not int'),
    C("report {d}/missing_fields.json", 'record has no decay, final_loss, diverged'),
    C("report {d}/string_eps.json", "eps must be a finite number, not 'small'"),
    C("report {d}/bad_curve.json", 'loss_curve must be a list of numbers'),
    C("report {d}/corrupt.jsonl", 'line 2: not valid JSON'),
    C("report {d}/meta_late.jsonl", 'a meta line can only be the first line'),
    C("report {d}/only_meta.jsonl", 'no results in the file yet'),
    C("report {d}/binary.jsonl", 'not UTF-8 text'),
    C("report {d}/garbage.jsonl", 'garbage.jsonl, line 1: not valid JSON'),
    C("report {d}/no_newline.jsonl -f csv", "0.5", code=0),  # a whole last record is read without its newline
    C("report {d}/bad.csv", "lr 'fast' is not a number"),
    C("report {d}/ragged.csv", '2 cells but the header has 5'),
    C("report {d}/excel.csv", "0.5", code=0),  # Excel's "CSV UTF-8" starts with a byte-order mark
    C("report {d}/bom.jsonl -f csv", "0.5", code=0),
    C("report {d}/bom_meta.jsonl", "from an editor", code=0),
    C("report {d}/long_number.jsonl", "long_number.jsonl, line 1: a number of more than 4,300 digits", alone=True),
    C("report {d}/pandas.csv -f jsonl", '{"eps": 1e-08, "decay"', '"loss_curve": [1.0, null, null, null, 0.5]',
      code=0),  # DataFrame.to_csv(): its index column left out, its list of a curve read back
    C("report {d}/bom.json -f csv", "0.5", code=0),
    C("report {d}/nan.csv", 'eps is nan; missing numbers must be empty cells'),
    C("report {d}/results.xml", 'cannot tell the format (expected .json, .jsonl or .csv)'),
    C("report {d}/deep.json", 'deep.json: nested more than 64 levels deep'),
    C("report {d}/deep.jsonl", 'deep.jsonl, line 1: nested more than 64 levels deep'),
    C("report {d}/deep_field.json", 'nested more than 64 levels deep'),
    C("report {d}/huge_eps.json", 'results[0].eps is a number beyond ±1e300'),
    C("report {d}/huge_loss.jsonl", 'line 1: final_loss is a number beyond ±1e300'),
    C("report {d}/huge_curve.json", 'results[0].loss_curve[1] is a number beyond ±1e300'),
    C("report {d}/huge.csv", "line 2: final_loss '1e400' is a number beyond ±1e300"),
    C("report {d}/string_std.json", "final_loss_std must be a number or null, not 'abc'"),
    C("report {d}/string_seeds.json", "seeds must be a whole number >= 0, not 'many'"),
    C("plot {d}/deep.json -o {d}/p.png", 'nested more than 64 levels deep'),
    C("plot {d}/huge_eps.json -o {d}/p.png", 'is a number beyond ±1e300'),
    C('report', 'Missing argument'),
    # report: bad options
    C("report {d}/good.json --top 0", '--top: 0 must be a positive integer'),
    C("report {d}/good.json --top many", "--top: 'many' is not a whole number"),
    C("report {d}/good.json --sort speed", "--sort: unknown field 'speed'"),
    C("report {d}/good.json --where 'lr~0.1'", 'must look like FIELD=VALUE'),
    C("report {d}/good.json --where lr=", 'must look like FIELD=VALUE'),
    C("report {d}/good.json --where speed=1", "--where: unknown field 'speed'"),
    C("report {d}/good.json --where 'lr<nan'", "'nan' in 'lr<nan' is not a finite number"),
    C("report {d}/good.json --where lr=fast", "'fast' in 'lr=fast' is not a number"),
    C("report {d}/good.json --where diverged=maybe", "--where: diverged is true or false, not 'maybe'"),
    C("report {d}/good.json --where lr=0.5", 'no settings match (lr in the file: 0.01)'),
    C("compare {d}/good.json {d}/good.json --where lr=0.5", '--where: no settings match in either file (lr=0.5)'),
    C("report {d}/good.json --reverse", '--reverse needs --sort'),
    C("report {d}/good.json -o {d}/a_file/r.csv", 'is not a directory'),
    C("report {d}/good.json -f yaml", "unknown format 'yaml'"),
    # plot
    C("plot {d}/good.json", "Missing option '--output'"),
    C("plot {d}/good.json -o {d}/plot.xyz", 'cannot tell the image format'),
    C("plot {d}/good.json -o {d}/a_file/plot.png", 'is not a directory'),
    C("plot {d}/good.json -o {d}", 'is a directory'),
    C("plot {d}/missing.json -o {d}/p.png", 'no such file'),
    # --- user text is shown literally (Rich markup, matplotlib mathtext) ---
    C("grid --dataset '{d}/br[/x]/a.npz' --steps 3 -q", "/br[/x]/a.npz", code=0),
    C("grid --dataset '{d}/[bold]x.npz'", "{d}/[bold]x.npz: not an .npz file"),
    C("report {d}/markup.json", "cost [v2] [/] [bold]x", code=0),
    C("report {d}/markup_convention.json", "[/]", code=0),
    C("plot {d}/dollar_convention.json -o {d}/dollar_convention.png -q", "", code=0),
    C("report {d}/dollar_title.json", "task $\\sqrt{$", code=0),
    C("plot {d}/dollar_title.json -o {d}/dollar.png -q", "", code=0),
    # --- every float option is finite, and in range ---
    C("inception --clip-norm inf", "--clip-norm: inf is not a finite number"),
    C("inception --clip-norm nan", "--clip-norm: nan is not a finite number"),
    C("inception --lr-decay-rate nan", "--lr-decay-rate: nan is not a finite number"),
    C("inception --lr-decay-rate 0.9 --lr-decay-epochs inf", "--lr-decay-epochs: inf is not a finite number"),
    C("inception --lr-decay-rate 0.9 --lr-decay-epochs 1e300", "--lr-decay-epochs: 1e+300 must lie in (0, 10,000,000]"),
    C("inception --dropout nan", "--dropout: nan must lie in [0, 1)"),
    C("inception --val-split 2", "--val-split: 2 is out of range"),  # before the images are read
    C("inception --label-smoothing inf", "--label-smoothing: inf must lie in [0, 1)"),
    C("grid --val-split inf", "--val-split: inf is out of range"),
    C("grid --val-split -inf", "--val-split: -inf is out of range"),
    # a stream's meta would go over a file that is not one (NAME.meta.json beside NAME.jsonl)
    C(f"{Q} -o {{d}}/taken.jsonl", "{d}/taken.meta.json exists and is not the meta of a streamed sweep", "--force"),
    C(f"{Q} -o {{d}}/taken.jsonl --resume", "{d}/taken.meta.json exists and is not the meta of a streamed sweep"),
    C(f"{Q} -o {{d}}/clash.jsonl", "{d}/clash.meta.json exists and is not the meta of a streamed sweep"),
    # control characters in a name are written out, never sent to the terminal
    C("report '{d}/no\x1b[31mred\x07.jsonl'", "{d}/no\\x1b[31mred\\x07.jsonl: no such file"),
    # an empty path is not the current folder
    C("report ''", "FILE: an empty path"),
    C(f"{Q} -o ''", "--output: an empty path"),
    C("grid --dataset ''", "--dataset: an empty path (built in: digits, synthetic)"),
    C("report '{d}/two  spaces '", "{d}/two  spaces : no such file"),  # blanks kept as typed
    C("report '{d}/two\u2028lines.jsonl'", "{d}/two\\u2028lines.jsonl: no such file"),  # a Unicode line break
    C("report '{d}/cod\u202egnp.jsonl'", "{d}/cod\\u202egnp.jsonl: no such file"),  # a right-to-left override
    # names the system cannot even look up (ENAMETOOLONG)
    C(f"{Q} -o {{d}}/{LONG}.jsonl", "--output: cannot write", "File name too long"),
    C(f"report {{d}}/{LONG}.jsonl", "cannot read (File name too long)"),
    C(f"report {{d}}/{'a' * 249}.jsonl -f csv", "1e-08,0.9", code=0),  # a name that fits, its meta's does not
    C(f"{Q} -o {{d}}/{'b' * 249}.jsonl", "--output: cannot write", ".meta.json: File name too long"),
    C(f"report {{d}}/good.json -o {{d}}/{LONG}.csv", "--output: cannot write", "File name too long"),
    C(f"grid --steps 3 --dataset {{d}}/{LONG}.npz", "cannot read (File name too long)"),
    C(f"grid --steps 3 --model {{d}}/{LONG}.py:Net", "--model", "cannot read (File name too long)"),
    C(f"inception --dataset {{d}}/{LONG}", "cannot read (File name too long)"),
    C(f"inception --weights {{d}}/{LONG}.safetensors", "--weights", "cannot read (File name too long)"),
    # --- any terminal width, any stdout ---
    C(Q, "final loss", code=0, env={"COLUMNS": "0"}),
    C("report {d}/good.json", "final loss", code=0, env={"COLUMNS": "0"}),
    C("report {d}/good.json", "final loss", code=0, env={"COLUMNS": "3"}),
    C(f"{Q} --lr 1e-3 1e-2", "│ 0.001 │", "│  0.01 │", "30.30", "Left out at 45 columns: loss curve", code=0,
      env={"COLUMNS": "45"}),  # narrower than the table: columns give way, no value is cut
    C(f"{Q} --lr 1e-3 1e-2", " 0.001 ", "  0.01 ", "30.30", "Left out at 20", code=0, env={"COLUMNS": "20"}),
    C(f"{Q} --seeds 2", "| * 1e-8 |", "~", "+----", code=0, env={"PYTHONIOENCODING": "ascii"}),  # not ★ ± ┏
    C("report {d}/good.json", "final loss", code=0, env={"PYTHONIOENCODING": "latin-1"}),
    C(Q, "cannot write to standard output: No space left on device; the results were saved to ", stdout="/dev/full"),
    C(f"{Q} -f csv", "cannot write to standard output: No space left on device; the results were saved to ",
      stdout="/dev/full"),
    C(f"{Q} -o {{d}}/full_stdout.jsonl", "No space left on device; the results are in {d}/full_stdout.jsonl",
      stdout="/dev/full"),
    C("report {d}/good.json", "cannot write to standard output: No space left on device; the results are in",
      stdout="/dev/full"),
    C(f"{Q} -f json", "cannot write to standard output: it is closed; the results were saved to ", stdout="closed"),
    C("report {d}/good.json", "cannot write to standard output: it is closed; the results are in", stdout="closed"),
    C(f"{Q} -f jsonl -o /dev/full", "--output: cannot write /dev/full: No space left on device; 2 of 2 finished "
      "settings saved to "),
    # --- one results file, one writer; nothing replaced that is not this sweep's ---
    C(f"{Q} -o {{d}}/claimed.jsonl", "--output: {d}/claimed.jsonl is being written by epsweep process"),
    C("report {d}/good.json -o {d}/claimed.jsonl", "{d}/claimed.jsonl is being written by epsweep process"),
    C(f"{Q} -o {{d}}/other_sweep.jsonl", "other_sweep.jsonl holds another sweep's results (steps 1 in the file, "
      "3 now;", "add --force to replace it, or choose another file"),
    C(f"{Q} -o {{d}}/other.json", "other.json holds another sweep's results (steps 1 in the file"),
    C(f"{Q} -o {{d}}/future.jsonl --resume", 'future.jsonl is a stream of format "epsweep-stream/99", which this'),
    C(f"{Q} -o {{d}}/no_run.jsonl --resume", "no_run.jsonl comes from a different run (run none in the file, given "
                                            "now)"),
    C(f"{Q} -o {{d}}/notes.jsonl", "notes.jsonl exists and is not epsweep results (line 1: not valid JSON"),
    C(f"{Q} -o {{d}}/notes.csv", "notes.csv exists and is not epsweep results (the header row has no eps, decay, lr"),
    C(f"{Q} -o {{d}}/force_me.json --force", "final loss", code=0),
    C("report {d}/good.json -o {d}/good.json", "--output: {d}/good.json is the file being reported on"),
    C("report {d}/two.json --top 1 -o {d}/two_copy.json", "two_copy.json holds 1 setting this output would not keep"),
    C("report {d}/good.json -o {d}/notes.jsonl", "notes.jsonl exists and is not epsweep results"),
    C("report {d}/bad_sidecar.jsonl", "1e-8", code=0),  # the meta is left out, with a warning (test_report)
    C("report {d}/x.meta.json", "the meta of a streamed sweep; read its .jsonl file (the records) instead"),
    # --- memory bombs: refused before anything is allocated, the budget said ---
    C("inception --image-size 1000000", "digits: 1,797 images of 1,000,000 x 1,000,000 pixels would take",
      "more than the data budget of", alone=True),
    C("inception --image-size 99999999999999999999", "more than the data budget of", alone=True),
    C("grid --dataset {d}/idx_big", "the IDX header's 100,000 x 1,000 x 1,000 values as float32 would take 372.5 GiB",
      alone=True),
    C("grid --dataset {d}/gzbomb", "IDX file holds more data than the 40 bytes its header announces", alone=True),
    C("grid --dataset {d}/zero", "not an IDX file (bad magic number)"),
    C("grid --dataset {d}/npz_bomb.npz", "arrays x and y as float32 would take 29.1 TiB in memory, more than the data",
      alone=True),
    C("grid --eps -", "standard input holds more than 16 MiB", stdin="/dev/zero"),
    C("grid --eps log:1e-10:1:1000 --lr log:1e-4:1:1000 --seeds 10000 --convention optax tf1 pytorch keras "
      "--optimizer rmsprop adam", "the sweep has 50,000,000,000 runs (5,000,000 settings over 5 update rules x "
      "10,000 seeds): their results would take about", "more than the budget of", alone=True),
    C("inception --dataset {d}/bigimg --image-size 75 --steps 1 -q", "none of the 1 images could be read", alone=True),
    # --- no traceback before training ---
    C("grid --dataset {d}/renamed.npz", "renamed.npz: a NumPy .npy file (one array), not an .npz of inputs and labels"),
    C("grid --dataset {d}/corrupt_deflate.npz", "corrupt_deflate.npz: not a readable .npz file ("),
    C("grid --dataset {d}/idx_ndim", "IDX header says 255 dimensions; at most 8 are supported"),
    C("grid --dataset {d}/idx_overflow", "4,294,967,295 x 4,294,967,295 x 4,294,967,295 x 4,294,967,295 values",
      alone=True),
    C("grid --dataset {d}/idx_wraps", "the IDX header's 65,536 x 65,536 x 65,536 x 65,536 values as float32",
      alone=True),
    C("grid --dataset {d}/idx_short", "IDX file holds 39 bytes of data, not the 40 bytes its header announces"),
    C("grid --dataset {d}/idx_long", "IDX file holds more data than the 40 bytes its header announces"),
    C("grid --dataset {d}/deflate", "cannot read IDX file (Error -3 while decompressing data"),
    C("grid --eps lin:0:1:100000 --decay lin:0:0.5:100000 --lr lin:0.1:1:100000 --momentum lin:0:0.5:100000",
      "the grid has 100,000,000,000,000,000,000 settings; the limit is 1,000,000", alone=True),
    C("report {d}/bigcell.csv", "bigcell.csv, line 2: not readable as CSV (field larger than field limit (131072))",
      alone=True),
    C("report {d}/notes.csv", "notes.csv: the header row has no eps, decay, lr, final_loss, diverged columns"),
    # --- several processes: a bad address, nobody there ---
    C("grid --coordinator 127.0.0.1:99999 --num-processes 2 --process-id 0", "port 99999 is not a TCP port"),
    C("grid --coordinator nohost --num-processes 2", "--coordinator: 'nohost' is not host:port"),
    C(f"{Q} --process-id 1", "cannot join the other processes: no --coordinator given, and no cluster launcher"),
    C("grid --join-timeout 0", "--join-timeout: 0 must be a whole number of seconds from 1 to 86,400"),
    C(f"{Q} --coordinator 127.0.0.1:{{port}}", "cannot join the other processes: no --num-processes given, and no "
      "cluster launcher (Slurm, Open MPI, ...) says how many processes there are"),
    C(f"{Q} --coordinator 127.0.0.1:{{port}} --num-processes 2 --process-id 1 --join-timeout 1",
      "--coordinator: cannot reach 127.0.0.1:{port} within 1 s (Connection refused)"),
    C(f"{Q} --coordinator 127.0.0.1:{{port2}} --num-processes 2 --process-id 0 --join-timeout 1",
      "the other processes did not join within 1 s (through 127.0.0.1:{port2})"),
    # --- a JAX backend that cannot start ---
    C(Q, "JAX cannot start: Unable to initialize backend 'tpu'", env={"JAX_PLATFORMS": "tpu"}),
    C(Q, "JAX cannot start: Unable to initialize backend 'cpu'",
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=0"}),
    C(Q, 'JAX cannot start: Invalid value "abc" for JAX flag jax_num_cpu_devices (from the environment variable '
      'JAX_NUM_CPU_DEVICES)', env={"JAX_NUM_CPU_DEVICES": "abc"}),  # read as JAX is imported
    # --- clear messages ---
    C("grid --dataset {d}/huge_values.npz", "inputs reach 1e+300, beyond float32's range (±3.4e+38)"),
    C("inception --dataset {d}/uint16.npz --image-size 75 --val-split 0.9", "has 4 examples: too few to hold out 0.9"),
    C("inception --dataset {d}/pixels_280.npz", "pixels_280.npz: integer pixels run from 100 to 280; expected 0..255"),
    C("inception --dataset {d}/pixels_negative.npz", "integer pixels run from -5 to 100; expected 0..255"),
    C("grid --eps -", "--eps: no values on standard input"),
    C(f"{Q} --eps - -f csv", "0.25,", code=0, stdin="{d}/stdin_bom"),  # a byte-order mark before the values
    C("grid -o -", "--output: - names no file: results go to standard output without --output"),
    C("grid --eps - --lr - --steps 1", "only one option can read values from standard input ('-'); got --eps and --lr",
      stdin="{d}/stdin_values"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = make_files(tmp_path_factory.mktemp("hostile"))
    claim = FileClaim.take(d / "claimed.jsonl")  # as a sweep writing it would
    yield d
    claim.release()


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _fill(text: str, fill: dict[str, str]) -> str:
    return re.sub(r"\{(d|port2?)\}", lambda m: fill[m.group(1)], text)


def _run(case: Case, fill: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [_fill(a, fill) for a in shlex.split(case.args)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **dict(case.env)}
    stdin = open(_fill(case.stdin, fill), "rb") if case.stdin else subprocess.DEVNULL
    closed = case.stdout == "closed"  # started with standard output closed (>&-)
    stdout = open(case.stdout, "w") if case.stdout and not closed else subprocess.PIPE
    command = ["bash", "-c", 'exec "$@" >&-', "bash", EXE, *argv] if closed else [EXE, *argv]
    try:
        done = subprocess.run(command, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=300,
                              cwd=_fill(case.cwd, fill) if case.cwd else None)
    finally:
        for f in (stdin, stdout):
            if hasattr(f, "close"):
                f.close()
    out = (done.stdout or b"").decode("utf-8", "replace")
    return _done(argv, done.returncode, out, done.stderr.decode("utf-8", "replace"))


def _run_in_process(case: Case, fill: dict[str, str], capfd, caplog) -> subprocess.CompletedProcess:
    """``case`` through ``epsweep.cli.main`` in this process, its standard streams captured at
    the file descriptors (a native library's output too). What a process would also print on
    stderr is added to it as lines: a warning Python shows by default, and a warning another
    library logs (a process prints those through logging's last resort)."""
    argv = [_fill(a, fill) for a in shlex.split(case.args)]
    capfd.readouterr()
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    out, err = capfd.readouterr()
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    err += "".join(f"{w.category.__name__}: {w.message}\n" for w in caught if not issubclass(w.category, hidden))
    err += "".join(f"{r.name}: {r.getMessage()}\n" for r in caplog.records
                   if r.levelno >= logging.WARNING and not r.name.startswith("epsweep"))
    return _done(argv, code, out, err)


def _done(argv: list[str], code: int, out: str, err: str) -> subprocess.CompletedProcess:
    """The outcome, after removing the results a failed write saved to a temporary file."""
    for saved in re.findall(r"saved to (/\S+?\.(?:json|jsonl|csv))(?=[ ;]|$)", err, re.M):
        if Path(saved).parent == Path(os.environ.get("TMPDIR", "/tmp")) or "epsweep-" in Path(saved).name:
            for leftover in (Path(saved), meta_path(Path(saved))):
                leftover.unlink(missing_ok=True)
    return subprocess.CompletedProcess(argv, code, out, err)


def _needs_process(case: Case) -> bool:
    """Standard input or output, the environment, a working directory or several processes
    (what only a process of its own has), or ``alone``."""
    return bool(case.alone or case.stdin or case.stdout or case.env or case.cwd
                or re.search(r"\{port|--coordinator|--num-processes|--process-id", case.args)
                or {"-", "/dev/stdin"} & set(shlex.split(case.args)))


# (case, how it runs): every case a process needs through the executable, every eighth of the
# others both ways, the rest in-process
RUNS = [(case, "executable") for case in CASES if _needs_process(case)] + [
    (case, how) for i, case in enumerate(c for c in CASES if not _needs_process(c))
    for how in (("in-process", "executable") if i % 8 == 0 else ("in-process",))]


@pytest.fixture(scope="module")
def outcomes(files, request):
    """Every selected case that runs through the executable, two at a time: ({case:
    CompletedProcess}, the {d} and {port} values)."""
    assert EXE, "the epsweep executable is not installed"
    selected = {item.callspec.params["case"] for item in request.session.items
                if item.originalname == "test_hostile_input" and hasattr(item, "callspec")
                and item.callspec.params["how"] == "executable"}
    port, port2 = _free_ports(2)
    fill = {"d": str(files), "port": str(port), "port2": str(port2)}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(_run, case, fill) for case in CASES if case in selected}
        results = {case: future.result() for case, future in futures.items()}
    return results, fill


@pytest.mark.parametrize(("case", "how"), [pytest.param(c, how, id=f"{how}: {c.args[:70]}") for c, how in RUNS])
def test_hostile_input(case, how, files, outcomes, capfd, caplog):
    results, fill = outcomes
    done = results[case] if how == "executable" else _run_in_process(case, fill, capfd, caplog)
    expected = [_fill(m, fill) for m in case.messages]
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert done.returncode == case.code, done.stderr
    if case.code == 0:
        assert all(m in done.stdout for m in expected), done.stdout
        return
    assert done.stderr.startswith("epsweep: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert all(m in done.stderr for m in expected), done.stderr
    assert done.stdout == ""


def test_there_are_at_least_60_distinct_cases():
    assert len(set(CASES)) == len(CASES) >= 60  # args, input, output and environment: each case differs
    assert {case for case, _ in RUNS} == set(CASES) and len({case for case, how in RUNS if how == "executable"}) > 50


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


def test_a_second_sweep_on_the_same_output_exits_2_naming_the_first(tmp_path):
    """Two real sweeps, one --output: the second refuses at once, naming the first process, and
    the first finishes with a whole, readable file."""
    out = tmp_path / "same.jsonl"
    args = [EXE, "grid", "--eps", "log:1e-8:1:4", "--steps", "3000", "--batch-size", "16", "--chunk-size", "1",
            "-o", str(out), "-q"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        start = time.monotonic()
        while not meta_path(out).exists():  # the first claims the file before it writes the meta
            assert first.poll() is None and time.monotonic() - start < 240, first.stderr.read()
            time.sleep(0.01)
        second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr == (f"epsweep: error: --output: {out} is being written by epsweep process {first.pid}; "
                                 f"wait for it to finish or choose another file\n")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert len(read_results(out).records) == 4 and len(out.read_text().splitlines()) == 4


@pytest.mark.parametrize("command", [f"{Q} -f csv", Q, "report {d}/good.json"])
def test_a_reader_that_stops_early_ends_the_run_quietly_and_keeps_the_results(command, files, tmp_path):
    """`epsweep ... | head -1`: the reader closes the pipe before the results are written. Exit
    code 0 and no traceback (Click alone exits with 1); a sweep's results, which exist nowhere
    else, are saved and a warning names the file (one from a file, report's, needs none)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: every write fails (EPIPE)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TMPDIR": str(tmp_path)}
    try:
        done = subprocess.run([EXE, *shlex.split(command.format(d=files))], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=300)
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    if command.startswith("report"):
        assert done.stderr == ""
        return
    (line,) = done.stderr.splitlines()  # -q: the summary line is not there, the warning is
    saved = re.fullmatch(r"epsweep: warning: standard output was closed before all 2 records were read; "
                         r"they were saved to (\S+)", line)
    assert saved and len(read_results(Path(saved.group(1))).records) == 2, line


# --- the library: wrong arguments are a UserError naming them, before anything trains ---------
LIBRARY_CASES = [  # an expression (names from _library_names) and what the UserError says
    ("Grid(eps='1e-8')", "eps: '1e-8' is text; give numbers"),
    ("epsweep.parse_values('log:1e-8:1:abc', 'eps')", "is not an integer"),  # one token, not letters
    ("Grid(eps=np.ones((1, 2)))", "eps: a flat sequence of numbers, not an array of shape (1, 2)"),
    ("Grid(eps=(True,))", "eps: True is not a real number"),
    ("Grid(lr=(1j,))", "lr: 1j is not a real number"),
    ("Grid(lr=[10**400])", "lr: '1000000000000000000000000000000000000000'… (401 characters) overflows float32"),
    ("RunConfig(first_seed=1.5)", "first_seed: 1.5 must be a whole number"),
    ("RunConfig(steps='10')", "steps: '10' must be a whole number"),
    ("RunConfig(centered='no')", "centered: 'no' must be True or False"),
    ("RunConfig(conventions='tf2')", "unknown convention 'tf2'"),  # one name, not its letters
    ("RunConfig(clip_norm=1e-50)", "clip_norm: 1e-50 becomes 0 in float32; use at least 1.1754944e-38"),
    ("RunConfig(clip_norm=1e300)", "clip_norm: 1e+300 overflows float32, which the engine trains in"),
    ("RunConfig(lr_decay_rate=1e-40)", "lr_decay_rate: 1e-40 is a subnormal float32, which the engine flushes"),
    ("RunConfig(clip_norm=10**400)", "clip_norm: '1000000000000000000000000000000000000000'… (401 characters) is not"),
    ("RunConfig(clip_norm=True)", "clip_norm: True is not a finite number"),
    ("epsweep.make_optimizer('rmsprop', 0.1, None, 1e-8)", "decay: rmsprop needs a value, not None"),
    ("epsweep.sweep(3)", "task: a Task or a task's name, not int 3"),
    ("epsweep.sweep('quadratic', [1e-8])", "grid: a Grid or a dict of its fields, not list"),
    ("epsweep.sweep('quadratic', {'epsilon': [1e-8]})", "grid: unknown field 'epsilon'; Grid has decay, eps"),
    ("epsweep.sweep('quadratic', None, {'step': 3})", "config: unknown field 'step'"),
    ("epsweep.run('quadratic', None, QUICK, writers='x.jsonl')", "writers: a list of writers"),
    ("epsweep.run('quadratic', None, QUICK, writers=['x.jsonl'])", "writers: 'x.jsonl' is not a writer"),
    ("epsweep.sweep('quadratic', None, QUICK, progress=3)", "progress: 3 is not callable"),
    ("build_report('sweep.jsonl')", "build_report takes what read_results(path) returns, not str"),
    ("epsweep.read_results(None)", "a results file's path, not NoneType None"),
    ("Dataset.from_arrays(*XY, seed=-1)", "seed: -1 must be a whole number >= 0"),
    ("epsweep.build_task('toy', data_seed=-1)", "seed: -1 must be a whole number >= 0"),
    ("epsweep.run('quadratic', None, QUICK, writers=MemoryWriter(), resume=True)", "resume needs a streamed"),
    ("epsweep.run('quadratic', None, QUICK, writers=[JsonlWriter('r.jsonl', resume=True)])", "only when the run is"),
    ("epsweep.flax_task(None, Dataset.from_arrays(*XY), metric=accuracy)", "your function 'accuracy' would be"),
    ("JsonlWriter('out.csv')", "out.csv: JsonlWriter writes JSON lines (.jsonl); CsvWriter and JsonWriter write .csv"),
    ("epsweep.CsvWriter('out.jsonl')", "out.jsonl: CsvWriter writes .csv; JsonlWriter writes .jsonl"),
    ("epsweep.JsonWriter('out.CSV')", "out.CSV: JsonWriter writes .json; CsvWriter writes .csv"),
]


def _library_names() -> dict:
    import numpy as np

    import epsweep
    from epsweep import Dataset, Grid, JsonlWriter, MemoryWriter, RunConfig
    from epsweep.results import build_report

    return {"np": np, "epsweep": epsweep, "Dataset": Dataset, "Grid": Grid, "MemoryWriter": MemoryWriter,
            "JsonlWriter": JsonlWriter,
            "RunConfig": RunConfig, "build_report": build_report, "QUICK": RunConfig(steps=2),
            "XY": (np.zeros((10, 4), np.float32), np.arange(10) % 2), "accuracy": accuracy}


def accuracy(outputs, y):  # a user's own metric that happens to share the built-in's name
    return -1.0


@pytest.mark.parametrize(("expression", "message"), LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_library_refuses_wrong_arguments_with_one_message(expression, message):
    from epsweep.errors import UserError

    with pytest.raises(UserError, match=re.escape(message)):
        eval(expression, _library_names())
