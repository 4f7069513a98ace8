"""Python's cyclic garbage collector held back while a model is traced.

Tracing allocates millions of small objects that live until the trace ends (JAX's tracers,
variables and equations, Flax's scopes). Python collects its youngest generation after every
700 net allocations and, as the heap grows, walks the whole of it again and again: in a cold
``epsweep inception`` run at 75 x 75 the collector took 2.5-3.2 s of the main thread's time,
its full passes up to 1.1 s each, while the programs already traced compiled on the other
core and ``train``'s compile waited for its trace (docs/performance.md, twenty-fifth stop).
:func:`deferred_collection` raises the first generation's threshold to
:data:`TRACE_THRESHOLD` for as long as a trace runs: the young generation is still
collected, about 140 times less often, and the older ones accordingly. When the last trace in
the process ends the thresholds are set back, unless something else changed them meanwhile.
A collector the user turned off (``gc.disable()``, or a threshold of 0) stays off.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

TRACE_THRESHOLD = 100_000  # allocations between collections of the youngest generation while tracing

_lock = threading.RLock()  # reentrant: a finalizer that a collection runs may trace too
_depth = 0  # traces running now, in every thread
_saved: tuple[int, ...] | None = None  # the thresholds before the first of them, when it raised them

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def deferred_collection() -> Iterator[None]:
    """The first generation's threshold at least :data:`TRACE_THRESHOLD` inside (nested and
    concurrent uses count); after the last, the thresholds as they were, unless changed since."""
    global _depth, _saved
    entered = False
    try:
        with _lock:
            if _depth == 0:
                before = gc.get_threshold()
                if 0 < before[0] < TRACE_THRESHOLD:  # 0: automatic collection is off
                    _saved = before
                    gc.set_threshold(TRACE_THRESHOLD, *before[1:])
            _depth += 1
            entered = True
        yield
    finally:
        if entered:
            with _lock:
                _depth -= 1
                if _depth == 0 and _saved is not None:
                    if gc.get_threshold() == (TRACE_THRESHOLD, *_saved[1:]):  # still ours
                        gc.set_threshold(*_saved)
                    _saved = None


def while_tracing(function: F) -> F:
    """``function`` run inside :func:`deferred_collection`."""
    @functools.wraps(function)
    def deferred(*args: Any, **kwargs: Any) -> Any:
        with deferred_collection():
            return function(*args, **kwargs)

    return deferred  # type: ignore[return-value]
