"""``python -m epsweep`` and the ``epsweep`` executable (:func:`run`)."""

import os
import signal


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

    main_exit()


if __name__ == "__main__":
    run()
