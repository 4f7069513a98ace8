"""The order in which each epoch of a seed visits the training examples (its minibatches).

``init`` draws the orders of every epoch of a run when they take at most ORDERS_AHEAD_BYTES a
seed (the default MLP: 67 KiB), so that ``train`` holds no random draw and no sort: drawn inside
``train`` at each epoch's start, they made about 40 of the default MLP's 115 kernels there, and
its ``train`` compiled in 1.47-1.64 s instead of 1.27-1.31 s on this project's 2-core AMD EPYC,
the longest compile of a cold run (docs/performance.md, twenty-ninth stop). Beyond that (a long
run on a large dataset), ``train`` draws each epoch's order as the epoch starts. The orders are
the same either way, bit for bit, and the work is the same: every epoch's order once a chunk and
seed, all at the start rather than one an epoch, at ``init``'s optimisation level (a small
state's: low). At the bound, 70 epochs of 60,000 examples, that took 2.2 s against 1.9 s at
XLA's default level (this project's AMD EPYC); the default MLP's 12 epochs, 3.6 ms.

Loop-free (one step per call, :func:`~epsweep.engine.programs.build_programs`), ``train`` does
not donate its state, so XLA copies the orders it returns at every step: there they are drawn
ahead only up to ORDERS_AHEAD_LOOP_FREE_BYTES (a copy of a few microseconds a step; the ``cnn``
task's 10 epochs of 1,438 examples: 56 KiB). In the loop they pass through in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ORDERS_AHEAD_BYTES = 16 * 1024**2
ORDERS_AHEAD_LOOP_FREE_BYTES = 256 * 1024


def epoch_order(seed: jax.Array, epoch: jax.Array, n_train: int) -> jax.Array:
    """The order in which epoch ``epoch`` of seed ``seed`` visits the training examples."""
    key = jax.random.fold_in(jax.random.key(seed), 1)
    return jax.random.permutation(jax.random.fold_in(key, epoch), n_train).astype(jnp.int32)


def epoch_orders(seed: jax.Array, epochs: int, n_train: int) -> jax.Array:
    """The orders of epochs 0 .. ``epochs`` - 1 of seed ``seed``, (epochs, n_train): row e is
    ``epoch_order(seed, e, n_train)``."""
    return jax.vmap(epoch_order, in_axes=(None, 0, None))(seed, jnp.arange(epochs, dtype=jnp.int32), n_train)


def orders_ahead(epochs: int, n_train: int, loop_free: bool = False) -> bool:
    """Whether ``init`` draws the orders of all ``epochs`` of ``n_train`` examples."""
    bound = ORDERS_AHEAD_LOOP_FREE_BYTES if loop_free else ORDERS_AHEAD_BYTES
    return epochs * n_train * jnp.dtype(jnp.int32).itemsize <= bound


def order_at(order: jax.Array, epoch: jax.Array, ahead: bool) -> jax.Array:
    """The order of epoch ``epoch``, (S, n_train), from the state's ``order``: every epoch's,
    (S, epochs, n_train), when drawn ``ahead``; else the epoch's own, drawn as it started."""
    return jax.lax.dynamic_index_in_dim(order, epoch, axis=1, keepdims=False) if ahead else order
