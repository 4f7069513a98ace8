"""What epsilon did: the two terms of an adaptive optimizer's denominator, per parameter.

For eps inside the root the denominator is sqrt(stat + eps) with stat = v; outside it is
stat + eps with stat = sqrt(v). A parameter is *eps-dominated* when eps > stat.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from epsweep.vocabulary import check_convention, check_optimizer


class DenominatorTerms(NamedTuple):
    """Per-parameter pieces of an adaptive optimizer's denominator (pytrees like the params).

    ``stat`` is the gradient-statistics term that ``eps`` is added to, ``eps`` the scalar
    eps, ``denominator`` what the gradient (or first moment) is divided by:

    - eps inside the root (rmsprop optax/tf1/keras, adagrad): stat = v (centered: v - gbar^2;
      adagrad: the sum of squares, starting at 0.1), denominator = sqrt(stat + eps);
    - eps outside the root (rmsprop pytorch, adam): stat = sqrt(v) (centered:
      sqrt(v - gbar^2); adam: sqrt(v^) with v^ = v/(1 - b2^t)), denominator = stat + eps.
    """

    stat: Any
    eps: jax.Array
    denominator: Any


def _find_state(tree: Any, types: tuple[type, ...]) -> Any:
    """The first node of one of ``types`` in a nested optimizer state (inject_hyperparams
    state -> inner_state -> chain tuple -> ...), depth first; None if there is none."""
    if isinstance(tree, types):
        return tree
    children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (tuple, list)) else ()
    for child in children:
        found = _find_state(child, types)
        if found is not None:
            return found
    return None


def _hyperparams(opt_state: Any) -> dict:
    state = _find_state(opt_state, (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState))
    if state is None:
        raise ValueError("no injected hyperparameters in this optimizer state; build it with make_optimizer")
    return state.hyperparams


def _missing(kind: str) -> ValueError:
    return ValueError(f"no {kind} in this optimizer state")


def denominator_terms(opt_state: Any, optimizer: str = "rmsprop", convention: str = "optax") -> DenominatorTerms | None:
    """The denominator's terms in ``opt_state`` of :func:`make_optimizer` (``optimizer``,
    ``convention``) after an update: what the next step divides by, except that adam's
    bias correction uses the count of steps taken so far.  ``None`` for sgd (no denominator).

    Args:
        opt_state: the state of an optimizer built by :func:`make_optimizer`.
        optimizer: which optimizer built it.
        convention: rmsprop's convention (where eps sits).

    Returns:
        :class:`DenominatorTerms` (pytrees like the parameters), or None for sgd.

    Example:
        >>> import jax.numpy as jnp
        >>> from epsweep.optim.rules import make_optimizer
        >>> opt = make_optimizer("rmsprop", 0.1, 0.9, 1e-4, convention="pytorch")
        >>> _, state = opt.update({"w": jnp.array([2.0])}, opt.init({"w": jnp.array([0.0])}))
        >>> terms = denominator_terms(state, "rmsprop", "pytorch")  # eps outside the root
        >>> round(float(terms.stat["w"][0]), 4), round(float(terms.denominator["w"][0]), 4)
        (0.6325, 0.6326)
    """
    check_optimizer(optimizer)
    if optimizer == "sgd":
        return None
    hp = _hyperparams(opt_state)
    eps = hp["eps"]
    if optimizer == "rmsprop":
        check_convention(convention)
        state = _find_state(opt_state, (optax.ScaleByRStdDevState, optax.ScaleByRmsState))
        if state is None:
            raise _missing("RMSProp second moment")
        if isinstance(state, optax.ScaleByRStdDevState):
            var = jax.tree.map(lambda v, m: v - m * m, state.nu, state.mu)
        else:
            var = state.nu
        if convention == "pytorch":
            stat = jax.tree.map(jnp.sqrt, var)
            return DenominatorTerms(stat, eps, jax.tree.map(lambda s: s + eps, stat))
        return DenominatorTerms(var, eps, jax.tree.map(lambda s: jnp.sqrt(s + eps), var))
    if optimizer == "adam":
        state = _find_state(opt_state, (optax.ScaleByAdamState,))
        if state is None:
            raise _missing("Adam second moment")
        correction = 1 - hp["decay"] ** state.count
        correction = jnp.where(state.count > 0, correction, 1.0)  # before any step v = 0
        stat = jax.tree.map(lambda v: jnp.sqrt(v / correction.astype(v.dtype)), state.nu)
        return DenominatorTerms(stat, eps, jax.tree.map(lambda s: s + eps, stat))
    state = _find_state(opt_state, (optax.ScaleByRssState,))
    if state is None:
        raise _missing("Adagrad sum of squares")
    stat = state.sum_of_squares
    return DenominatorTerms(stat, eps, jax.tree.map(lambda s: jnp.sqrt(s + eps), stat))


def _selected(tree: Any, where: Any) -> tuple[list[jax.Array], list[jax.Array]]:
    """The leaves of ``tree`` and, for each, a bool array of the same shape: which of its
    parameters count (``where`` is None for all, or a pytree like the params of bool arrays
    or Python bools)."""
    leaves = jax.tree.leaves(tree)
    if where is None:
        return leaves, [jnp.ones(leaf.shape, bool) for leaf in leaves]
    masks = jax.tree.leaves(where)
    if len(masks) != len(leaves):
        raise ValueError(f"where has {len(masks)} leaves for {len(leaves)} parameter arrays")
    return leaves, [jnp.broadcast_to(jnp.asarray(m, bool), leaf.shape) for leaf, m in zip(leaves, masks, strict=False)]


def moving_parameters(grads: Any, trainable: Any = None) -> Any:
    """Which parameters a gradient moves: g != 0 (and, with ``trainable``, a pytree of Python
    bools per array, only trainable arrays).  The diagnostics count only these: a parameter
    whose gradient is exactly zero (a dead ReLU unit, an input pixel that is always blank) does
    not move whatever eps is."""
    if trainable is None:
        return jax.tree.map(lambda g: g != 0, grads)
    return jax.tree.map(lambda g, t: (g != 0) & t, grads, trainable)


def moving_mask_size(params: Any, optimizer: str) -> int:
    """Elements of a run's mask of :func:`moving_parameters` (kept by the engine for the
    effective lr): one per parameter, none for sgd (no denominator, no eps diagnostics)."""
    return 0 if optimizer == "sgd" else sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))


EXACT_FLOAT_COUNT = 1 << 24  # float32 holds every integer up to 2^24 exactly


def selected_and_dominated(stat: jax.Array, eps: jax.Array, selected: jax.Array) -> jax.Array:
    """int32 [how many parameters ``selected`` marks, how many of them have eps > stat].

    Both counts are one float32 sum of a (2, size) array of ones and zeros, exact below
    EXACT_FLOAT_COUNT elements (every partial sum is an integer float32 holds), int32 sums
    from there. XLA's CPU backend sums int32 through trees of windowed reductions, and two
    separate sums each read the mask: in the training loop the diagnostics of the default
    MLP's measured steps took 229 us a step as two int32 sums, 190 us as two float32 sums and
    98-115 us as this one (docs/performance.md, twenty-eighth stop)."""
    dominated = (eps > stat) & selected
    if selected.size >= EXACT_FLOAT_COUNT:
        return jnp.stack([jnp.sum(selected, dtype=jnp.int32), jnp.sum(dominated, dtype=jnp.int32)])
    ones = jnp.stack([selected, dominated]).astype(jnp.float32)
    return jnp.sum(ones.reshape(2, -1), axis=1).astype(jnp.int32)


def eps_dominated_share(terms: DenominatorTerms, where: Any = None) -> jax.Array:
    """Share of the parameters selected by ``where`` (all by default) whose eps term exceeds
    their gradient-statistics term, eps > stat; NaN when none is selected."""
    stats, masks = _selected(terms.stat, where)
    total, count = sum((selected_and_dominated(s, terms.eps, m) for s, m in zip(stats, masks, strict=False)),
                       jnp.zeros(2, jnp.int32))
    return (count / total).astype(jnp.float32)


def effective_lr_median(terms: DenominatorTerms, learning_rate: jax.Array, where: Any = None) -> jax.Array:
    """Median of the effective step size lr / denominator over the parameters selected by
    ``where`` (all by default); NaN when none is selected."""
    denominators, masks = _selected(terms.denominator, where)
    values = jnp.concatenate([jnp.ravel(learning_rate / d) for d in denominators])
    selected = jnp.concatenate([jnp.ravel(m) for m in masks])
    return nanmedian(jnp.where(selected, values, jnp.nan))


def _order_key(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negatives reversed, then above every negative)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _from_order_key(key: jax.Array) -> jax.Array:
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


HISTOGRAM_FROM = 1 << 20  # values from which, on CPU, nanmedian counts by histogram rather than bisection


def _kth_key_by_bisection(keys: jax.Array, valid: jax.Array, k: jax.Array) -> jax.Array:
    """The k-th smallest (0-based) of the valid keys: bisection over the 32 bits, one counting
    pass over the keys per bit."""

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(valid & (keys <= mid), dtype=jnp.int32) > k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    return jax.lax.fori_loop(0, 32, halve, (jnp.uint32(0), jnp.uint32(0xFFFFFFFF)))[0]


def _kth_key_by_histogram(keys: jax.Array, valid: jax.Array, k: jax.Array) -> jax.Array:
    """The k-th smallest (0-based) of the valid keys: a 65,536-bin histogram of the high 16 bits
    gives the bin holding it, c1[b - 1] <= k < c1[b] (c1 the cumulative counts), then one of the
    low 16 bits of the keys in that bin gives the rest: two scatter-add passes instead of 32
    (the keys left out are sent past the last bin and dropped)."""
    past = 1 << 16
    high = (keys >> 16).astype(jnp.int32)
    bins = jnp.zeros(past, jnp.int32)
    below = jnp.cumsum(bins.at[jnp.where(valid, high, past)].add(1, mode="drop"))
    b = jnp.argmax(below > k)
    before = jnp.where(b > 0, below[jnp.maximum(b - 1, 0)], 0)
    low = (keys & jnp.uint32(0xFFFF)).astype(jnp.int32)
    in_bin = jnp.cumsum(bins.at[jnp.where(valid & (high == b), low, past)].add(1, mode="drop"))
    d = jnp.argmax(before + in_bin > k)
    return (b.astype(jnp.uint32) << 16) | d.astype(jnp.uint32)


def nanmedian(values: jax.Array) -> jax.Array:
    """``jnp.nanmedian`` of a float32 vector without sorting it: the middle order statistics
    found from their bit patterns (order keys), by bisection (32 counting passes) or, on CPU
    from HISTOGRAM_FROM values, by two 16-bit histograms; for an odd count the middle value,
    for an even one the two middle values' mean as ``jnp.nanmedian`` takes it (0.5 a + 0.5 b).
    Equal to ``jnp.nanmedian`` bit for bit, except that a zero median is always +0. XLA's CPU
    sort is slow: for 32 settings of the 9,610-parameter MLP, 50 ms a call against a few ms
    for this; the histograms halve the time of Inception-v3's 24 M values (0.42-0.47 s against
    0.86-0.89 s on this project's Intel Xeon), for 16 bytes of temporaries a value instead of 9
    (XLA keeps the scatters' index vectors); on accelerators the bisection's passes are plain
    reductions, where many-to-one scatters are not a good fit."""
    values = jnp.where(values == 0, jnp.float32(0), values.astype(jnp.float32))  # -0 and +0: one key
    valid = ~jnp.isnan(values)
    keys = _order_key(values)
    n = jnp.sum(valid, dtype=jnp.int32)
    k = jnp.maximum(n - 1, 0) // 2  # the lower middle, 0-based
    if values.size >= HISTOGRAM_FROM:
        low_key = jax.lax.platform_dependent(keys, valid, k, cpu=_kth_key_by_histogram,
                                             default=_kth_key_by_bisection)
    else:
        low_key = _kth_key_by_bisection(keys, valid, k)
    low = _from_order_key(low_key)
    at_most_low = jnp.sum(valid & (keys <= low_key), dtype=jnp.int32)
    above = jnp.min(jnp.where(valid & (keys > low_key), keys, jnp.uint32(0xFFFFFFFF)), initial=jnp.uint32(0xFFFFFFFF))
    high = jnp.where(at_most_low > k + 1, low, _from_order_key(above))
    median = jnp.where(n % 2 == 1, low, low * 0.5 + high * 0.5)
    return jnp.where(n > 0, median, jnp.nan).astype(jnp.float32)


def eps_diagnostics(
    opt_state: Any, optimizer: str = "rmsprop", convention: str = "optax", where: Any = None
) -> dict | None:
    """``{"eps_dominated": share, "effective_lr": median lr/denominator}`` for ``opt_state``
    over the parameters selected by ``where`` (see :func:`moving_parameters`), using the
    learning rate stored in the state (the one its last update used); None for sgd.

    Args:
        opt_state: the state of an optimizer built by :func:`make_optimizer`.
        optimizer: which optimizer built it.
        convention: rmsprop's convention.
        where: which parameters count (see :func:`moving_parameters`); None for all.

    Returns:
        ``{"eps_dominated": ..., "effective_lr": ...}`` as scalar arrays, or None for sgd.

    Example:
        >>> import jax.numpy as jnp
        >>> from epsweep.optim.rules import make_optimizer
        >>> opt = make_optimizer("rmsprop", 0.1, 0.9, 1.0)  # eps 1 against v = 0.1 * 0.01
        >>> _, state = opt.update({"w": jnp.array([0.1])}, opt.init({"w": jnp.array([0.0])}))
        >>> {k: round(float(v), 4) for k, v in eps_diagnostics(state).items()}
        {'eps_dominated': 1.0, 'effective_lr': 0.1}
    """
    terms = denominator_terms(opt_state, optimizer, convention)
    if terms is None:
        return None
    lr = _hyperparams(opt_state)["learning_rate"]
    return {"eps_dominated": eps_dominated_share(terms, where), "effective_lr": effective_lr_median(terms, lr, where)}
