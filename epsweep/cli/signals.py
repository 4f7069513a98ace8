"""Ctrl-C, SIGTERM and SIGHUP for the command line: exit at once, even inside a compiled call,
with one line saying what was kept. Exiting the process is the CLI's business, never the library's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from epsweep.results.files import WRITE_LOCK
from epsweep.views.sheet import visible_line


@contextlib.contextmanager
def exit_on_interrupt(message: Callable[[], str], cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """For command-line use: on SIGINT (or SIGTERM, or SIGHUP: the terminal or ssh session
    closed), exit the process at once with code 130 (143, 129), printing ``epsweep:
    <message()>`` on stderr, even while a compiled program runs. A signal that the process
    ignores stays ignored (SIGHUP under ``nohup``; SIGINT in a script's background job).

    A compiled XLA call does not return to Python until it finishes, so the usual
    KeyboardInterrupt would wait for the whole chunk. Here the signal wakes a thread instead,
    which waits for any results-file write to complete (never half a line), runs ``cleanup``
    (e.g. stop a progress bar) and calls ``os._exit``. Only in the main thread; elsewhere it
    does nothing and Ctrl-C behaves as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    candidates = (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))  # no SIGHUP on Windows
    signals = tuple(s for s in candidates if s is not None and signal.getsignal(s) != signal.SIG_IGN)
    previous = {s: signal.getsignal(s) for s in signals}

    def watch() -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number in signals:
                    _exit_now(number, message, cleanup)

    for s in signals:
        signal.signal(s, lambda *_: None)  # the watcher acts; the main thread carries on
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="epsweep-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, handler in previous.items():
            if handler is not None:  # None: installed outside Python, which cannot be put back from here
                signal.signal(s, handler)
        os.close(write_fd)
        watcher.join(timeout=5)
        os.close(read_fd)


WRITE_WAIT_S = 60.0
"""How long an exit waits for a write to a results file (a regular file: writes to a pipe or
device, which may block for good, are not waited for) before it exits all the same."""


def _exit_now(number: int, message: Callable[[], str], cleanup: Callable[[], None] | None) -> None:
    locked = WRITE_LOCK.acquire(timeout=WRITE_WAIT_S)  # held for good: no write can start after this
    if cleanup is not None:
        helper = threading.Thread(target=cleanup, daemon=True)
        helper.start()
        helper.join(timeout=1)
    if not locked:  # saving anything now would wait on the same stalled file system
        text = (f"interrupted; a write to a results file did not finish within {WRITE_WAIT_S:g} s (a stalled file "
                f"system?); its last line may be cut, and nothing more was saved")
    else:
        try:
            text = message()
        except Exception:  # noqa: BLE001 - the exit must happen whatever went wrong
            text = "interrupted"
    if number != signal.SIGINT:
        text = text.replace("interrupted", "terminated", 1)
    with contextlib.suppress(OSError):
        sys.stderr.flush()
        os.write(2, f"epsweep: {visible_line(text)}\n".encode(errors="backslashreplace"))
    os._exit(128 + number)


@contextlib.contextmanager
def deadline(seconds: float, message: Callable[[], str]) -> Iterator[None]:
    """For command-line use: if the block has not finished within ``seconds``, exit the process
    with code 2 and ``epsweep: error: <message()>`` on stderr. For calls that block inside a
    library and cannot be interrupted (joining other processes: JAX itself would end the
    process with a fatal error and a C++ stack trace)."""
    finished = threading.Event()

    def watch() -> None:
        if finished.wait(seconds):
            return
        try:
            text = message()
        except Exception:  # noqa: BLE001 - the exit must happen whatever went wrong
            text = f"gave up after {seconds:g} s"
        with contextlib.suppress(OSError):
            sys.stderr.flush()
            os.write(2, f"epsweep: error: {visible_line(text)}\n".encode(errors="backslashreplace"))
        os._exit(2)

    watcher = threading.Thread(target=watch, name="epsweep-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
