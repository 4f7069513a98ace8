"""Products of data by weights, and the kernel layout that suits them inside the training loop.

A dense layer on data computes y = x W, x (batch, in) the same for every setting of a seed (the
settings share its minibatch), W (in, out) each setting's own. Under ``vmap`` over the settings
XLA's CPU backend computes their products as one: x times the settings' kernels side by side,
(in, settings x out). Its gradient, dL/dW = x^T dL/dy, is again one product, but JAX's
transpose rule writes it as (dL/dy)^T x, which comes out as (settings x out, in). Whatever the
kernel's layout in the loop, one of the two products then reads it transposed, so XLA copies a
whole kernel transposed at every step (the default MLP: a ninth of its step).

Here the weight gradient of such a product is taken as x^T dL/dy (:func:`data_product`, a
``custom_vjp``: same forward product, same sums in the gradient), which comes out as
(in, settings x out), and the loop keeps those kernels (and their optimizer statistics) as
(in, settings, out): both products read them as they lie.

:func:`find_data_products` finds, in a loss's jaxpr, the products without batch dimensions whose
left operand does not depend on the weights and whose right operand is a weight array
contracted over its leading dimensions; :func:`evaluate` runs the loss with those products
replaced.

A last layer with few outputs (a classifier's classes) reads its input per setting: h (rows,
in) times W (in, n), n small. XLA's CPU backend computes the settings' products one by one,
each with n as the output's minor dimension, which its matrix kernels fill poorly. On CPU
the loop takes such a product as (W^T h^T)^T and its weight gradient as (g^T h)^T
(:func:`narrow_product`): the rows become the minor dimension, and a dense kernel (a weight
named ``kernel``) is read as the loop keeps it, (n, in).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal


class DataProducts(NamedTuple):
    """A loss traced once, and its products of data by weights.

    ``contracted``: for each weight array (by its index in ``jax.tree.leaves(weights)``) that is
    the right operand of such a product, how many of its leading dimensions the product
    contracts (1 for a dense kernel (in, out)). ``equations``: ids of those products' equations
    in ``jaxpr`` or in a ``jit`` inside it, and of every ``jit`` equation that holds one or a
    narrow product. ``narrow``: ids of the narrow products' equations (:func:`narrow_product`)."""

    jaxpr: ClosedJaxpr
    out_tree: Any
    contracted: dict[int, int]
    equations: frozenset[int]
    narrow: frozenset[int] = frozenset()


def data_product(equation) -> Any:
    """The ``dot_general`` ``equation`` (no batch dimensions; the right operand's contracted
    dimensions leading) as a function of (x, w) whose gradient in w is x^T g: ``dot_general(x,
    g)`` over x's free dimensions, which lays its result out as w is, (contracted..., free...)."""
    params = equation.params
    (lhs_contract, rhs_contract), _ = params["dimension_numbers"]

    def forward(x, w):
        return equation.primitive.bind(x, w, **params)

    @jax.custom_vjp
    def product(x, w):
        return forward(x, w)

    def product_fwd(x, w):
        return forward(x, w), (x, w)

    def product_bwd(residuals, g):
        x, w = residuals
        dx = jax.vjp(lambda x_: forward(x_, w), x)[1](g)[0]
        x_free = [d for d in range(jnp.ndim(x)) if d not in lhs_contract]
        dw = jax.lax.dot_general(x, g, ((x_free, list(range(len(x_free)))), ((), ())),
                                 precision=params.get("precision"),
                                 preferred_element_type=params.get("preferred_element_type"))
        # dw: x's contracted dimensions in x's order, then w's free ones; w's leading dimension
        # i is contracted with x's dimension lhs_contract[i]
        in_x_order = sorted(lhs_contract)
        order = [in_x_order.index(lhs_contract[i]) for i in range(len(rhs_contract))]
        order += list(range(len(rhs_contract), jnp.ndim(dw)))
        if order != sorted(order):
            dw = jax.lax.transpose(dw, order)
        return dx, dw.astype(w.dtype)

    product.defvjp(product_fwd, product_bwd)
    return product


def narrow_product(equation) -> Any:
    """The ``dot_general`` ``equation``, h (..., in) by a weight w (in, n) (a dense layer), as a
    function of (h, w) computed as (w^T h^T)^T, with w's gradient (g^T h)^T and h's g w^T.

    With n below a vector of floats, XLA's CPU products of h by w (one per setting under
    ``vmap``) run faster with h's rows as the output's minor dimension; an optimization barrier
    keeps XLA from turning each product back. Forward and backward of one such layer, 32
    settings on one core of this project's AMD EPYC: 0.63-0.95 of the time for n = 2 to 10 and
    inputs of 1,024 to 16,384 elements (rows x in), 0.92-0.99 for n = 16 to 32 (32 x 128),
    1.04-1.06 for n = 32 to 64 (64 to 128 x 128), and mostly 1.07-1.42 for inputs of 24,576 to
    65,536 elements (docs/performance.md, twenty-eighth stop). At one setting per call XLA
    compiles it differently: a width of one rounds otherwise than a wider call (so, in one case
    measured, did the plain product's forward, not its gradients)."""
    params = equation.params

    def dot(a, b, contract):
        return jax.lax.dot_general(a, b, (contract, ((), ())), precision=params.get("precision"),
                                   preferred_element_type=params.get("preferred_element_type"))

    @jax.custom_vjp
    def product(h, w):
        return equation.primitive.bind(h, w, **params)

    def product_fwd(h, w):
        transposed = dot(w.T, h, ((1,), (h.ndim - 1,)))  # (n, rows...)
        return jnp.moveaxis(jax.lax.optimization_barrier(transposed), 0, -1), (h, w)

    def product_bwd(residuals, g):
        h, w = residuals
        dh = dot(g, w.T, ((g.ndim - 1,), (0,)))
        g_transposed = jax.lax.optimization_barrier(jnp.moveaxis(g, -1, 0))  # (n, rows...)
        rows = tuple(range(h.ndim - 1))
        dw_transposed = dot(g_transposed, h, (tuple(r + 1 for r in rows), rows))  # (n, in)
        return dh.astype(h.dtype), dw_transposed.T.astype(w.dtype)

    product.defvjp(product_fwd, product_bwd)
    return product


NARROW_OUTPUTS = 16  # a narrow product has fewer outputs than this and than its input's rows,
NARROW_INPUT = 1 << 14  # and an input of at most this many elements (rows x in)


def _is_narrow_product(equation, weighted: list[bool]) -> bool:
    """A dense layer on activations (dependent on the weights) whose kernel (in, n) has fewer
    outputs n than NARROW_OUTPUTS and than the activations have rows, the activations at most
    NARROW_INPUT elements."""
    if equation.primitive.name != "dot_general" or not weighted[0]:
        return False
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = equation.params["dimension_numbers"]
    h_shape, w_shape = (var.aval.shape for var in equation.invars)
    precision = equation.params.get("precision")
    return (not lhs_batch and not rhs_batch and len(w_shape) == 2 and len(h_shape) >= 2
            and tuple(lhs_contract) == (len(h_shape) - 1,) and tuple(rhs_contract) == (0,)
            and w_shape[1] < min(NARROW_OUTPUTS, math.prod(h_shape[:-1])) and math.prod(h_shape) <= NARROW_INPUT
            and not (isinstance(precision, tuple) and precision[0] != precision[1])
            and equation.params.get("out_sharding") is None)


def find_data_products(loss, weights, *rest, narrow: bool = False) -> DataProducts:
    """Trace ``loss(weights, *rest)`` (arrays or ``jax.ShapeDtypeStruct``) and find its products
    of data by weights (see the module's docstring), and with ``narrow`` its narrow products
    (:func:`narrow_product`)."""
    closed, out_shape = jax.make_jaxpr(loss, return_shape=True)(weights, *rest)
    n_weights = len(jax.tree.leaves(weights))
    n_args = len(jax.tree.leaves((weights, *rest)))
    found: dict[int, set[int]] = {}
    equations: set[int] = set()
    narrow_equations: set[int] | None = set() if narrow else None
    _scan(closed.jaxpr, [i < n_weights for i in range(n_args)],
          [i if i < n_weights else None for i in range(n_args)], found, equations, narrow_equations)
    contracted = {i: next(iter(k)) for i, k in found.items() if len(k) == 1}
    return DataProducts(closed, jax.tree.structure(out_shape), contracted, frozenset(equations),
                        frozenset(narrow_equations or ()))


def _is_data_product(equation, weighted: list[bool]) -> bool:
    if equation.primitive.name != "dot_general":
        return False
    (_, rhs_contract), (lhs_batch, rhs_batch) = equation.params["dimension_numbers"]
    return (not lhs_batch and not rhs_batch and not weighted[0] and weighted[1]
            and len(rhs_contract) > 0 and tuple(rhs_contract) == tuple(range(len(rhs_contract))))


def _scan(jaxpr: Jaxpr, weighted: list[bool], sources: list, found: dict, equations: set,
          narrow: set | None = None) -> tuple[list[bool], bool]:
    """Mark ``jaxpr``'s data products (and, ``narrow`` a set, its narrow products), and the
    ``jit`` equations that hold one (descending into them); ``weighted``: which inputs depend on
    the weights, ``sources``: which are a weight array itself (its index) or None. Returns which
    outputs depend on the weights, and whether ``jaxpr`` holds a product to replace."""
    depends = dict(zip(jaxpr.invars, weighted, strict=True))
    source = dict(zip(jaxpr.invars, sources, strict=True))

    def weighted_var(var) -> bool:
        return not isinstance(var, Literal) and depends.get(var, False)

    holds = False
    for equation in jaxpr.eqns:
        inputs = [weighted_var(var) for var in equation.invars]
        if equation.primitive.name == "jit":
            inner_sources = [None if isinstance(var, Literal) else source.get(var) for var in equation.invars]
            outputs, inner_holds = _scan(equation.params["jaxpr"].jaxpr, inputs, inner_sources, found, equations,
                                         narrow)
            if inner_holds:  # evaluate inlines it
                equations.add(id(equation))
                holds = True
        else:
            outputs = [any(inputs)] * len(equation.outvars)
            # an equation may have no inputs at all (iota: jax.nn.one_hot's arange)
            right = equation.invars[-1] if equation.invars else None
            weight = None if right is None or isinstance(right, Literal) else source.get(right)
            if _is_data_product(equation, inputs) and weight is not None:
                (_, rhs_contract), _ = equation.params["dimension_numbers"]
                found.setdefault(weight, set()).add(len(rhs_contract))
                equations.add(id(equation))
                holds = True
            elif narrow is not None and weight is not None and _is_narrow_product(equation, inputs):
                narrow.add(id(equation))
                holds = True
        for var, output in zip(equation.outvars, outputs, strict=True):
            depends[var] = output
    return [weighted_var(var) for var in jaxpr.outvars], holds


def evaluate(products: DataProducts, *args) -> Any:
    """The traced loss on ``args``, its data products taken by :func:`data_product` and its
    narrow products by :func:`narrow_product`."""
    closed = products.jaxpr
    outs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args), products.equations, products.narrow)
    return jax.tree.unflatten(products.out_tree, outs)


def _evaluate(jaxpr: Jaxpr, consts, args, equations: frozenset[int], narrow: frozenset[int]) -> list:
    env: dict = {}

    def read(var):
        return var.val if isinstance(var, Literal) else env[var]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for equation in jaxpr.eqns:
        values = [read(var) for var in equation.invars]
        if equation.primitive.name == "jit" and id(equation) in equations:
            inner = equation.params["jaxpr"]
            outs = _evaluate(inner.jaxpr, inner.consts, values, equations, narrow)
        elif id(equation) in narrow:
            outs = [narrow_product(equation)(*values)]
        elif id(equation) in equations:
            outs = [data_product(equation)(*values)]
        else:
            with equation.ctx.manager:
                outs = equation.primitive.bind(*values, **equation.primitive.get_bind_params(equation.params))
            outs = outs if equation.primitive.multiple_results else [outs]
        env.update(zip(equation.outvars, outs, strict=True))
    return [read(var) for var in jaxpr.outvars]

