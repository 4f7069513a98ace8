"""Nothing lost: streamed .jsonl sweeps, atomic files, resume, and Ctrl-C on a real sweep."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from epsweep.cli import main
from epsweep.config import RunConfig
from epsweep.engine import driver
from epsweep.errors import UserError
from epsweep.grid import Grid
from epsweep.results.files import write_atomic, write_or_keep
from epsweep.results.formats import render_machine
from epsweep.results.reading import MAX_JSON_DEPTH, clean_meta, meta_path, read_results, read_stream
from epsweep.results.writers import JsonlWriter, MemoryWriter
from epsweep.runner import resolve_spec, run
from epsweep.vocabulary import UpdateRule

EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
QUAD_GRID = Grid(eps=(1e-8, 1e-4, 1e-2, 0.1, 1.0), lr=(0.01, 0.1))
QUAD_CONFIG = RunConfig(steps=30, conventions=("optax", "tf1"), chunk_size=3)


def lines_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


class Arrivals(MemoryWriter):
    """Counts the records on hand after each chunk arrives."""

    def __init__(self):
        super().__init__()
        self.counts = [0]

    def write(self, records):
        super().write(records)
        self.counts.append(len(self.records))


def stream_sweep(task, grid, config, path, *, resume=False, arrivals=None):
    """A sweep streamed to (and resumed from) ``path``, as ``--output path.jsonl`` does."""
    writers = [JsonlWriter(path, resume=resume), *([arrivals] if arrivals is not None else [])]
    return run(task, grid, config, writers=writers, resume=resume)


# --- atomic files -----------------------------------------------------------------------------


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old contents\n")
    os.chmod(target, 0o640)

    def half_then_fail(tmp):
        Path(tmp).write_text("half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary left behind
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n" and (target.stat().st_mode & 0o777) == 0o640


def test_save_results_falls_back_when_the_target_is_gone(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    target = gone / "results.json"
    gone.rmdir()  # the directory vanished while the sweep ran
    records = [{"eps": 1.0, "decay": 0.9, "lr": 0.1, "final_loss": 0.5, "diverged": False}]
    with pytest.raises(UserError, match="the results were saved to") as caught:
        write_or_keep(target, render_machine("json", {"task": "x"}, records), "json")
    fallback = Path(str(caught.value).rsplit("saved to ", 1)[1])
    try:
        assert json.loads(fallback.read_text())["results"] == records
    finally:
        fallback.unlink()


# --- reading crafted results files ------------------------------------------------------------

GOOD = {"eps": 1e-8, "decay": 0.9, "lr": 0.01, "final_loss": 0.5, "diverged": False}


def nested(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000, "nested more than 64 levels deep"),  # RecursionError inside json
    (json.dumps([{**GOOD, "x": nested(MAX_JSON_DEPTH)}]), "nested more than 64 levels deep"),
    (json.dumps([GOOD]).replace("0.5", "1" + "0" * 400), r"\[0\]\.final_loss is a number beyond ±1e300"),
    (json.dumps([GOOD]).replace("0.5", "-1e301"), r"\[0\]\.final_loss is a number beyond ±1e300"),
    ('{"meta": {"steps": 1e999}, "results": []}', r"meta\.steps is a number beyond ±1e300"),  # 1e999 reads as inf
    (json.dumps([{**GOOD, "diverged_step": 2.5}]), "diverged_step must be a whole number >= 0 or null, not 2.5"),
    (json.dumps([{**GOOD, "eps_dominated": [1]}]), r"eps_dominated must be a number or null, not \[1\]"),
])
def test_crafted_json_is_a_user_error(tmp_path, text, message):
    path = tmp_path / "crafted.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_results(path)


def test_nesting_up_to_the_limit_and_big_numbers_within_it_are_read(tmp_path):
    path = tmp_path / "ok.json"
    # the document, its results list and a record take 3 levels; the value adds the rest
    path.write_text(json.dumps({"results": [{**GOOD, "final_loss": -1e300, "x": nested(MAX_JSON_DEPTH - 3)}]}))
    assert read_results(path).records[0]["final_loss"] == -1e300


def test_meta_keys_of_the_wrong_type_are_dropped_with_a_note():
    meta = {"task": "mlp", "steps": "abc", "seeds": 5, "data": {"name": "digits"}, "title": None, "extra": [1]}
    kept, notes = clean_meta(meta, "f.json")
    assert kept == {"task": "mlp", "title": None, "extra": [1]}  # null means "not known"; unknown keys stay
    assert notes == ['f.json: ignored meta steps "abc" (expected a positive whole number)',
                     "f.json: ignored meta seeds 5 (expected a list of seeds)",
                     'f.json: ignored meta data {"name": "digits"} (expected an object with "name", "train" and "val")']


# --- streaming and resume (in-process, quadratic task: compiles in a second) --------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, quadratic_task):
    path = tmp_path_factory.mktemp("full") / "full.jsonl"
    arrivals = Arrivals()
    result = stream_sweep(quadratic_task, QUAD_GRID, QUAD_CONFIG, path, arrivals=arrivals)
    return path, result, arrivals.counts


def test_records_stream_chunk_by_chunk_with_the_meta_beside_them(uninterrupted):
    path, result, saved = uninterrupted
    lines = [{"meta": json.loads(meta_path(path).read_text())}, *lines_of(path)]  # the meta: NAME.meta.json
    meta = lines[0]["meta"]
    per_call = 3 + (-3) % len(jax.devices())  # 3 settings, rounded up to a multiple of the device count
    assert meta["format"] == "epsweep-stream/1" and meta["layout"]["settings_per_call"] == per_call
    assert meta["settings"] == 20
    assert meta["run"]["train"]["steps"] == 30 and meta["run"]["seeds"] == [0]
    assert lines[1:] == result.records and len(result.records) == 20
    assert meta_path(path).name == "full.meta.json" and meta["trained"] == 20  # the final meta, counts and all
    # records arrive chunk by chunk (3 settings, rounded up to a multiple of the device count),
    # in at least two pieces for each convention's 10 settings
    steps = np.diff(saved)
    assert saved[0] == 0 and saved[-1] == 20 and len(saved) >= 5 and (steps > 0).all() and steps.max() < 10
    assert all(set(r) >= {"eps", "lr", "convention", "loss_curve"} for r in lines[1:])


def test_resume_after_a_cut_equals_the_uninterrupted_run(uninterrupted, quadratic_task, tmp_path):
    full_path, full, _ = uninterrupted
    text = full_path.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    # 7 whole records (two chunks and part of a third), and a line cut mid-write; the meta beside them
    cut.write_text("".join(text[:7]) + text[7][:40])
    shutil.copy(meta_path(full_path), meta_path(cut))
    assert read_stream(cut).notes and len(read_stream(cut).records) == 7
    resumed = stream_sweep(quadratic_task, QUAD_GRID, RunConfig(steps=30, conventions=("optax", "tf1")), cut,
                           resume=True)
    assert resumed.meta["resumed"] == 7 and resumed.meta["trained"] == 13
    assert resumed.meta["layout"] == full.meta["layout"]  # the file's call width, though none was given
    assert resumed.records == full.records  # bitwise: same call shapes as the first run
    assert lines_of(cut) == lines_of(full_path)  # the file is rewritten in grid order
    again = stream_sweep(quadratic_task, QUAD_GRID, QUAD_CONFIG, cut, resume=True)  # nothing left to do
    assert again.meta["trained"] == 0 and again.records == full.records


def test_a_saved_jsonl_is_one_row_per_setting_in_pandas(uninterrupted):
    pandas = pytest.importorskip("pandas")
    path, result, _ = uninterrupted
    frame = pandas.read_json(path, lines=True)
    assert len(frame) == len(result.records) == 20 and "meta" not in frame.columns
    for column in ("convention", "optimizer", "diverged", "seeds"):
        assert frame[column].tolist() == [r[column] for r in result.records], column
    for column in ("eps", "lr", "final_loss"):  # pandas' fast float parser may differ in the last bit
        np.testing.assert_allclose(frame[column], [r[column] for r in result.records], rtol=1e-15, err_msg=column)
    assert len(frame["loss_curve"][0]) == len(result.records[0]["loss_curve"])
    loaded = read_results(path)
    assert loaded.meta["run"] == result.meta["run"]  # the meta, from beside the file
    ours = loaded.to_pandas()
    assert list(ours.columns) == list(frame.columns) and len(ours) == 20
    pandas.testing.assert_frame_equal(ours.drop(columns="loss_curve"), frame.drop(columns="loss_curve"),
                                      check_dtype=False)
    assert result.to_pandas()["eps"].tolist() == frame["eps"].tolist()
    from epsweep.results.formats import render_machine

    as_csv = path.with_suffix(".csv")  # the same records as csv: the same columns of the same dtypes
    as_csv.write_text(render_machine("csv", loaded.meta, loaded.records))
    assert dict(read_results(as_csv).to_pandas().dtypes) == dict(ours.drop(columns="loss_curve").dtypes)


def test_files_with_a_meta_first_line_still_read_and_resume(uninterrupted, quadratic_task, tmp_path):
    """The layout before the meta moved beside the records: {"meta": ...} on the first line."""
    full_path, full, _ = uninterrupted
    old = tmp_path / "old.jsonl"
    meta = json.loads(meta_path(full_path).read_text())
    old.write_text(json.dumps({"meta": meta}) + "\n" + "".join(full_path.read_text().splitlines(True)[:7]))
    loaded = read_results(old)
    assert loaded.meta_line and loaded.meta["run"] == full.meta["run"] and len(loaded.records) == 7
    resumed = stream_sweep(quadratic_task, QUAD_GRID, QUAD_CONFIG, old, resume=True)
    assert resumed.meta["resumed"] == 7 and resumed.records == full.records
    assert old.read_text() == full_path.read_text()  # rewritten in the new layout: records only
    assert json.loads(meta_path(old).read_text())["run"] == full.meta["run"]


def test_the_meta_file_alone_is_not_mistaken_for_results(uninterrupted):
    path, _, _ = uninterrupted
    with pytest.raises(UserError, match="the meta of a streamed sweep; read its .jsonl file"):
        read_results(meta_path(path))


def test_resume_of_a_few_missing_settings_is_exact(mlp_task, tmp_path, chunk=4, dropped=(0, 9)):
    """Fewer settings missing than a chunk holds: the call is padded to its usual width, so
    the numbers still match the uninterrupted run bit for bit (a call of another shape
    rounds differently: this MLP at lr 0.1 then differs in the last digits)."""
    grid = Grid(eps=(1e-8, 1e-6, 1e-4, 1e-2, 1.0), lr=(0.03, 0.1))
    config = RunConfig(steps=20, batch_size=16, chunk_size=chunk)
    full_path = tmp_path / "full.jsonl"
    full = stream_sweep(mlp_task, grid, config, full_path)
    lines = full_path.read_text().splitlines(keepends=True)
    holey = tmp_path / "holey.jsonl"
    holey.write_text("".join(line for i, line in enumerate(lines) if i not in dropped))
    shutil.copy(meta_path(full_path), meta_path(holey))
    resumed = stream_sweep(mlp_task, grid, RunConfig(steps=20, batch_size=16), holey, resume=True)
    assert resumed.meta["trained"] == len(dropped) and resumed.records == full.records
    assert holey.read_text() == full_path.read_text()


def test_resume_refuses_another_run_and_fresh_runs_keep_partial_files(uninterrupted, quadratic_task, tmp_path):
    full_path, _, _ = uninterrupted
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(full_path.read_text().splitlines(keepends=True)[:4]))
    shutil.copy(meta_path(full_path), meta_path(partial))
    with pytest.raises(UserError, match=r"different run \(steps 30 in the file, 40 now\)"):
        stream_sweep(quadratic_task, QUAD_GRID, RunConfig(steps=40, conventions=("optax", "tf1")), partial,
                     resume=True)
    with pytest.raises(UserError, match="holds 4 of 20 settings of this run; add resume to finish it, force to"):
        stream_sweep(quadratic_task, QUAD_GRID, QUAD_CONFIG, partial)
    assert len(partial.read_text().splitlines()) == 4  # untouched


def test_results_do_not_depend_on_chunk_neighbours(mlp_task):
    """For a fixed chunk size, a setting's numbers are bitwise the same whichever settings share
    its chunk (what makes resume exact). Different chunk sizes may differ in float rounding."""
    settings = resolve_spec(mlp_task, RunConfig(steps=20, batch_size=16), UpdateRule("rmsprop", "optax"))
    grid = Grid(eps=(1e-8, 1e-4, 1.0), lr=(1e-3, 0.1)).settings()
    seeds = np.array([0, 1], np.uint32)

    def run(order):
        h = {n: np.array([grid[i][n] for i in order]) for n in ("eps", "decay", "lr", "momentum")}
        out = driver.train_runs(mlp_task, settings, h, seeds, chunk_size=2)
        return {i: (out.curve[:, k], out.val_loss[:, k]) for k, i in enumerate(order)}

    everything, subset = run(range(6)), run([5, 2, 3])
    for i in (5, 2, 3):
        np.testing.assert_array_equal(subset[i][0], everything[i][0])
        np.testing.assert_array_equal(subset[i][1], everything[i][1])


def test_json_and_csv_outputs_are_written_whole(quadratic_task, tmp_path, capsys):
    for name in ("r.json", "r.csv"):
        target = tmp_path / name
        target.write_text("previous\n")
        args = ["grid", "--task", "quadratic", "--steps", "30", "--eps", "1e-8", "1", "-o", str(target), "-q"]
        assert main(args) == 2  # not epsweep results: not replaced
        assert target.read_text() == "previous\n"
        assert main([*args, "--force"]) == 0
        assert target.read_text() != "previous\n"
        assert main(args) == 0  # this sweep's own results: replaced by a rerun
    assert len(read_results(tmp_path / "r.json").records) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]
    capsys.readouterr()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a disk that is always full)")
def test_a_full_disk_never_costs_the_results(capsys):
    args = ["grid", "--task", "quadratic", "--steps", "5", "-q"]
    assert main([*args, "-f", "jsonl", "-o", "/dev/full"]) == 2  # streaming: the first chunk's write fails
    err = capsys.readouterr().err
    assert err.startswith("epsweep: error: --output: cannot write /dev/full: No space left on device; 2 of 2 "
                          "finished settings saved to ") and err.count("\n") == 1
    partial = Path(err.split(" saved to ")[1].split(" (finish with")[0])
    try:
        assert len(read_results(partial).records) == 2 and read_results(partial).meta["settings"] == 2
    finally:
        partial.unlink()
        meta_path(partial).unlink()
    assert not Path("/dev/full.meta.json").exists()  # no meta file beside a device
    assert main([*args, "-f", "json", "-o", "/dev/full"]) == 2  # written at the end: saved elsewhere
    err = capsys.readouterr().err
    assert err.startswith("epsweep: error: --output: cannot write /dev/full: No space left on device; the results "
                          "were saved to ") and err.count("\n") == 1
    fallback = Path(err.strip().rsplit(" ", 1)[1])
    try:
        assert len(read_results(fallback).records) == 2
    finally:
        fallback.unlink()
    assert Path("/dev/full").is_char_device()


def test_a_disk_that_fills_mid_stream_keeps_what_the_stream_holds_and_says_so(tmp_path):
    """Files may grow to 3,072 bytes (``ulimit -f 3``): the meta fits, the stream takes four
    records and fails on the fifth, and so does every fallback copy. The one line names what the
    stream holds, which --resume finishes; no half-written fallback file is left behind."""
    args = [sys.executable, "-m", "epsweep", "grid", "--task", "quadratic", "--steps", "5", "--eps", "log:1e-8:1:12",
            "--chunk-size", "1", "-q", "-o", "q.jsonl"]
    env = {**os.environ, "EPSWEEP_COMPILE_CACHE": "off", "TMPDIR": str(tmp_path)}
    limited = ["bash", "-c", 'ulimit -f 3 && exec "$@"', "bash", *args]  # not preexec_fn: JAX has threads
    done = subprocess.run(limited, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("epsweep: error: --output: cannot write q.jsonl: File too large; 4 of 12 settings saved "
                           "to q.jsonl (resume with --resume)\n")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("epsweep-locks")) == [
        "q.jsonl", "q.meta.json"]  # no partial copy (nor its meta) half written
    assert len(read_results(tmp_path / "q.jsonl").records) == 4
    finished = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert len(read_results(tmp_path / "q.jsonl").records) == 12


def test_a_partial_copy_that_cannot_be_written_leaves_an_earlier_one_as_it_was(tmp_path, monkeypatch):
    from epsweep.results import writers

    earlier = tmp_path / "out.partial.jsonl"
    earlier.write_text('{"eps": 1e-8}\n')
    meta_path(earlier).write_text('{"format": "epsweep-stream/1"}\n')
    before = sorted((p.name, p.read_text()) for p in tmp_path.iterdir())

    def full_disk(path, text):
        Path(path).write_text(text[:1])  # a write that fails halfway
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "write_atomic", full_disk)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(writers.tempfile, "tempdir", None)
    assert writers.save_partial_stream([{"eps": 1.0}], {"format": "x"}, [tmp_path / "out.csv"]) is None
    assert sorted((p.name, p.read_text()) for p in tmp_path.iterdir() if p.is_file()) == before
    assert list((tmp_path / "tmp").iterdir()) == []  # nor a temporary copy


# --- Ctrl-C on a real sweep ------------------------------------------------------------------------

SWEEP = ["grid", "--eps", "log:1e-8:1:6", "--lr", "1e-3", "1e-2", "--steps", "1500", "--batch-size", "16",
         "--chunk-size", "1"]


def _stopped_after_a_record(out, signal_number):
    """SWEEP streamed to ``out`` by the executable, sent ``signal_number`` once ``out`` holds a
    first record: (exit code, stdout, stderr)."""
    assert EXE, "the epsweep executable is not installed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([EXE, *SWEEP, "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 240
    while not (out.exists() and out.read_text().count("\n") >= 2):  # the meta line and a first record
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.005)
    proc.send_signal(signal_number)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stdout, stderr


def test_sigint_keeps_what_finished_and_resume_completes_it(tmp_path, capsys):
    out = tmp_path / "f.jsonl"
    code, stdout, stderr = _stopped_after_a_record(out, signal.SIGINT)
    assert code == 130, stderr
    match = re.fullmatch(r"epsweep: interrupted; (\d+) of 12 settings saved to (.+) \(resume with --resume\)\n",
                         stderr)
    assert match, stderr
    saved = int(match.group(1))
    assert 1 <= saved < 12 and match.group(2) == str(out) and stdout == ""
    lines = lines_of(out)  # every line whole
    assert len(lines) == saved and all("eps" in line for line in lines) and meta_path(out).exists()

    assert main([*SWEEP, "--output", str(out), "--resume", "-q"]) == 0
    reference = tmp_path / "reference.jsonl"
    assert main([*SWEEP, "--output", str(reference), "-q"]) == 0
    capsys.readouterr()
    assert lines_of(out) == lines_of(reference)
    assert len(lines_of(out)) == 12


def test_a_hangup_keeps_what_finished_as_an_interrupt_does(tmp_path):
    """SIGHUP (the terminal or ssh session closed) ends a sweep as SIGTERM does: what finished
    is kept, every line whole, exit code 129; it used to end the process with nothing said."""
    out = tmp_path / "h.jsonl"
    code, stdout, stderr = _stopped_after_a_record(out, signal.SIGHUP)
    assert code == 129, stderr
    assert re.fullmatch(r"epsweep: terminated; \d+ of 12 settings saved to .+ \(resume with --resume\)\n", stderr)
    assert stdout == "" and all("eps" in line for line in lines_of(out))


def test_a_sweep_not_streamed_saves_finished_chunks_when_it_fails_and_resume_completes_it(
        tmp_path, monkeypatch, capsys):
    """Out of memory (or Ctrl-C) after some chunks of a sweep written only at the end: the
    finished records go to NAME.partial.jsonl, which --resume completes to the uninterrupted
    run's records."""
    from jax.errors import JaxRuntimeError

    args = ["grid", "--task", "quadratic", "--eps", "log:1e-8:1:6", "--lr", "0.01", "0.1", "--steps", "20",
            "--chunk-size", "2", "-q"]
    real = driver.train_runs

    def fails_after_two_chunks(*a, on_chunk, **k):
        calls = []

        def chunk(*c):
            if len(calls) == 2:
                raise JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.00GiB.")
            calls.append(c)
            on_chunk(*c)

        return real(*a, on_chunk=chunk, **k)

    monkeypatch.setattr(driver, "train_runs", fails_after_two_chunks)
    out = tmp_path / "f.json"
    assert main([*args, "-f", "json", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    partial = tmp_path / "f.partial.jsonl"
    assert err.count("\n") == 1 and err.startswith("epsweep: error: out of memory while training")
    assert err.endswith(f"; 4 of 12 finished settings saved to {partial} (finish with --output {partial} "
                        f"--resume)\n")
    assert not out.exists() and len(lines_of(partial)) == 4 and meta_path(partial).exists()

    # stopped again: the earlier partial file is never replaced; this stop's goes beside it
    before = partial.read_text(), meta_path(partial).read_text()
    assert main([*args, "-f", "json", "-o", str(out)]) == 2
    second = tmp_path / "f.partial-2.jsonl"
    assert capsys.readouterr().err.endswith(f"saved to {second} (finish with --output {second} --resume)\n")
    assert (partial.read_text(), meta_path(partial).read_text()) == before
    assert lines_of(second) == lines_of(partial) and meta_path(second).exists()

    monkeypatch.setattr(driver, "train_runs", real)
    assert main([*args, "-f", "jsonl", "-o", str(partial), "--resume"]) == 0
    reference = tmp_path / "reference.jsonl"
    assert main([*args, "-f", "jsonl", "-o", str(reference)]) == 0
    capsys.readouterr()
    assert lines_of(partial) == lines_of(reference) and len(lines_of(partial)) == 12


def test_run_differences_name_each_part_and_never_cut_a_whole_part_one_side_lacks():
    from epsweep.results.guard import differences

    image = {"task": "mlp", "data": {"name": "digits", "train": 1438, "val": 359, "input_shape": [8, 8, 1]}}
    quadratic = {"task": "quadratic", "data": None}
    assert differences(image, quadratic) == ['task "mlp" in the file, "quadratic" now',
                                             "data given in the file, none now"]
    assert differences(quadratic, image)[1] == "data none in the file, given now"
    assert differences({"steps": 30}, {"steps": 40}) == ["steps 30 in the file, 40 now"]
    assert differences(None, image) == ["run none in the file, given now"]


def test_the_saved_line_after_a_resume_says_what_the_file_holds(tmp_path, capsys):
    """A resumed file keeps the records of settings outside the new grid: the closing line
    counts them instead of claiming the file got only this grid's records."""
    out = str(tmp_path / "r.jsonl")
    quadratic = ["grid", "--task", "quadratic", "--steps", "3", "-f", "jsonl", "-o", out]
    assert main([*quadratic, "--eps", "1e-8", "1"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == f"wrote 2 records to {out}"
    assert main([*quadratic, "--eps", "1e-8", "1e-4", "--resume"]) == 0
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"{out} holds 2 records of this grid and 1 other it held before"
    assert len(lines_of(Path(out))) == 3


def test_an_output_that_cannot_be_opened_leaves_no_meta_behind(tmp_path, capsys):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)  # opening it fails (ELOOP) after training, where the meta used to be written first
    assert main(["grid", "--task", "quadratic", "--steps", "3", "-q", "-o", str(loop)]) == 2
    assert "Too many levels of symbolic links" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.jsonl"]


def test_resume_keeps_a_later_record_with_other_results_and_says_so(tmp_path, capsys):
    """The first record of a setting counts; a later one that differs (two files joined with
    cat, a hand edit) is results too: kept after the others, with a warning. An identical
    repeat carries nothing and goes."""
    out = tmp_path / "d.jsonl"
    quadratic = ["grid", "--task", "quadratic", "--steps", "3", "--eps", "1e-8", "1e-4", "-o", str(out)]
    assert main([*quadratic, "-q"]) == 0
    first, second = lines_of(out)
    edited = {**first, "final_loss": 999.0}
    with open(out, "a") as f:
        f.write(json.dumps(edited) + "\n" + json.dumps(second) + "\n")
    capsys.readouterr()
    assert main([*quadratic, "--resume", "-f", "jsonl"]) == 0
    err = capsys.readouterr().err
    assert "epsweep: warning: " in err
    assert "holds 1 later record(s) of settings it already had, with other results" in err
    assert lines_of(out) == [first, second, edited]


def test_any_error_mid_sweep_keeps_what_finished(quadratic_task, tmp_path):
    """Not only Ctrl-C and out of memory: a progress callback's own exception (or a
    MemoryError, a SystemExit) stops the sweep as it is, and the finished chunks of an output
    that is not streamed are saved for resume, named in a note on the exception."""
    from epsweep.results.writers import CsvWriter

    def failing(event):
        if event.saved >= 2:
            raise RuntimeError("a bug in the caller's callback")

    grid = Grid(eps=(1e-8, 1e-6, 1e-4, 1e-2, 0.1, 1.0))
    with pytest.raises(RuntimeError, match="a bug in the caller's callback") as raised:
        run(quadratic_task, grid, RunConfig(steps=5, chunk_size=2), writers=[CsvWriter(tmp_path / "m.csv")],
            progress=failing)
    partial = tmp_path / "m.partial.jsonl"
    assert raised.value.__notes__ == [f"epsweep: 2 of 6 settings had finished; they are in {partial} (resume it "
                                      f"to finish)"]
    assert len(lines_of(partial)) == 2 and not (tmp_path / "m.csv").exists()
    finished = run(quadratic_task, grid, RunConfig(steps=5, chunk_size=2), writers=[JsonlWriter(partial, resume=True)],
                   resume=True)
    assert finished.meta["resumed"] == 2 and len(lines_of(partial)) == 6


def test_a_whole_last_record_without_its_newline_is_read_and_resumed(uninterrupted, quadratic_task, tmp_path):
    """A file cut just before its last newline (by hand, or by another tool) holds every
    record whole: read them all, and a resume appends after a newline of its own."""
    full_path, full, _ = uninterrupted
    cut = tmp_path / "cut.jsonl"
    lines = full_path.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:5])[:-1])  # five records, the fifth without its newline
    shutil.copy(meta_path(full_path), meta_path(cut))
    loaded = read_stream(cut)
    assert len(loaded.records) == 5 and loaded.notes == [] and loaded.newline_missing
    resumed = stream_sweep(quadratic_task, QUAD_GRID, QUAD_CONFIG, cut, resume=True)
    assert resumed.meta["resumed"] == 5 and cut.read_text() == full_path.read_text()
    first = tmp_path / "first.jsonl"  # cut inside its first line (killed while writing the first chunk)
    first.write_text(lines[0][:40])
    shutil.copy(meta_path(full_path), meta_path(first))
    assert read_stream(first).records == [] and read_stream(first).valid_bytes == 0
    again = stream_sweep(quadratic_task, QUAD_GRID, QUAD_CONFIG, first, resume=True)
    assert again.meta["trained"] == 20 and first.read_text() == full_path.read_text()
    half = tmp_path / "half.jsonl"
    half.write_text("".join(lines[:5]) + lines[5][:40])  # cut mid-record: skipped with a note
    kept = read_stream(half)
    assert len(kept.records) == 5 and "skipped a truncated last line (line 6)" in kept.notes[0]


def test_ctrl_c_ends_a_sweep_blocked_on_an_output_no_one_reads(tmp_path):
    """A FIFO as --output blocks the open until a reader comes; Ctrl-C must still end the
    process at once (the exit waited for the open, as for a write to a file, forever)."""
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([EXE, "grid", "--task", "quadratic", "--steps", "3", "-q", "-o", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(6)  # started, planned, and (all but surely) blocked opening the FIFO
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:  # not left blocked on the FIFO when the test fails
        proc.kill()
    assert proc.returncode == 130 and stdout == "" and stderr.startswith("epsweep: interrupted"), stderr


def test_an_interrupted_sweep_says_what_it_kept_in_words():
    from epsweep.outcome import StopReport, SweepInterrupted

    stopped = SweepInterrupted(StopReport(2, 6, Path("a.partial.jsonl"), False))
    assert str(stopped) == ("interrupted: 2 of 6 settings had finished; they are in a.partial.jsonl (resume it "
                            "to finish)")
    assert str(SweepInterrupted(StopReport(0, 6, None, False))) == "interrupted: 0 of 6 settings had finished"


class ClosingFails(MemoryWriter):
    """A writer of the user's own whose close fails with an error of its own (not a UserError)."""

    def close(self, result):
        raise OSError("the share went away")


def test_a_writer_failing_to_close_leaves_the_other_outputs_written_and_the_records_in_the_error(tmp_path):
    """Training is done when the writers close: one writer's own error must not cost the
    others their files (nor leave their claim on the path), and the records travel with it."""
    from epsweep.outcome import WriteFailed
    from epsweep.results.writers import JsonWriter

    config = RunConfig(steps=5)
    with pytest.raises(WriteFailed, match="OSError: the share went away") as failed:
        run("quadratic", Grid(eps=(1e-8, 1.0)), config, writers=[ClosingFails(), JsonWriter(tmp_path / "out.json")])
    assert isinstance(failed.value.__cause__, OSError)
    assert [r["eps"] for r in failed.value.result.records] == [1e-8, 1.0]
    assert [r["eps"] for r in read_results(tmp_path / "out.json").records] == [1e-8, 1.0]
    again = run("quadratic", Grid(eps=(1e-8, 1.0)), config, writers=[JsonWriter(tmp_path / "out.json")])
    assert len(again.records) == 2  # the path was released


def test_a_float32_grid_resumed_by_the_same_values_as_floats_trains_nothing_again(tmp_path):
    path = tmp_path / "sweep.jsonl"
    config = RunConfig(steps=5)
    stream_sweep("quadratic", Grid(eps=np.array([1e-8, 1e-3], np.float32)), config, path)
    resumed = stream_sweep("quadratic", Grid(eps=(1e-8, 1e-3, 1.0)), config, path, resume=True)
    assert (resumed.meta["resumed"], resumed.meta["trained"]) == (2, 1)
    assert [r["eps"] for r in read_results(path).records] == [1e-8, 1e-3, 1.0]
    for fmt in ("JSONL", ".jsonl"):  # the format named as a user might write it
        assert read_results(path, fmt=fmt).records == read_results(path).records


def test_a_file_naming_a_setting_by_its_float32_expansion_is_resumed_by_the_typed_value(tmp_path):
    """Files written before values were taken as typed name np.float32(1e-8) 9.99999993922529e-09:
    one float32 with 1e-8, so one setting, found on resume rather than trained and written again."""
    path = tmp_path / "sweep.jsonl"
    stream_sweep("quadratic", Grid(eps=(9.99999993922529e-09,)), RunConfig(steps=5), path)
    resumed = stream_sweep("quadratic", Grid(eps=(1e-8, 1.0)), RunConfig(steps=5), path, resume=True)
    assert (resumed.meta["resumed"], resumed.meta["trained"]) == (1, 1)
    assert len(read_results(path).records) == 2
