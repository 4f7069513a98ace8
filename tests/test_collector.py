"""The garbage collector held back while a model is traced (epsweep.collector): raised inside,
restored after the last trace in the process ends unless changed meanwhile, a collector the
user turned off left off, and every trace of a model a sweep makes (its checks and
fingerprint, the memory estimate, the exported programs, frozen features) runs under it."""

import gc
import threading

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from epsweep import collector
from epsweep.engine import exports, features, memory
from epsweep.engine.spec import TrainSpec
from epsweep.tasks.own import flax_task
from epsweep.tasks.task import Features

RAISED = collector.TRACE_THRESHOLD


@pytest.fixture
def thresholds():
    """The process's thresholds and collector state, put back whatever a test does."""
    before, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)
    (gc.enable if enabled else gc.disable)()


def test_the_first_threshold_is_raised_inside_and_restored_after(thresholds):
    with collector.deferred_collection():
        assert gc.get_threshold() == (RAISED, 10, 10)
        with collector.deferred_collection():  # nested
            assert gc.get_threshold() == (RAISED, 10, 10)
        assert gc.get_threshold() == (RAISED, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_an_error_inside_restores_the_thresholds(thresholds):
    with pytest.raises(ZeroDivisionError), collector.deferred_collection():
        1 / 0  # noqa: B018
    assert gc.get_threshold() == (700, 10, 10)


def test_traces_in_two_threads_restore_the_thresholds_when_the_last_ends(thresholds):
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with collector.deferred_collection():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with collector.deferred_collection():
            second_in.set()
            first_out.wait(10)
            seen["after the first ended"] = gc.get_threshold()[0]

    threads = [threading.Thread(target=f) for f in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == {"after the first ended": RAISED}
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize(("user", "inside"), [
    ((0, 10, 10), (0, 10, 10)),  # a threshold of 0: no automatic collection, and none is started
    ((RAISED * 2, 5, 5), (RAISED * 2, 5, 5)),  # already rarer than ours
    ((1000, 3, 4), (RAISED, 3, 4)),  # the older generations' thresholds are the user's
])
def test_the_users_thresholds_are_kept_where_they_collect_no_more_often(thresholds, user, inside):
    gc.set_threshold(*user)
    with collector.deferred_collection():
        assert gc.get_threshold() == inside
    assert gc.get_threshold() == user


def test_a_disabled_collector_stays_disabled(thresholds):
    gc.disable()
    with collector.deferred_collection():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_a_threshold_changed_inside_is_kept(thresholds):
    """Something else that sets the thresholds while a trace runs (a model's own code, another
    thread) has the last word: they are not set back over it."""
    with collector.deferred_collection():
        gc.set_threshold(0, 10, 10)  # automatic collection off
    assert gc.get_threshold() == (0, 10, 10)


def test_garbage_cycles_made_inside_are_still_collected(thresholds):
    """Deferred, not switched off: a cycle made while tracing goes at the next collection of
    the young generation, after TRACE_THRESHOLD allocations, with no explicit collect."""
    import weakref

    class Node:
        pass

    with collector.deferred_collection():
        node = Node()
        node.self = node
        ref = weakref.ref(node)
        del node
        kept = [[] for _ in range(RAISED // 10)]
        assert ref() is not None  # not yet: fewer allocations than the threshold
        kept += [[] for _ in range(RAISED)]
        assert ref() is None
    del kept


_SEEN: list = []  # a module's field would be frozen into a tuple by Flax


class _Recording(nn.Module):
    """A model that notes the collector's first threshold in _SEEN whenever it is traced."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        _SEEN.append(gc.get_threshold()[0])
        return nn.Dense(10)(x.reshape(len(x), -1))


def test_every_trace_of_an_own_model_in_a_sweep_runs_with_collection_deferred(mlp_task, thresholds, tmp_path,
                                                                               monkeypatch):
    """Built and swept as a user does (flax_task checks and fingerprints the model; the sweep
    describes it, estimates its memory and exports its programs): every trace of the model."""
    from epsweep import Grid, RunConfig
    from epsweep.runner import sweep

    monkeypatch.setattr(exports, "export_dir", lambda: tmp_path)
    _SEEN.clear()
    task = flax_task(_Recording(), mlp_task.data)
    built = len(_SEEN)
    sweep(task, Grid(eps=[1e-8]), RunConfig(steps=2, batch_size=8, curve_points=1))
    assert built and len(_SEEN) > built and set(_SEEN) == {RAISED}
    assert gc.get_threshold() == (700, 10, 10)
    _SEEN.clear()
    memory.estimate(task, TrainSpec(steps=3, batch_size=4, curve_points=1))  # another spec: traced again
    assert _SEEN and set(_SEEN) == {RAISED}


def test_frozen_features_are_traced_with_collection_deferred(thresholds):
    seen: list = []

    def apply(w, x):
        seen.append(gc.get_threshold()[0])
        return jnp.tanh(x @ w)

    frozen = Features(apply, np.eye(3, dtype=np.float32), batch_size=2)
    (out,) = features.extract(frozen, [np.ones((3, 3), np.float32)])
    assert out.shape == (3, 3) and seen and set(seen) == {RAISED}
    assert gc.get_threshold() == (700, 10, 10)
