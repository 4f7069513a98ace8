"""The CLI end to end, through the installed ``epsweep`` executable and in-process."""

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from epsweep.cli import main

EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
FAST = ["--steps", "20", "--batch-size", "16"]
NUMERIC = ("eps", "decay", "lr", "momentum", "final_loss", "val_loss", "val_accuracy")


def run(*args, stdin=None):
    assert EXE, "the epsweep executable is not installed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([EXE, *args], input=stdin, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def csv_run():
    return run("grid", "--eps", "1e-8", "1", "--lr", "1e-2", *FAST, "--format", "csv")


def test_literal_multi_value_flags_and_csv_parse_back(csv_run):
    assert csv_run.returncode == 0, csv_run.stderr
    rows = list(csv.DictReader(io.StringIO(csv_run.stdout)))
    assert [float(r["eps"]) for r in rows] == [1e-8, 1.0]
    for row in rows:
        assert row["convention"] == "optax" and row["diverged"] == "False" and row["seeds"] == "1"
        assert 0 <= float(row["val_accuracy"]) <= 1 and float(row["final_loss"]) > 0
    assert "Traceback" not in csv_run.stderr


def test_jsonl_with_ranges_stdin_and_several_conventions():
    out = run("grid", "--eps", "-", "--decay", "0.9,0.99", "--convention", "optax", "pytorch", *FAST,
              "-f", "jsonl", "--quiet", stdin="1e-8\n1e-2 1\n")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 3 * 2 * 2
    assert {r["convention"] for r in records} == {"optax", "pytorch"}
    assert {r["eps"] for r in records} == {1e-8, 1e-2, 1.0}
    assert all(len(r["loss_curve"]) == 20 for r in records)
    assert out.stderr == ""  # --quiet: nothing on stderr


def test_json_meta_and_output_file(tmp_path):
    target = tmp_path / "sweep.json"
    out = run("grid", "--eps", "log:1e-8:1:3", *FAST, "--seeds", "2", "--output", str(target))
    assert out.returncode == 0, out.stderr
    document = json.loads(target.read_text())
    meta = document["meta"]
    assert meta["task"] == "mlp" and meta["steps"] == 20 and meta["seeds"] == [0, 1]
    assert meta["data"]["name"] == "digits" and meta["devices"] and meta["versions"]["jax"]
    assert len(document["results"]) == 3 and all(r["final_loss_std"] is not None for r in document["results"])
    assert "val acc" in out.stdout  # the table still goes to stdout


def test_python_dash_m_and_quadratic_task():
    out = subprocess.run([sys.executable, "-m", "epsweep", "grid", "--task", "quadratic", "--steps", "30",
                          "--lr", "0.1", "--eps", "1e-8", "1", "-f", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert all(r["val_accuracy"] is None and r["val_loss"] is None for r in results)
    assert results[0]["final_loss"] < 4.5**2  # it moved downhill


@pytest.mark.parametrize("args, message", [
    (["--eps", "-1"], "--eps: -1 is out of range"),
    (["--decay", "1"], "--decay: 1 is out of range"),
    (["--lr", "0"], "--lr: 0 is out of range"),
    (["--eps", "1e-8,abc"], "'abc' is not a number"),
    (["--steps", "0"], "--steps: 0 must be a positive integer"),
    (["--task", "resnet"], "unknown task 'resnet'"),
    (["--dataset", "/no/such/file.npz"], "no such file or directory"),
    (["--convention", "jax"], "unknown convention 'jax'"),
    (["--steps", "5", "--epochs", "1"], "not both"),
    (["--format", "xml"], "unknown format 'xml'"),
    (["--output", "/no/such/dir/out.csv"], "does not exist"),
    (["--bogus"], "No such option"),
    (["--eps"], "requires an argument"),
    (["--steps", "9x" * 1000], f"--steps: '{'9x' * 20}'… (2,000 characters) is not a whole number"),
    (["--convention", "z" * 1000], f"--convention: unknown convention '{'z' * 40}'… (1,000 characters); choose"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    code = main(["grid", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_input_through_the_executable():
    out = run("grid", "--eps", "nan")
    assert out.returncode == 2 and out.stderr.strip() == "epsweep: error: --eps: 'nan' is not a finite number"
    assert out.stdout == ""


def test_help_is_an_example_of_itself(capsys):
    assert main(["grid", "--help"]) == 0
    assert "Example: epsweep grid --eps 1e-8 1" in capsys.readouterr().out


def test_in_process_table(capsys):
    assert main(["grid", "--eps", "1e-8", "1", "--lr", "1e-2", *FAST, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "★" in out and "val acc" in out and "1e-8" in out


@pytest.mark.parametrize("message", [
    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 99.00GiB.\nmore",  # a GPU's allocator
    "INTERNAL: Error dispatching computation: Out of memory allocating 25600000000 bytes.",  # XLA's CPU backend
])
def test_out_of_device_memory_is_one_line_not_a_traceback(message, monkeypatch, capsys):
    """A device that runs out of memory (sizes the user chose) exits 2 with advice."""
    from jax.errors import JaxRuntimeError

    from epsweep.engine import driver

    def exhausted(*args, **kwargs):
        raise JaxRuntimeError(message)

    monkeypatch.setattr(driver, "train_runs", exhausted)
    assert main(["grid", "--task", "quadratic", "--steps", "3", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"epsweep: error: out of memory while training: {message[:30]}")
    assert "--batch-size" in err[0]


def test_a_setting_bigger_than_the_memory_budget_is_warned_about(monkeypatch, capsys, caplog):
    import logging
    import types

    import jax
    import numpy as np

    from epsweep.engine import driver, memory
    from epsweep.engine.spec import TrainSpec
    from epsweep.tasks import build_task

    devices = jax.devices()[:1]
    monkeypatch.setattr(memory, "device_budget", lambda device: 1000)
    monkeypatch.setattr(memory, "estimate", lambda task, spec: memory.Estimate(per_config=5 * 1024**3, state=1,
                                                                                fixed=0))
    with caplog.at_level(logging.WARNING, logger="epsweep"):
        assert memory.plan_width(build_task("quadratic"), TrainSpec(steps=1, batch_size=1), devices) == 1
    assert "needs about 5.0 GiB by the memory estimate" in caplog.text
    # a task trained one setting per CPU device is not estimated (the model is not traced again):
    # the sweep checks XLA's own figures, init's before its first call, the others before the first step
    caplog.clear()
    one_each = dataclasses.replace(build_task("quadratic"), settings_per_cpu_device=1)
    spec = TrainSpec(steps=2, batch_size=1)
    monkeypatch.setattr(memory, "estimate", lambda task, spec: pytest.fail("estimated"))
    assert memory.plan_width(one_each, spec, devices) == 1
    h = {name: np.full(1, value, np.float32) for name, value in
         {"eps": 1e-8, "lr": 1e-2, "decay": 0.9, "momentum": 0.0}.items()}
    warned = {}
    for budget in (10 * 1024**3, 1):
        monkeypatch.setattr(memory, "device_budget", lambda device, budget=budget: budget)
        with caplog.at_level(logging.WARNING, logger="epsweep"):
            driver.train_runs(one_each, spec, h, np.array([0]), devices=devices)
        warned[budget] = [r.getMessage() for r in caplog.records]
        caplog.clear()
    assert warned[10 * 1024**3] == []
    assert len(warned[1]) == 1 and "while its init program runs (XLA's figure" in warned[1][0], warned

    # the arithmetic: the state (init's outputs) and the data stay on the device; each program adds
    # its temporaries and its outputs less the donated inputs they reuse
    def program(out, temp, alias=0):
        stats = types.SimpleNamespace(argument_size_in_bytes=99, output_size_in_bytes=out, alias_size_in_bytes=alias,
                                      temp_size_in_bytes=temp)
        return types.SimpleNamespace(memory_stats=lambda: stats)

    programs = types.SimpleNamespace(init=program(out=100, temp=50), train=program(out=100, temp=30, alias=100),
                                     evaluate=None, finish=program(out=4, temp=40), measure=None)
    rest = ("train", "evaluate", "finish", "measure")
    for budget, names, expected in [(1000 + 100 + 150, ("init",), False), (1000 + 100 + 149, ("init",), True),
                                    (1000 + 100 + 44, rest, False), (1000 + 100 + 43, rest, True)]:
        monkeypatch.setattr(memory, "device_budget", lambda device, budget=budget: budget)
        with caplog.at_level(logging.WARNING, logger="epsweep"):
            assert memory.check_fits(one_each, devices, 1, programs, 1000, names) is expected, (budget, names)
    assert "while its finish program runs" in caplog.records[-1].getMessage()
    # a chunk size the user chose is not estimated either: checked the same way, for its settings per device
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="epsweep"):
        assert memory.check_fits(one_each, devices, 2, programs, 1000, rest)
    assert "2 settings per device need about" in caplog.records[-1].getMessage()
    chosen = build_task("quadratic")
    h2 = {name: np.repeat(values, 2) for name, values in h.items()}
    for budget in (10 * 1024**3, 1):
        monkeypatch.setattr(memory, "device_budget", lambda device, budget=budget: budget)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="epsweep"):
            driver.train_runs(chosen, spec, h2, np.array([0]), devices=devices, chunk_size=2)
        warned[budget] = [r.getMessage() for r in caplog.records]
    assert warned[10 * 1024**3] == []
    assert len(warned[1]) == 1 and warned[1][0].startswith("2 settings per device need about"), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="epsweep"):  # one setting a device: no advice to lower it
        driver.train_runs(chosen, spec, h, np.array([0]), devices=devices, chunk_size=1)
    assert [r.getMessage()[:36] for r in caplog.records] == ["one setting needs about 0 MiB per de"]
    # a width the estimate planned passes: the MLP, the budget of exactly its 4 settings by the estimate
    monkeypatch.undo()
    mlp, mlp_spec = build_task("mlp"), TrainSpec(steps=2, batch_size=32)
    est = memory.estimate(mlp, mlp_spec)
    monkeypatch.setattr(memory, "device_budget", lambda device: est.fixed + 4 * est.per_config)
    assert memory.plan_width(mlp, mlp_spec, devices) == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="epsweep"):
        driver.train_runs(mlp, mlp_spec, {k: np.repeat(v, 4) for k, v in h.items()}, np.array([0]), devices=devices)
    assert caplog.records == []


def test_a_batch_larger_than_the_training_set_is_said(tmp_path):
    """--batch-size above the training examples trains on all of them a step, and says so on
    stderr (it was clamped without a word); the results' batch size is the one trained with."""
    import numpy as np

    data = tmp_path / "small.npz"
    np.savez(data, x=np.random.default_rng(0).random((20, 4), dtype=np.float32), y=np.arange(20) % 2)
    done = subprocess.run([EXE, "grid", "--dataset", str(data), "--steps", "2", "--batch-size", "64", "--eps",
                           "1e-8", "-f", "json"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    out, err = done.stdout, done.stderr
    train = json.loads(out)["meta"]["data"]["train"]
    assert f"epsweep: warning: batch size 64 is more than the {train} training examples: every step takes " \
           f"all {train}\n" in err
    assert json.loads(out)["meta"]["batch_size"] == train


def test_values_of_an_axis_no_optimizer_reads_are_warned_about(capsys):
    """sgd reads no eps: eps values given with it would vanish from the table without a word."""
    args = ["grid", "--task", "quadratic", "--optimizer", "sgd", "--steps", "2", "-f", "csv"]
    assert main([*args, "--eps", "1e-8", "1e-4"]) == 0
    assert "epsweep: warning: sgd does not use eps: the eps values given are ignored" in capsys.readouterr().err
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err


EXITING = """import atexit, concurrent.futures, ctypes, sys, threading
from pathlib import Path

from epsweep.__main__ import exit_without_teardown

atexit.register(lambda: print("said at exit", file=sys.stderr))
pool = concurrent.futures.ThreadPoolExecutor(1)  # never shut down
pool.submit(lambda: 1)


def late():
    threading.main_thread().join()
    Path(sys.argv[1]).write_text("after the main thread")


threading.Thread(target=late).start()
print("buffered", end="")
ctypes.CDLL(None).printf(b"from C")  # C's own buffer, on a pipe
exit_without_teardown(3)
"""


@pytest.mark.parametrize("stdout", ["pipe", "full"])
def test_the_executable_exit_without_teardown_ends_as_python_would(stdout, tmp_path):
    """epsweep/__main__.exit_without_teardown: pools stopped, threads joined (one waits for
    the main thread), exit functions run, Python's and C's buffers flushed, the code kept; a
    standard output that cannot be flushed (a full disk) takes Python's own exit, which says so."""
    script = tmp_path / "exiting.py"
    script.write_text(EXITING)
    late = tmp_path / "late.txt"
    with open("/dev/full", "w") if stdout == "full" else contextlib.nullcontext(subprocess.PIPE) as out:
        done = subprocess.run([sys.executable, str(script), str(late)], stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert late.read_text() == "after the main thread"
    assert "said at exit" in done.stderr, done.stderr
    if stdout == "pipe":
        assert done.returncode == 3 and done.stdout == "bufferedfrom C", (done.stdout, done.stderr)
    else:
        assert done.returncode == 120 and "No space left on device" in done.stderr, done.stderr
