"""A function's keys and random draws computed together: the same bits, a few kernels.

A model's ``init`` derives a key per parameter (Flax: ``fold_in`` by name, scope by scope)
and draws each weight array from its key: Inception-v3 makes 285 ``fold_in``\\ s and 96
draws. On CPU, JAX lowers each of them as a Threefry loop of its own, which XLA compiles
one by one: most of the time of compiling ``init``. :func:`batched_draws` runs the function
with every key derivation of one depth hashed in one call, and every draw in one.

The bits are the same, bit for bit. With ``jax_threefry_partitionable`` (JAX's default),
for a key ``(k1, k2)``: ``fold_in(key, m)`` is ``threefry2x32(k1, k2, 0, m)``, and
``random_bits(key, shape)`` hashes each element's flat index ``i``,
``(b1, b2) = threefry2x32(k1, k2, 0, i)``, giving ``b1 ^ b2`` (32 bits; 8 and 16: that,
narrowed; 64: ``b1 << 32 | b2``). The hash is elementwise, so hashing the concatenated
(key, message) pairs of many derivations or draws at once and slicing the result gives each
its own bits. The weights are then computed from them by the same operations: identical at
both of ``init``'s compile options on CPU (XLA's lowest level for a small state, its default
for a large one: tests/test_draws.py); XLA may compile the changed program into a different
fusion elsewhere (a float step apart at most, as eager and jitted JAX can be).

How: the function is traced to a jaxpr, evaluated twice, calls (``jit``, ``remat``...)
inlined. In the first pass a ``fold_in`` records its parent and message instead of hashing
(a key "not yet computed"), and a draw records its key (zeros stand in for its bits; nothing
else of that pass is used, and XLA drops it). The recorded keys are then computed depth by
depth, one hash per depth, and the draws in one hash (:data:`GROUP_ELEMENTS` elements at a
time). The second pass evaluates the jaxpr with each key and draw taken from those results.

Whatever cannot be gathered is computed as before, on its own: a key used by anything but
``fold_in`` and draws (it is computed there), a key or draw that depends on another draw's
bits (the first pass could not know them), one inside a loop, branch or custom-derivative
function (not inlined: their rules would be lost), a key that is not Threefry's, a draw of
2**32 elements or more or of a symbolic shape. A function with side effects (``jax.debug.print``,
callbacks) or traced with ``jax_threefry_partitionable`` off is evaluated as traced, once.
Meant for ``init`` under ``jit`` (eagerly, the first pass would really run on the zeros).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.extend.random import threefry2x32_p

GROUP_ELEMENTS = 1 << 24  # draw elements hashed per call: bounds its temporaries at 64 MiB an array
_INLINED = ("jaxpr", "call_jaxpr")  # the parameter holding an inlinable call's body
# calls whose body is evaluated in place; custom_jvp/vjp calls are not (their derivative rules would be lost)
_INLINED_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint"})
_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


def threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 hash (JAX's ``threefry2x32`` primitive: on CPU, a loop of 5 x 4
    rounds that XLA keeps as one kernel, not a copy fused into every consumer). Arguments
    uint32, broadcast together; returns the two output words."""
    return threefry2x32_p.bind(*jnp.broadcast_arrays(*(jnp.asarray(a, jnp.uint32) for a in (k1, k2, x1, x2))))


def batched_draws(function: Callable) -> Callable:
    """``function``, its keys and random draws computed together (the same values: see the module)."""

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(function, return_shape=True)(*args)
        flat_args = jax.tree.leaves(args)
        if closed.effects or not _partitionable(closed.jaxpr):  # as traced, once: its effects happen once
            return jax.tree.unflatten(jax.tree.structure(out_shape), jcore.jaxpr_as_fun(closed)(*flat_args))
        first = _Pass(None)
        out, _ = first.evaluate(closed.jaxpr, closed.consts, flat_args, frozenset())
        if first.draws:  # else the first pass computed everything as it is (no bits stood in)
            second = _Pass(first)
            out, _ = second.evaluate(closed.jaxpr, closed.consts, flat_args, frozenset())
            first = second
        return jax.tree.unflatten(jax.tree.structure(out_shape), [first.materialize(v) for v in out])

    return wrapped


class _Key:
    """A Threefry key: ``fold_in(parent, msg)`` not yet computed, or (``parent`` None) a
    key array. ``data``: its (2,) uint32 words once known; ``tainted``: depends on a draw."""

    __slots__ = ("parent", "msg", "data", "tainted", "depth")

    def __init__(self, parent: _Key | None, msg: Any, data: Any, tainted: bool) -> None:
        self.parent, self.msg, self.data, self.tainted = parent, msg, data, tainted
        self.depth = 0 if parent is None else parent.depth + 1


class _Pass:
    """One evaluation of the jaxpr. The first (``first`` None) records keys and draws; the
    second takes the i-th key and draw the first recorded, computed together."""

    def __init__(self, first: _Pass | None) -> None:
        self.keys: list[_Key] = []
        self.draws: list[tuple[_Key | None, tuple, int]] = []  # (key, shape, bit width); key None: on its own
        self.first = first
        if first is not None:
            _compute_keys(first.keys)
            self.bits = _hash_draws(first.draws)

    # --- keys -------------------------------------------------------------------------
    def fold_in(self, parent: _Key, msg: Any, tainted: bool) -> _Key:
        key = _Key(parent, msg, None, tainted or parent.tainted)
        if self.first is not None:
            known = self.first.keys[len(self.keys)]
            if not key.tainted:
                key.data = known.data
        self.keys.append(key)
        return key

    def materialize(self, value: Any) -> Any:
        """A key array for ``value`` (a :class:`_Key` computed on its own if needed), or ``value``."""
        if not isinstance(value, _Key):
            return value
        if value.data is None:  # JAX's own fold_in, on its own
            value.data = jax.random.key_data(jax.random.fold_in(self.materialize(value.parent), value.msg))
        return jax.random.wrap_key_data(value.data, impl="threefry2x32")

    # --- draws ------------------------------------------------------------------------
    def draw(self, eqn: Any, keys: Any, tainted: bool) -> Any:
        shape, width = tuple(eqn.params["shape"]), eqn.params["bit_width"]
        if self.first is None:
            gather = not tainted and _hashable_size(shape) and (
                isinstance(keys, _Key) and not keys.tainted or not isinstance(keys, _Key) and _is_threefry(keys))
            self.draws.append((keys if gather else None, shape, width))
            return jnp.zeros((*(() if isinstance(keys, _Key) else jnp.shape(keys)), *shape), _UINT[width])
        bits = self.bits[len(self.draws)]
        self.draws.append((None, shape, width))
        return eqn.primitive.bind(self.materialize(keys), **eqn.params) if bits is None else bits

    # --- the interpreter --------------------------------------------------------------
    def evaluate(self, jaxpr: Any, consts: list, args: list, tainted_in: frozenset) -> tuple[list, list]:
        """Evaluate ``jaxpr`` (calls inlined): its outputs, and whether each depends on a
        draw's bits (``tainted_in``: the positions of such inputs)."""
        env: dict = {}
        tainted: set = set()

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        def is_tainted(v):
            return not isinstance(v, jcore.Literal) and v in tainted

        env.update(zip(jaxpr.constvars, consts, strict=True))
        for i, (var, value) in enumerate(zip(jaxpr.invars, args, strict=True)):
            env[var] = value
            if i in tainted_in:
                tainted.add(var)
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            taint = any(map(is_tainted, eqn.invars))
            name = eqn.primitive.name
            body = next((eqn.params[p] for p in _INLINED if p in eqn.params), None) if name in _INLINED_CALLS else None
            if name == "random_bits":
                outs, taint_out = [self.draw(eqn, invals[0], taint)], [True]
            elif (name == "random_fold_in" and jnp.shape(invals[1]) == () and (
                    isinstance(invals[0], _Key) or jnp.shape(invals[0]) == () and _is_threefry(invals[0]))):
                parent = invals[0] if isinstance(invals[0], _Key) else _Key(
                    None, None, jax.random.key_data(invals[0]), is_tainted(eqn.invars[0]))  # a key array: a root
                outs, taint_out = [self.fold_in(parent, invals[1], is_tainted(eqn.invars[1]))], [taint]
            elif isinstance(body, (jcore.ClosedJaxpr, jcore.Jaxpr)):
                inner, inner_consts = (body.jaxpr, body.consts) if isinstance(body, jcore.ClosedJaxpr) else (body, [])
                positions = frozenset(i for i, v in enumerate(eqn.invars) if is_tainted(v))
                outs, taint_out = self.evaluate(inner, inner_consts, invals, positions)
            else:
                params = eqn.primitive.get_bind_params(eqn.params)
                subfuns, params = params if isinstance(params, tuple) else ((), params)  # older JAX: (subfuns, params)
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*subfuns, *map(self.materialize, invals), **params)
                outs = outs if eqn.primitive.multiple_results else [outs]
                taint_out = [taint] * len(outs)  # a loop's own draws are drawn, in both passes
            for var, value, t in zip(eqn.outvars, outs, taint_out, strict=True):
                if not isinstance(var, jcore.DropVar):
                    env[var] = value
                    if t:
                        tainted.add(var)
        return [read(v) for v in jaxpr.outvars], list(map(is_tainted, jaxpr.outvars))


def _hashable_size(shape: tuple) -> bool:
    """Whether a draw of ``shape`` counts its elements in 32 bits (and its shape is known)."""
    return all(isinstance(d, int) for d in shape) and math.prod(shape) < 2**32


def _partitionable(jaxpr: Any) -> bool:
    """Whether every random equation of ``jaxpr`` was traced with ``jax_threefry_partitionable``."""
    return all((not eqn.primitive.name.startswith("random_") or getattr(eqn.ctx, "threefry_partitionable", True))
               and all(_partitionable(sub) for sub in jcore.jaxprs_in_params(eqn.params)) for eqn in jaxpr.eqns)


def _is_threefry(keys: Any) -> bool:
    return str(jax.random.key_impl(keys)) == "threefry2x32"


def _compute_keys(keys: list[_Key]) -> None:
    """Every untainted key's data, one hash per depth."""
    by_depth: dict[int, list[_Key]] = {}
    for key in keys:
        if key.data is None and not key.tainted:
            by_depth.setdefault(key.depth, []).append(key)
    for depth in sorted(by_depth):
        level = by_depth[depth]
        parents = jnp.stack([k.parent.data for k in level])  # computed: a shallower depth, or a root
        msgs = jnp.stack([jnp.asarray(k.msg).astype(jnp.uint32) for k in level])
        b1, b2 = threefry2x32(parents[:, 0], parents[:, 1], np.uint32(0), msgs)
        for i, key in enumerate(level):
            key.data = jnp.stack([b1[i], b2[i]])


def _hash_draws(draws: list) -> list:
    """Each gathered draw's bits (None for the others), hashed GROUP_ELEMENTS at a time."""
    out: list = [None] * len(draws)
    group: list[int] = []
    size = 0
    for i, (key, shape, _) in enumerate(draws):
        if key is None:
            continue
        n = math.prod(_key_words(key).shape[:-1]) * math.prod(shape)  # a batch of keys draws for each
        if group and size + n > GROUP_ELEMENTS:
            _hash_group(draws, group, out)
            group, size = [], 0
        group.append(i)
        size += n
    if group:
        _hash_group(draws, group, out)
    return out


def _key_words(key: Any) -> Any:
    return key.data if isinstance(key, _Key) else jax.random.key_data(key)


def _hash_group(draws: list, group: list[int], out: list) -> None:
    k1, k2, counts = [], [], []
    for i in group:
        key, shape, _ = draws[i]
        words, n = _key_words(key), math.prod(shape)
        k1.append(jnp.broadcast_to(words[..., :1], (*words.shape[:-1], n)).reshape(-1))
        k2.append(jnp.broadcast_to(words[..., 1:], (*words.shape[:-1], n)).reshape(-1))
        counts.append(jnp.broadcast_to(lax.iota(np.uint32, n), (*words.shape[:-1], n)).reshape(-1))
    bits1, bits2 = threefry2x32(jnp.concatenate(k1), jnp.concatenate(k2), np.uint32(0), jnp.concatenate(counts))
    start = 0
    for i in group:
        key, shape, width = draws[i]
        batch = _key_words(key).shape[:-1]
        size = math.prod(batch) * math.prod(shape)
        b1, b2 = bits1[start:start + size], bits2[start:start + size]
        start += size
        if width == 64:
            bits = lax.shift_left(b1.astype(jnp.uint64), jnp.uint64(32)) | b2.astype(jnp.uint64)
        else:
            bits = (b1 ^ b2).astype(_UINT[width])
        out[i] = bits.reshape(*batch, *shape)
