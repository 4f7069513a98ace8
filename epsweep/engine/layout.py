"""How the training loop lays out each run's weights and their optimizer statistics.

Outside the loop every leaf of a state has a leading (S, G) block (seeds, settings) and the
model's own layout. Inside, two layouts save XLA's CPU backend a transposed copy of a kernel at
every step:

- a dense kernel (in, out) is kept as (out, in) (:func:`swap_kernels`), the layout in which
  XLA computes the gradient of a layer whose input differs per setting;
- the weight of a product of data by weights (:mod:`epsweep.engine.products`: a first layer,
  whose input the settings of a seed share) is kept as (in, settings, out), where the forward
  product x (batch, in) times every setting's kernel reads it as one matrix and its gradient
  x^T g writes it.

The model always sees its own layout: ``vmap`` maps each leaf over the axis where its settings
lie (:meth:`LoopLayout.run_axes`), and XLA folds the rest into the products.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from epsweep.engine import products


def is_kernel(path: tuple, leaf: Any, lead: int) -> bool:
    """A dense layer's weight matrix (named ``kernel``, as in flax linen and NNX), seen with
    ``lead`` leading run axes."""
    return jnp.ndim(leaf) == lead + 2 and any(getattr(k, "key", getattr(k, "name", None)) == "kernel" for k in path)


@dataclasses.dataclass(frozen=True, eq=False)
class LoopLayout:
    """How the training loop lays out each run's weights and optimizer statistics (outside the
    loop every leaf has a leading (S, G) block and the model's own layout):

    - a weight that a data product reads (:mod:`epsweep.engine.products`), contracted over its
      first k dimensions: (S, G, in..., out...) -> (S, in..., G, out...), where its forward
      product and its gradient x^T g both read and write it without a copy;
    - any other dense kernel: (out, in), swapped (:func:`swap_kernels`);
    - everything else as it is.

    Its methods take the weights, their gradient or the optimizer state, never the rest of a
    run. ``weights``: the weights' tree structure; ``data``: the data products' weights, by
    their index among its leaves: (k, the weight's shape). In an optimizer state, a statistic
    of such a weight is the leaf at the same index of a subtree shaped as the weights, with the
    weight's shape. ``found``: the traced loss (None outside the loop)."""

    weights: Any = None
    data: dict = dataclasses.field(default_factory=dict)
    found: products.DataProducts | None = None

    def _data_weight(self, index: int, leaf: Any, lead: int, looped: bool) -> int | None:
        """k for the ``index``-th leaf of a weights-shaped subtree (``lead`` leading run axes;
        ``looped``: in the loop's layout, G after the weight's first k dimensions) if it is a
        data product's weight or its statistic; None otherwise."""
        if index not in self.data:
            return None
        k, weight_shape = self.data[index]
        shape = tuple(jnp.shape(leaf))
        if looped:
            own = shape[lead - 1:lead - 1 + k] + shape[lead + k:]
            return k if len(shape) == lead + len(weight_shape) and own == weight_shape else None
        return k if shape[lead:] == weight_shape else None

    def _map(self, tree: Any, lead: int, data_fn, kernel_fn, other_fn=lambda leaf: leaf, looped=False) -> Any:
        def plain(path, leaf):
            return kernel_fn(leaf) if is_kernel(path, leaf, lead) else other_fn(leaf)

        def weights_like(node) -> bool:
            return self.weights is not None and jax.tree.structure(node) == self.weights

        def one(path, node):
            if not weights_like(node):
                return plain(path, node)
            leaves, treedef = jax.tree_util.tree_flatten_with_path(node)
            mapped = []
            for index, (inner, leaf) in enumerate(leaves):
                k = self._data_weight(index, leaf, lead, looped)
                mapped.append(plain((*path, *inner), leaf) if k is None else data_fn(leaf, k))
            return jax.tree.unflatten(treedef, mapped)

        return jax.tree_util.tree_map_with_path(one, tree, is_leaf=weights_like)

    def to_loop(self, tree: Any) -> Any:
        """(S, G, ...) leaves as the loop keeps them."""
        return self._map(tree, 2, lambda leaf, k: jnp.moveaxis(leaf, 1, 1 + k), lambda leaf: jnp.swapaxes(leaf, -1, -2))

    def from_loop(self, tree: Any) -> Any:
        """The inverse of :meth:`to_loop`."""
        return self._map(tree, 2, lambda leaf, k: jnp.moveaxis(leaf, 1 + k, 1), lambda leaf: jnp.swapaxes(leaf, -1, -2),
                         looped=True)

    def swap_kernels(self, tree: Any) -> Any:
        """One run's leaves, between the loop's view and the model's: the swapped kernels
        swapped (a data product's weight looks the same in both)."""
        return self._map(tree, 0, lambda leaf, k: leaf, lambda leaf: jnp.swapaxes(leaf, -1, -2))

    def run_axes(self, tree: Any) -> Any:
        """For (S, G, ...) leaves (the model's layout): where the settings axis G lies in the
        loop once the seed axis is mapped away (``vmap``'s axes for one seed's runs)."""
        return self._map(tree, 2, lambda leaf, k: k, lambda leaf: 0, lambda leaf: 0) if self.data else 0


def swap_kernels(tree: Any, lead: int = 0) -> Any:
    """``tree`` with every dense kernel's two matrix axes swapped: (in, out) <-> (out, in).

    Inside the training loop kernels (and their optimizer statistics) are kept as (out, in).
    The settings of a seed share a minibatch, so XLA computes a first layer's gradient for
    all of them as one matrix product, whose natural result is (settings x out, in); kept as
    (in, out), every optimizer update read it transposed, element by element. The model sees
    (in, out) as always: the swap is a layout, and XLA folds it into the matrix products."""
    return LoopLayout()._map(tree, lead, lambda leaf, k: leaf, lambda leaf: jnp.swapaxes(leaf, -1, -2))


def loop_layout(loss, runs: Any, xb, yb, narrow: bool = False) -> LoopLayout:
    """The loop's layout for ``runs`` (S, G, ...) trained on ``loss``, traced once for one run
    (on a minibatch shaped as ``xb``, ``yb``; None without data) to find its data products (and
    with ``narrow``, its narrow products: on CPU). The loop replays that trace
    (:func:`epsweep.engine.products.evaluate`) rather than trace the loss a second time."""
    one_run = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf)[2:], leaf.dtype),
                           (runs.params, runs.model_state))
    batch = [None if b is None else jax.ShapeDtypeStruct(jnp.shape(b), b.dtype) for b in (xb, yb)]
    found = products.find_data_products(loss, *one_run, *batch, jax.random.key(0), narrow=narrow)
    weights = jax.tree.leaves(one_run[0])
    data = {i: (k, tuple(weights[i].shape)) for i, k in found.contracted.items()}
    return LoopLayout(jax.tree.structure(one_run[0]), data, found)


def vmap_or_call(fun: Callable, in_axes: Any = 0, out_axes: Any = 0) -> Callable:
    """``jax.vmap(fun, in_axes, out_axes)`` (positional arguments); over axes of size 1, a plain
    call of ``fun`` on the arguments with those axes taken out, put back in its results (how the loop-free programs
    map over seeds and settings: ``epsweep.engine.programs._Plan.vmap``)."""
    mapped = jax.vmap(fun, in_axes=in_axes, out_axes=out_axes)

    def per_leaf(axes, tree, f):
        """f(leaf, axis) for every leaf of ``tree``; ``axes`` an int, None or a prefix tree of them."""
        return jax.tree.map(lambda a, sub: jax.tree.map(lambda leaf: f(leaf, a), sub), axes, tree,
                            is_leaf=lambda x: x is None)

    def call(*args):
        axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
        sizes = set()
        for arg, axis in zip(args, axes, strict=True):
            per_leaf(axis, arg, lambda leaf, a: sizes.add(None if a is None else jnp.shape(leaf)[a]))
        if sizes - {None} != {1}:
            return mapped(*args)
        squeezed = [per_leaf(axis, arg, lambda leaf, a: leaf if a is None else jnp.squeeze(leaf, a))
                    for arg, axis in zip(args, axes, strict=True)]
        return per_leaf(out_axes, fun(*squeezed), lambda leaf, a: leaf if a is None else jnp.expand_dims(leaf, a))

    return call
