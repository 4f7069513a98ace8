"""Scale: the configuration axis split across devices and processes gives the single-device
results; chunks follow the memory estimate; the persistent compilation cache is used."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from epsweep.config import RunConfig
from epsweep.engine import compiled, driver, memory, runtime
from epsweep.engine.driver import train_runs
from epsweep.engine.exports import exports_beside
from epsweep.engine.spec import HPARAMS, RunOutputs, TrainSpec
from epsweep.engine.state import program_input
from epsweep.errors import UserError
from epsweep.grid import Grid
from epsweep.runner import sweep
from epsweep.tasks import build_task

EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
SETTINGS = TrainSpec(steps=20, batch_size=16, curve_points=5)


def hparams(n):
    return {"eps": np.logspace(-8, 0, n), "decay": np.linspace(0.8, 0.99, n), "lr": np.full(n, 1e-2),
            "momentum": np.linspace(0.0, 0.5, n)}


def _env(**extra):
    """The environment for a subprocess: CPU, no inherited XLA_FLAGS, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def test_four_devices_equal_one_device():
    """Sharded over 4 forced host devices (a fresh process: XLA_FLAGS must precede JAX)."""
    script = textwrap.dedent("""
        import json, jax, numpy as np
        from epsweep.engine.driver import train_runs
        from epsweep.engine.spec import TrainSpec
        from epsweep.tasks import build_task
        task = build_task("mlp")
        s = TrainSpec(steps=20, batch_size=16, curve_points=5)
        n = 6
        h = {"eps": np.logspace(-8, 0, n), "decay": np.linspace(0.8, 0.99, n), "lr": np.full(n, 1e-2),
             "momentum": np.linspace(0.0, 0.5, n)}
        seeds = np.array([0, 3])
        # the same two settings per device either way; 6 settings over 4 devices pads to 8
        one = train_runs(task, s, h, seeds, devices=jax.devices()[:1], chunk_size=2)
        four = train_runs(task, s, h, seeds, chunk_size=8)
        print(json.dumps({"devices": len(jax.devices()), "one": [a.tolist() for a in one],
                          "four": [a.tolist() for a in four]}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for name, one, four in zip(RunOutputs._fields, out["one"], out["four"], strict=True):
        one, four = np.array(one, float), np.array(four, float)
        assert one.shape[:2] == (2, 6), name
        np.testing.assert_allclose(four, one, rtol=1e-6, atol=1e-7, err_msg=name)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(mlp_task):
    """Two localhost processes, one CPU device each: process 0 prints what one process trains."""
    assert EXE, "the epsweep executable is not installed"
    port = _free_port()
    args = ["grid", "--eps", "1e-8", "1e-3", "1", "--lr", "1e-2", "--steps", "20", "--batch-size", "16", "-f", "csv",
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--no-compile-cache"]
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen([EXE, *args, "--process-id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    (stdout0, stderr0), (stdout1, _) = outs
    assert stdout1 == ""  # only process 0 writes
    assert "[Gloo]" not in stdout0 and "trained 3 settings" in stderr0
    lines = stdout0.strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    reference = sweep(mlp_task, Grid(eps=(1e-8, 1e-3, 1.0), lr=(1e-2,)), RunConfig(steps=20, batch_size=16))
    assert [float(r["eps"]) for r in rows] == [r["eps"] for r in reference.records]
    for row, ref in zip(rows, reference.records, strict=True):
        for name in ("final_loss", "val_loss", "val_accuracy"):
            assert float(row[name]) == pytest.approx(ref[name], rel=1e-5, abs=1e-6), name


def test_processes_given_different_sweeps_stop_with_one_line_each():
    """Each process trains its part of the global grid: one given other values would train
    process 0's settings and drop its own without a word."""
    port = _free_port()
    args = ["grid", "--task", "quadratic", "--steps", "1", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
            "2", "--no-compile-cache"]
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
    grids = (["1e-8"], ["1e-8", "1"])
    procs = [subprocess.Popen([EXE, *args, "--process-id", str(i), "--eps", *eps], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i, eps in enumerate(grids)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2 and out == "", err
        assert err.splitlines()[-1] == ("epsweep: error: the processes were given different sweeps (their grids, "
                                        "tasks, data or training settings differ); start every process with the same "
                                        "command"), err


def test_peak_bytes_counts_what_is_live_at_once_not_every_value():
    """A chain frees each value after its last use; a value read later stays; a called jaxpr's
    own peak counts while it runs; the inputs are the caller's (1,000 float32 = 4,000 bytes)."""
    x = jnp.zeros(1000, jnp.float32)

    def chain(x):  # four values made, never more than two live
        return ((x * 2 + 1) * 3) - 4

    def kept(x):  # y is read again at the end: y, z and w live together
        y = x * 2
        z = y + 1
        return z * y

    def nested(x):  # the jitted chain's own peak (2 values) beside the y kept around it
        y = x * 2
        return jax.jit(chain)(x) + y

    assert memory.peak_bytes(jax.make_jaxpr(chain)(x).jaxpr) == 2 * 4000
    assert memory.peak_bytes(jax.make_jaxpr(kept)(x).jaxpr) == 3 * 4000
    assert memory.peak_bytes(jax.make_jaxpr(nested)(x).jaxpr) == 4 * 4000  # y, the chain's two, its result


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_memory_estimate_bounds_what_xla_allocates(name, request):
    """The per-configuration estimate covers XLA's own buffer assignment, without wild excess
    (the cnn: vmapped settings make its convolutions grouped ones, with temporaries of their own)."""
    task = request.getfixturevalue("mlp_task") if name == "mlp" else build_task("cnn", "digits", 0.2)
    settings = TrainSpec(steps=5, batch_size=32)
    est = memory.estimate(task, settings)
    one = jax.devices()[:1]
    programs = compiled.sharded_programs(task, settings, one)  # shape-generic: lowered at two widths
    x_val, y_val, mask = driver.validation_batches(task, settings.eval_batch_size)
    used = {}
    for g in (2, 10):
        h = {k: jnp.zeros((g,), jnp.float32) for k in HPARAMS}
        seeds = jnp.zeros((1,), jnp.uint32)
        state = jax.eval_shape(programs["init"], h, seeds, None)
        sums = jnp.zeros((1, g), jnp.float32)
        lowered = {
            "init": programs["init"].lower(h, seeds, None),
            "train": programs["train"].lower(state, h, seeds, 0, 5, task.data.x_train, task.data.y_train),
            "evaluate": programs["evaluate"].lower(program_input("evaluate", state), sums, sums, x_val[0], y_val[0],
                                                   mask[0]),
            "finish": programs["finish"].lower(program_input("finish", state), sums, sums, 359.0),
        }
        used[g] = {}
        for program, low in lowered.items():
            m = low.compile().memory_analysis()
            used[g][program] = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
                             - m.alias_size_in_bytes)
            if program == "train":  # looped, the state is donated; loop-free not: see _train_donate_argnums
                assert (m.alias_size_in_bytes > 0) == (not compiled._loop_free(task, one)), m.alias_size_in_bytes
    per_config = max((used[10][program] - used[2][program]) / 8 for program in used[2])
    print(f"{name}: estimate {est.per_config} bytes a setting, XLA {per_config:.0f}")
    assert per_config <= est.per_config <= 4 * per_config
    assert est.fixed >= task.data.x_train.nbytes


def test_plan_width_follows_the_budget_never_the_grid(mlp_task, monkeypatch):
    """Settings per call: what fits the memory budget and the cache of the cores a CPU device runs on,
    rounded down to a power of two per device, whatever the grid's size."""
    devices = jax.devices()[:1] * 2  # two (aliased) devices: only the count matters here
    est = memory.Estimate(per_config=1000, state=10, fixed=500)
    monkeypatch.setattr(memory, "estimate", lambda task, spec: est)
    monkeypatch.setattr(memory, "device_budget", lambda d: 500 + 3 * 1000)  # room for 3 per device
    monkeypatch.setattr(memory, "cache_bytes_per_core", lambda: 10**9)
    monkeypatch.setattr(memory, "available_cores", lambda: 1)  # a CPU device per core
    assert memory.plan_width(mlp_task, SETTINGS, devices) == 2 * 2  # 3 per device, down to a power of two
    assert memory.plan_width(mlp_task, SETTINGS, devices, chunk_size=5) == 6  # rounded up to the devices
    est = memory.Estimate(per_config=1, state=10, fixed=0)  # the budget allows any number
    copies = memory.CACHE_STATE_COPIES
    monkeypatch.setattr(memory, "cache_bytes_per_core", lambda: copies * 10 * 5)  # the cache holds 5 settings
    assert memory.plan_width(mlp_task, SETTINGS, devices) == 2 * 4
    monkeypatch.setattr(memory, "cache_bytes_per_core", lambda: copies * 10 * 2)  # 2: the CPU minimum wins
    assert memory.plan_width(mlp_task, SETTINGS, devices) == 2 * memory.CPU_MIN_PER_DEVICE
    cpu_devices = len(jax.local_devices(backend="cpu"))
    monkeypatch.setattr(memory, "cache_bytes_per_core", lambda: copies * 10 * 5)
    monkeypatch.setattr(memory, "available_cores", lambda: 4 * cpu_devices)  # a device on 4 cores: 4 cores' cache
    assert memory.plan_width(mlp_task, SETTINGS, devices) == 2 * 16  # 20 fit, down to a power of two
    monkeypatch.setattr(memory, "cache_bytes_per_core", lambda: 10**12)  # only the cap is left
    assert memory.plan_width(mlp_task, SETTINGS, devices) == 2 * memory.MAX_PER_DEVICE
    one_at_a_time = dataclasses.replace(mlp_task, settings_per_cpu_device=1)  # a model best run one at a time
    assert memory.plan_width(one_at_a_time, SETTINGS, devices) == 2


@pytest.mark.parametrize("levels, expected_mib", [
    ([(1, 48 << 10, 1), (2, 1 << 20, 1), (3, 32 << 20, 2)], 1 + 16),  # Zen 5 guest: L3 shared by 2
    ([(1, 48 << 10, 1), (2, 2 << 20, 1), (3, 480 << 20, 2)], 2 + 16),  # Xeon guest reporting its host's L3: capped
    ([(1, 48 << 10, 1), (2, 2 << 20, 1), (3, 105 << 20, 56)], 2 + 105 / 56),  # a whole 56-core Xeon
    ([(1, 32 << 10, 1)], 1),  # no L2 reported: the default L2, no L3
])
def test_cache_per_core_is_l2_plus_a_plausible_l3_share(levels, expected_mib, monkeypatch):
    """A core's cache: its L2 plus its share of L3, never more L3 than a core can have to itself."""
    monkeypatch.setattr(memory, "_cache_levels", lambda: levels)
    assert memory.cache_bytes_per_core() == pytest.approx(expected_mib * 2**20, rel=1e-6)


def test_a_guest_reporting_its_hosts_l3_plans_the_width_of_a_real_core(mlp_task, monkeypatch):
    """The Intel Xeon guest's sysfs (2 MiB L2, 480 MiB L3 "shared" by 2 CPUs) gives the default MLP
    32 settings per core, as the Zen 5 (1 MiB L2, 32 MiB L3 for 2) does; taken at its word it gave
    every call 1,024 settings, whatever the grid."""
    devices = jax.devices()[:1] * 2  # two (aliased) devices: only the count matters here
    monkeypatch.setattr(memory, "available_cores", lambda: len(jax.local_devices(backend="cpu")))  # a core each
    for l2, l3 in ((2, 480), (1, 32)):
        levels = [(1, 48 << 10, 1), (2, l2 << 20, 1), (3, l3 << 20, 2)]
        monkeypatch.setattr(memory, "_cache_levels", lambda levels=levels: levels)
        assert memory.plan_width(mlp_task, SETTINGS, devices) == 2 * 32


def test_auto_chunks_equal_one_chunk(mlp_task, monkeypatch):
    """A grid larger than the budget allows is trained in several calls, with the same results."""
    h = hparams(5)
    one = jax.devices()[:1]
    whole = train_runs(mlp_task, SETTINGS, h, np.array([0]), chunk_size=5, devices=one)
    est = memory.estimate(mlp_task, SETTINGS)
    monkeypatch.setattr(memory, "device_budget", lambda d: est.fixed + 2 * est.per_config)
    calls = []
    split = train_runs(mlp_task, SETTINGS, h, np.array([0]), on_chunk=lambda a, b, out: calls.append((a, b)),
                       devices=one)
    assert calls == [(0, 2), (2, 4), (4, 5)]
    for name in RunOutputs._fields:
        np.testing.assert_allclose(getattr(split, name), getattr(whole, name), rtol=2e-5, atol=1e-6, err_msg=name)


def test_compile_cache_serves_a_rerun_with_new_values(tmp_path):
    assert EXE, "the epsweep executable is not installed"
    cache = tmp_path / "cache"
    base = ["grid", "--task", "toy", "--steps", "5", "-f", "json", "-q"]

    def run(*extra, **env):
        r = subprocess.run([EXE, *base, *extra], capture_output=True, text=True, timeout=300,
                           env=_env(EPSWEEP_COMPILE_CACHE=str(cache), **env))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["meta"]

    first = run("--eps", "1e-8", "1")
    assert first["compilations"] > 0 and any(cache.iterdir())
    entries = sorted(p.name for p in cache.iterdir())
    second = run("--eps", "1e-3", "0.5")
    assert second["compilations"] == 0 and second["compile_cache_loads"] > 0
    off = run("--eps", "1e-4", "0.25", "--no-compile-cache")
    assert off["compilations"] > 0 and off["compile_cache_loads"] == 0
    assert sorted(p.name for p in cache.iterdir()) == entries  # --no-compile-cache wrote nothing


def _cache_run(cache, *extra, tmp=None, results=False):
    """The quadratic task through the executable with ``cache``: (stderr lines, meta), and
    with ``results`` the runs' rows too."""
    env = _env(EPSWEEP_COMPILE_CACHE=str(cache), **({"TMPDIR": str(tmp)} if tmp else {}))
    r = subprocess.run([EXE, "grid", "--task", "quadratic", "--steps", "3", "-f", "json", *extra],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return (r.stderr.splitlines(), out["meta"], *((out["results"],) if results else ()))


@dataclasses.dataclass(frozen=True)
class FilledCache:
    """The quadratic task's compilation cache filled once per module, kept as two snapshots:
    ``plain`` by one run (its meta ``first``, its rows ``rows``), ``both`` by that run and
    one of 4 settings a call (``other_train``: the name of that width's train entry)."""

    path: Path
    snapshots: Path
    first: dict
    rows: list
    other_train: str

    def restore(self, which: str) -> Path:
        """``path`` holding the ``plain`` or ``both`` snapshot again, for a test to damage. The
        path never changes: JAX's key of a program holds its cache directory's path."""
        for cache in (self.path, exports_beside(self.path)):
            shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(self.snapshots / which, self.path)
        shutil.copytree(exports_beside(self.snapshots / which), exports_beside(self.path))
        return self.path


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    path, snapshots = root / "cache", root / "snapshots"

    def snapshot(which: str) -> None:
        shutil.copytree(path, snapshots / which)
        shutil.copytree(exports_beside(path), exports_beside(snapshots / which))

    _, first, rows = _cache_run(path, results=True)
    snapshot("plain")
    plain = set(path.glob("*-cache"))
    _, other = _cache_run(path, "--chunk-size", "4")  # the same programs, 4 settings a call
    assert other["compilations"] > 0
    snapshot("both")
    (other_train,) = set(path.glob("jit_epsweep_train-*-cache")) - plain
    return FilledCache(path, snapshots, first, rows, other_train.name)


def _unwritable_directory(tmp_path):
    """A directory that exists but cannot be written, even by root (who ignores permissions)."""
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        (locked / "probe").touch()
    except OSError:
        return locked
    for candidate in ("/sys/kernel", "/proc/1"):
        if Path(candidate).is_dir() and not os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
        try:
            (Path(candidate) / "epsweep-probe").touch()
        except OSError:
            return Path(candidate)
    pytest.skip("no directory here refuses writes")


def test_an_unwritable_cache_costs_one_line_once_and_runs_without_it(tmp_path):
    directory = _unwritable_directory(tmp_path)
    state = tmp_path / "tmp"  # where "said once" is remembered: a fresh one
    state.mkdir()
    err, meta = _cache_run(directory, tmp=state)
    assert err[0].startswith(f"epsweep: warning: compilation cache off: cannot write in {directory} (")
    assert err[0].endswith("; runs go without it (said once: set EPSWEEP_COMPILE_CACHE to a writable directory, "
                           "or to off)")
    assert len(err) == 2 and err[1].startswith("trained 2 settings"), err  # no JAX warnings, no lock waits
    assert meta["compile_cache_loads"] == 0 and meta["compilations"] > 0
    err, meta = _cache_run(directory, tmp=state)  # the next run: no cache, and not a word about it
    assert len(err) == 1 and err[0].startswith("trained 2 settings"), err
    assert meta["compile_cache_loads"] == 0 and meta["compilations"] > 0
    (tmp_path / "a_file").write_text("not a directory")
    err, _ = _cache_run(tmp_path / "a_file", tmp=state)
    assert err[0].startswith(f"epsweep: warning: compilation cache off: {tmp_path / 'a_file'} is not a directory;")
    assert len(err) == 2


def test_a_quiet_run_does_not_use_up_the_once_only_warning(tmp_path):
    """--quiet hides the warning that the cache is off; the next run that is not quiet says it."""
    state = tmp_path / "tmp"
    state.mkdir()
    (tmp_path / "a_file").write_text("not a directory")
    err, _ = _cache_run(tmp_path / "a_file", "-q", tmp=state)
    assert err == []
    err, _ = _cache_run(tmp_path / "a_file", tmp=state)
    assert err[0].startswith("epsweep: warning: compilation cache off:") and len(err) == 2, err
    err, _ = _cache_run(tmp_path / "a_file", tmp=state)
    assert len(err) == 1, err


def test_a_corrupt_cache_entry_is_replaced_after_one_warning(filled_cache):
    cache, first = filled_cache.restore("plain"), filled_cache.first
    entries = sorted(cache.glob("*-cache"))
    assert first["compilations"] == len(entries) > 0
    entries[0].write_bytes(b"not a compiled program")  # a corrupt entry, as a crash mid-write leaves one
    entries[1].write_bytes(entries[1].read_bytes()[:100])  # a truncated one
    err, second = _cache_run(cache)
    assert len(err) == 2 and err[0].startswith("epsweep: warning: compilation cache: an entry for "), err
    assert "could not be read" in err[0] and "compiled again" in err[0]
    assert second["compilations"] == 2 and second["compile_cache_loads"] == len(entries) - 2
    err, third = _cache_run(cache)  # the programs compiled in their place were saved
    assert len(err) == 1 and err[0].startswith("trained 2 settings"), err
    assert third["compilations"] == 0 and third["compile_cache_loads"] == len(entries)


def test_entries_swapped_between_programs_are_replaced_after_one_warning(filled_cache):
    """An entry holding another program (files renamed or copied over each other) is not
    loaded: JAX would fail on it with an AssertionError and a traceback. Both entries go,
    once, with one warning; the run's numbers are those of a run from scratch."""
    cache, first, rows = filled_cache.restore("plain"), filled_cache.first, filled_cache.rows
    (init,), (train,) = cache.glob("jit_epsweep_init-*-cache"), cache.glob("jit_epsweep_train-*-cache")
    init_bytes = init.read_bytes()
    init.write_bytes(train.read_bytes())
    train.write_bytes(init_bytes)
    err, second, again = _cache_run(cache, results=True)
    assert again == rows
    assert len(err) == 2 and err[0].startswith("epsweep: warning: compilation cache: an entry for jit_epsweep_"), err
    assert "the entry holds the program jit_epsweep_" in err[0] and "removed 1 unreadable entry" in err[0], err
    assert second["compilations"] == 2 and second["compile_cache_loads"] == first["compilations"] - 2
    err, third = _cache_run(cache)
    assert len(err) == 1 and third["compilations"] == 0, err


@pytest.mark.parametrize("damage", ["decompresses, does not load", "a directory", "its access time a directory"])
def test_an_unreadable_cache_entry_goes_alone(damage, filled_cache):
    """One program's entry that cannot be read (data that decompresses but does not load,
    a directory in place of the entry or of its access time) is the only entry removed:
    the same program at another width keeps its own, and every run after the next compiles
    nothing."""
    from jax._src.compilation_cache import compress_executable, decompress_executable

    cache = filled_cache.restore("both")
    kept = cache / filled_cache.other_train  # the train program at 4 settings a call
    (entry,) = set(cache.glob("jit_epsweep_train-*-cache")) - {kept}
    entries = len(list(cache.glob("*-cache")))
    if damage == "a directory":
        entry.unlink()
        entry.mkdir()
    elif damage == "its access time a directory":
        stamp = entry.with_name(entry.name.replace("-cache", "-atime"))
        stamp.unlink()
        stamp.mkdir()
    else:
        data = decompress_executable(entry.read_bytes())
        entry.write_bytes(compress_executable(data[: len(data) // 2]))
    err, second = _cache_run(cache)
    assert len(err) == 2 and "jit_epsweep_train" in err[0] and "removed 1 unreadable entry" in err[0], err
    assert second["compilations"] == 1 and kept.is_file()
    assert len(list(cache.glob("*-cache"))) == entries
    for extra in ((), ("--chunk-size", "4")):
        err, again = _cache_run(cache, *extra)
        assert len(err) == 1 and again["compilations"] == 0, err


def test_the_entry_jax_failed_on_goes_even_when_another_was_read_since(tmp_path):
    """Another process may read (stamp) or write an entry of the same program between JAX's
    failed read and the warning: the guard removes the entry whose key the failed read noted,
    whatever the others' stamps or contents."""
    from epsweep.engine.cache import _CacheGuard

    for name, stamp in (("bad", 1), ("healthy", 2), ("half-written", 3)):
        (tmp_path / f"jit_epsweep_train-{name}-cache").write_bytes(b"not zstd")
        (tmp_path / f"jit_epsweep_train-{name}-atime").write_bytes(stamp.to_bytes(8, "little"))
    guard = _CacheGuard()
    guard.directory = tmp_path
    assert guard.remove_unreadable("jit_epsweep_train", "jit_epsweep_train-bad") == 1
    assert sorted(p.name for p in tmp_path.glob("jit_*")) == [
        "jit_epsweep_train-half-written-atime", "jit_epsweep_train-half-written-cache",
        "jit_epsweep_train-healthy-atime", "jit_epsweep_train-healthy-cache"]


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("EPSWEEP_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.default_cache_dir() == tmp_path / "epsweep" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert runtime.default_cache_dir() == Path.home() / ".cache" / "epsweep" / "jax"
    for off in ("off", "0", "false", "No", "NONE", " none ", ""):
        monkeypatch.setenv("EPSWEEP_COMPILE_CACHE", off)
        assert runtime.default_cache_dir() is None, off
    monkeypatch.setenv("EPSWEEP_COMPILE_CACHE", "./none")
    assert runtime.default_cache_dir() == Path("none")


def test_launcher_detection(monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert runtime.launcher_process_count() == 1  # an allocation, but not inside srun
    assert not runtime.Runtime().distributed
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert runtime.launcher_process_count() == 4 and runtime.Runtime().distributed
    assert not runtime.Runtime(num_processes=1).distributed  # flags win over the environment


@pytest.mark.parametrize("kwargs, message", [
    ({"num_processes": 2, "process_id": 2}, "process_id"),
    ({"num_processes": 0}, "num_processes"),
    ({"coordinator": "no port"}, "coordinator"),
    ({"coordinator": "127.0.0.1:99999"}, "port 99999 is not a TCP port"),
])
def test_bad_process_flags_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        runtime.Runtime(**kwargs)


@pytest.mark.parametrize("host", ["", "127.0.0.1"])
def test_process_0_refuses_a_port_something_else_listens_on(host):
    """JAX would serve the others at [::]:port; gRPC fails to add a port that is taken, and the
    process then crashes (a segmentation fault, exit 139): said first, in one line."""
    from epsweep.engine.devices import check_coordinator_port

    with socket.create_server((host, 0)) as taken:  # as `python3 -m http.server PORT` would
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"at localhost:{port} .*something else listens there"):
            check_coordinator_port(f"localhost:{port}")
    check_coordinator_port(f"localhost:{port}")  # free again


def test_a_jax_environment_value_jax_refuses_is_one_line_naming_the_variable(monkeypatch):
    from jax._src import config

    monkeypatch.setenv("JAX_EPSWEEP_PROBE", "xyz")
    for read, named in ((lambda: config.int_env("JAX_EPSWEEP_PROBE", 0), " (from the environment variable "
                         "JAX_EPSWEEP_PROBE)"), (lambda: config.bool_env("JAX_EPSWEEP_PROBE", False), "")):
        with pytest.raises(ValueError) as raised:  # as JAX raises it when it defines its flags
            read()
        error = runtime.jax_environment_error(raised.value)
        assert isinstance(error, UserError) and str(error).startswith("JAX cannot start: ") and "'xyz'" in str(error)
        assert str(error).endswith(named) and str(error).count("JAX_EPSWEEP_PROBE") == 1
    assert runtime.jax_environment_error(ValueError("Invalid value \"x\" for JAX flag jax_x")) is None  # not JAX's


def test_cli_refuses_bad_process_flags():
    r = subprocess.run([EXE, "grid", "--num-processes", "2", "--process-id", "5"], capture_output=True, text=True,
                       timeout=120, env=_env())
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["epsweep: error: --process-id: 5 must be below --num-processes 2"]


def test_a_device_count_asked_for_too_late_is_said_not_dropped_silently(caplog):
    import logging

    import epsweep

    have = len(jax.devices("cpu"))  # JAX has started: its device count is fixed
    with caplog.at_level(logging.WARNING, logger="epsweep.engine.devices"):
        epsweep.setup(cpu_devices=have)  # what it has: nothing to say
        assert not caplog.records
        epsweep.setup(cpu_devices=have + 1)
    assert f"cpu_devices={have + 1} is not applied" in caplog.text
