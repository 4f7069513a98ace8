"""Results on standard output arrive whole or are kept: a write that goes through in part (a
full disk, ``ulimit -f``, a reader gone mid-way) and a Ctrl-C while a slow reader takes them
are said in one line naming where the results are; Ctrl-C before training (while JAX imports)
is one line and exit code 130, never a traceback or an abort. Through the installed executable."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epsweep.results.reading import read_results

EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
MANY = ["grid", "--task", "quadratic", "--steps", "5", "--eps", "log:1e-10:1:1000", "-q"]  # about 1 MB of jsonl


def env(tmp_path: Path) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TMPDIR": str(tmp_path)}


def kept(stderr: str, pattern: str) -> Path:
    """The file a one-line message says the results were saved to."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    found = re.fullmatch(pattern + r"(\S+)", lines[0])
    assert found, stderr
    return Path(found.group(1))


def limited(limit: int, *command: str) -> list[str]:
    """``command`` run with files limited to ``limit`` bytes (``ulimit -f``; no preexec_fn,
    which forks the test process, JAX's threads and all)."""
    return ["bash", "-c", f'ulimit -f {limit // 1024}; exec "$@"', "bash", *command]


def test_a_stdout_write_cut_short_by_a_size_limit_raises(tmp_path):
    """Python's buffered stdout returns a short count there and drops the rest, exit code 0;
    the results' writer raises (the CLI then keeps them elsewhere and says where)."""
    code = "from epsweep.cli.present import write_stdout; write_stdout('x' * 300_000)"
    with open(tmp_path / "out.txt", "w") as out:
        done = subprocess.run(limited(64 * 1024, sys.executable, "-c", code), stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.rstrip().endswith("OSError: [Errno 27] File too large"), done.stderr
    assert (tmp_path / "out.txt").stat().st_size == 64 * 1024


def test_a_results_file_that_cannot_be_kept_anywhere_says_so_and_leaves_nothing(tmp_path):
    """The output and its fallback in the temporary directory both hit the size limit."""
    done = subprocess.run(limited(16 * 1024, EXE, *MANY, "-o", str(tmp_path / "out.csv")), capture_output=True,
                          text=True, env=env(tmp_path), timeout=300)
    assert done.returncode == 2
    assert done.stderr == (f"epsweep: error: --output: cannot write {tmp_path / 'out.csv'}: File too large; the "
                           f"results could not be saved elsewhere either\n")
    assert not list(tmp_path.glob("epsweep-results-*")) and not (tmp_path / "out.csv").exists()


def test_a_reader_gone_after_the_first_line_still_gets_them_kept(tmp_path):
    """`| head -1` on output larger than a pipe holds: the first write goes through in part."""
    proc = subprocess.Popen([EXE, *MANY, "-f", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env(tmp_path))
    assert proc.stdout.readline().startswith(b'{"eps": 1e-10')
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    saved = kept(proc.stderr.read().decode(), r"epsweep: warning: standard output was closed before all 1000 "
                                              r"records were read; they were saved to ")
    assert len(read_results(saved).records) == 1000


def test_ctrl_c_while_a_slow_reader_takes_the_results_keeps_them(tmp_path):
    """`epsweep grid ... | less`, then Ctrl-C: the reader has not taken them all."""
    proc = subprocess.Popen([EXE, *MANY[:-1], "-f", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env(tmp_path))
    assert proc.stderr.readline().startswith(b"trained 1000 settings")  # then stdout fills and blocks
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    saved = kept(proc.stderr.read().decode(), r"epsweep: interrupted while the results went to standard output; "
                                              r"the results were saved to ")
    proc.stdout.close()
    assert len(read_results(saved).records) == 1000


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4, 0.8])
def test_ctrl_c_before_training_is_one_line(delay, tmp_path):
    """Whatever is loading (Python's modules, JAX's extension, the data), Ctrl-C ends the
    process at once: code 130 and one line."""
    proc = subprocess.Popen([EXE, "grid", "--eps", "1e-8", "1", "--steps", "20"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(tmp_path))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and out == "", err
    assert err.startswith("epsweep: interrupted") and err.count("\n") == 1, err


def test_an_ignored_ctrl_c_stays_ignored(tmp_path):
    """A script's background job starts with SIGINT ignored (POSIX), and epsweep leaves it so."""
    command = [EXE, "grid", "--task", "quadratic", "--steps", "3", "--eps", "1e-8", "-f", "csv"]
    proc = subprocess.Popen(["bash", "-c", 'trap "" INT; exec "$@"', "bash", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(tmp_path))
    for _ in range(5):
        time.sleep(0.3)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.startswith("eps,decay")


def test_output_to_dev_stdout_when_it_is_a_pipe(tmp_path):
    """``-o /dev/stdout``: its real path names the pipe (``pipe:[N]``), not a file."""
    done = subprocess.run([EXE, "grid", "--task", "quadratic", "--steps", "3", "--eps", "1e-8", "1", "-q",
                           "-f", "csv", "-o", "/dev/stdout"], capture_output=True, text=True, env=env(tmp_path),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("eps,decay") and len(done.stdout.splitlines()) == 3
