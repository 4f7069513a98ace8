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
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal


class DataProducts(NamedTuple):
    """A loss traced once, and its products of data by weights.

    ``contracted``: for each weight array (by its index in ``jax.tree.leaves(weights)``) that is
    the right operand of such a product, how many of its leading dimensions the product
    contracts (1 for a dense kernel (in, out)). ``equations``: ids of those products' equations
    in ``jaxpr`` or in a ``jit`` inside it, and of every ``jit`` equation that holds one."""

    jaxpr: ClosedJaxpr
    out_tree: Any
    contracted: dict[int, int]
    equations: frozenset[int]


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


def find_data_products(loss, weights, *rest) -> DataProducts:
    """Trace ``loss(weights, *rest)`` (arrays or ``jax.ShapeDtypeStruct``) and find its products
    of data by weights (see the module's docstring)."""
    closed, out_shape = jax.make_jaxpr(loss, return_shape=True)(weights, *rest)
    n_weights = len(jax.tree.leaves(weights))
    n_args = len(jax.tree.leaves((weights, *rest)))
    found: dict[int, set[int]] = {}
    equations: set[int] = set()
    _scan(closed.jaxpr, [i < n_weights for i in range(n_args)],
          [i if i < n_weights else None for i in range(n_args)], found, equations)
    contracted = {i: next(iter(k)) for i, k in found.items() if len(k) == 1}
    return DataProducts(closed, jax.tree.structure(out_shape), contracted, frozenset(equations))


def _is_data_product(equation, weighted: list[bool]) -> bool:
    if equation.primitive.name != "dot_general":
        return False
    (_, rhs_contract), (lhs_batch, rhs_batch) = equation.params["dimension_numbers"]
    return (not lhs_batch and not rhs_batch and not weighted[0] and weighted[1]
            and len(rhs_contract) > 0 and tuple(rhs_contract) == tuple(range(len(rhs_contract))))


def _scan(jaxpr: Jaxpr, weighted: list[bool], sources: list, found: dict, equations: set) -> tuple[list[bool], bool]:
    """Mark ``jaxpr``'s data products, and the ``jit`` equations that hold one (descending into
    them); ``weighted``: which inputs depend on the weights, ``sources``: which are a weight
    array itself (its index) or None. Returns which outputs depend on the weights, and whether
    ``jaxpr`` holds a data product."""
    depends = dict(zip(jaxpr.invars, weighted, strict=True))
    source = dict(zip(jaxpr.invars, sources, strict=True))

    def weighted_var(var) -> bool:
        return not isinstance(var, Literal) and depends.get(var, False)

    holds = False
    for equation in jaxpr.eqns:
        inputs = [weighted_var(var) for var in equation.invars]
        if equation.primitive.name == "jit":
            inner_sources = [None if isinstance(var, Literal) else source.get(var) for var in equation.invars]
            outputs, inner_holds = _scan(equation.params["jaxpr"].jaxpr, inputs, inner_sources, found, equations)
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
        for var, output in zip(equation.outvars, outputs, strict=True):
            depends[var] = output
    return [weighted_var(var) for var in jaxpr.outvars], holds


def evaluate(products: DataProducts, *args) -> Any:
    """The traced loss on ``args``, its data products taken by :func:`data_product`."""
    closed = products.jaxpr
    outs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args), products.equations)
    return jax.tree.unflatten(products.out_tree, outs)


def _evaluate(jaxpr: Jaxpr, consts, args, equations: frozenset[int]) -> list:
    env: dict = {}

    def read(var):
        return var.val if isinstance(var, Literal) else env[var]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for equation in jaxpr.eqns:
        values = [read(var) for var in equation.invars]
        if equation.primitive.name == "jit" and id(equation) in equations:
            inner = equation.params["jaxpr"]
            outs = _evaluate(inner.jaxpr, inner.consts, values, equations)
        elif id(equation) in equations:
            outs = [data_product(equation)(*values)]
        else:
            with equation.ctx.manager:
                outs = equation.primitive.bind(*values, **equation.primitive.get_bind_params(equation.params))
            outs = outs if equation.primitive.multiple_results else [outs]
        env.update(zip(equation.outvars, outs, strict=True))
    return [read(var) for var in jaxpr.outvars]

