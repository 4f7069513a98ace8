"""What the training programs carry from one call to the next, and the part of it that each
program other than ``init`` and ``train`` reads (:func:`program_input`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax


class Carry(NamedTuple):
    """One run's training state; in the programs every leaf has a leading (S, G) block."""

    params: Any
    model_state: Any
    opt_state: Any
    diverged_step: jax.Array
    curve_sum: jax.Array
    eps_dom_sum: jax.Array  # sum over measured steps of the eps-dominated share
    eps_dom_steps: jax.Array  # how many steps that sum holds
    eps_dom_last: jax.Array  # the share at the last measured step
    moving: Any  # bool, what the last step moved (_finish): flat (P,) in the loop, per array loop-free


class TrainState(NamedTuple):
    """What the ``train`` program carries from one call to the next."""

    runs: Carry  # (S, G, ...)
    order: jax.Array  # per seed, every epoch's example order (S, epochs, n_train) or the current one's (S, n_train)


# The fields of the runs that each program other than init and train reads.
_READS = {
    "evaluate": ("params", "model_state"),
    "finish": tuple(field for field in Carry._fields if field != "model_state"),
    "measure": ("opt_state", "diverged_step", "eps_dom_sum", "eps_dom_steps", "eps_dom_last", "moving"),
}


def program_input(program: str, state: TrainState) -> Carry:
    """What ``program`` ("evaluate", "finish" or "measure") is called with: the runs of ``state``
    with the fields it does not read set to None. ``jax.export`` leaves the unread arrays out of
    its module, but the jit that compiles the exported call (:mod:`.compiled`) keeps a parameter
    for each: Inception-v3's evaluate compiled in about 2.1 s alone instead of 3.0 s taking the
    whole state, and finish in 3.1 s instead of 3.7 s (docs/performance.md, sixteenth stop).
    The numbers are the same."""
    keep = _READS[program]
    return Carry(*(getattr(state.runs, field) if field in keep else None for field in Carry._fields))


def with_measures(state: TrainState, measures: tuple) -> TrainState:
    """``state`` with the eps diagnostics ``measure`` returned (sum, steps, last)."""
    total, steps, last = measures
    return state._replace(runs=state.runs._replace(eps_dom_sum=total, eps_dom_steps=steps, eps_dom_last=last))
