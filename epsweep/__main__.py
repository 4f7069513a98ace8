"""``python -m epsweep`` and the ``epsweep`` executable (:func:`run`)."""

import os
import signal
import sys


def _exit_at_once(number: int, frame) -> None:
    os.write(2, b"epsweep: interrupted\n" if number == signal.SIGINT else b"epsweep: terminated\n")
    os._exit(128 + number)


def run() -> None:
    """The ``epsweep`` executable. Ctrl-C (or SIGTERM) while its modules import exits at once
    with one line, not a traceback; from there on :func:`epsweep.cli.main_exit` handles it. A
    signal the process ignores (a script's background job) stays ignored."""
    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) != signal.SIG_IGN:
            signal.signal(number, _exit_at_once)
    from epsweep.cli import main_exit

    try:
        main_exit()
    except SystemExit as done:
        if isinstance(done.code, int) and _may_skip_teardown():
            exit_without_teardown(done.code)
        raise


def _may_skip_teardown() -> bool:
    """Whether nothing but epsweep and its libraries ran here: no model file or module of the
    user's (which may hold open files, pools or C buffers that only the interpreter's full exit
    settles), and no tracer or profiler (cProfile, coverage, pdb) waiting to write after it."""
    user_code = getattr(sys.modules.get("epsweep.tasks.model_file"), "IMPORTED", None)
    return not user_code and sys.gettrace() is None and sys.getprofile() is None


def exit_without_teardown(code: int) -> None:
    """End the process with ``code`` as the interpreter's exit would, less its teardown:
    standard streams flushed, threads shut down as Python does (thread pools told to stop, then
    every non-daemon thread joined), the exit functions run (``atexit``: JAX's, logging's,
    temporary directories'), C's output buffers flushed; then the process ends without
    destroying every module and XLA's programs, devices and thread pools one by one (about
    0.35 s of every command that imported JAX, docs/performance.md). Where a step is missing
    or a standard stream cannot be flushed, the interpreter's own exit, which reports it."""
    import atexit
    import threading

    shutdown_threads = getattr(threading, "_shutdown", None)
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if shutdown_threads is None or run_exit_functions is None:  # pragma: no cover - another interpreter
        sys.exit(code)
    if not _flushed():
        sys.exit(code)
    shutdown_threads()
    run_exit_functions()
    if not _flushed():  # what the exit functions wrote
        sys.exit(code)
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # printf's buffers (a native library's output)
    except (OSError, AttributeError):  # pragma: no cover - no C library to ask
        pass
    os._exit(code)


def _flushed() -> bool:
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    run()
