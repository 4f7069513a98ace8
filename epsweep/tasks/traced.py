"""A task's functions traced on shapes alone (nothing runs, no JAX backend starts): the checks
:func:`~epsweep.tasks.own.flax_task` makes of a model (and of a frozen feature extractor in
front of it), and the fingerprint of what it computes that keys its compiled programs."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

from epsweep.collector import while_tracing
from epsweep.data.dataset import Dataset
from epsweep.errors import UserError
from epsweep.tasks.task import Features, Task

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")  # an object's address: its text differs between processes


def _walk_primitives(jaxpr) -> set[str]:
    """The names of every primitive a jaxpr uses, sub-jaxprs included."""
    from jax.extend.core import jaxprs_in_params

    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jaxprs_in_params(eqn.params):
            names |= _walk_primitives(sub)
    return names


def _shapes(tree) -> tuple:
    import jax

    leaves, treedef = jax.tree.flatten(tree)
    return str(treedef), tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves)


def _check_parameters(params, name: str) -> int:
    """A model must have parameters to train, and only floating-point ones (a gradient is taken
    with respect to every one of them). Returns how many it has."""
    import jax
    import jax.numpy as jnp

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    count = sum(math.prod(leaf.shape) for _, leaf in leaves)
    if count == 0:
        raise UserError(f"model {name} has no parameters to train")
    for path, leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            hint = "" if jnp.issubdtype(leaf.dtype, jnp.complexfloating) else " (keep counters in another collection)"
            raise UserError(f"model {name}: parameter {jax.tree_util.keystr(path) or '()'} is {leaf.dtype}; only "
                            f"real floating-point parameters train{hint}")
    return count


@while_tracing
def check_task(task: Task, name: str) -> dict:
    """Trace ``task``'s functions on shapes alone (nothing runs, no JAX backend starts): the
    model must accept the data's inputs, its outputs must fit the loss and metric, and its
    state must keep its shapes from step to step. Returns what :func:`flax_task` records: the
    parameter count, whether the model convolves, a signature of its shapes, and a
    ``fingerprint`` of the traced computations at batch 2 (see :func:`fingerprint`)."""
    init, params, state, key = _trace_init(task)
    count = _check_parameters(params, name)
    step, new_state, evaluate = _trace_steps(task, params, state, key, 2, 2)
    if _shapes(new_state) != _shapes(state):
        raise UserError(f"model {name}: its state ({', '.join(map(str, state)) or 'none'}) changes shape or dtype "
                        f"from step to step; only fixed-shape state (BatchNorm statistics, counters) can be carried")
    shapes = (_shapes(params), _shapes(state))
    return {"parameters": int(count), "convolves": "conv_general_dilated" in _walk_primitives(step.jaxpr),
            "shapes": hashlib.blake2b(repr(shapes).encode(), digest_size=8).hexdigest(),
            "fingerprint": _digest(shapes, (init, step, evaluate))}


@while_tracing
def fingerprint(task: Task, batch: int, eval_batch: int) -> str | None:
    """A hash of ``task``'s traced computations: init, the loss and its gradient on ``batch``
    rows, the evaluation on ``eval_batch`` rows (none at 0). The same in every process for the
    same model, loss, metric and shapes; None when their text holds an object's address,
    which changes from process to process."""
    init, params, state, key = _trace_init(task)
    step, _, evaluate = _trace_steps(task, params, state, key, batch, eval_batch)
    return _digest((_shapes(params), _shapes(state)), (init, step, evaluate))


def _trace_init(task: Task) -> tuple:
    import jax

    key = jax.eval_shape(lambda: jax.random.key(0))
    args = (key,) if task.constants is None else (key, task.constants)
    init, (params, state) = jax.make_jaxpr(task.init, return_shape=True)(*args)
    return init, params, state, key


def _trace_steps(task: Task, params, state, key, batch: int, eval_batch: int) -> tuple:
    """The jaxprs of the loss's value and gradient on ``batch`` rows (and the state it gives)
    and of the evaluation on ``eval_batch`` rows (None at 0)."""
    import jax

    data = task.data

    def rows(n: int) -> tuple:
        return (jax.ShapeDtypeStruct((n, *data.input_shape), data.x_train.dtype),
                jax.ShapeDtypeStruct((n, *data.target_shape), data.y_train.dtype))

    step, ((_, new_state), _) = jax.make_jaxpr(jax.value_and_grad(task.loss, has_aux=True), return_shape=True)(
        params, state, *rows(batch), key)
    evaluate = jax.make_jaxpr(task.evaluate)(params, state, *rows(eval_batch)) if eval_batch else None
    return step, new_state, evaluate


def names_an_address(text: str) -> bool:
    """Whether ``text`` (a repr, a traced computation) holds an object's address, which is not
    the same from process to process."""
    return bool(_ADDRESS.search(text))


def _digest(shapes: tuple, jaxprs: tuple) -> str | None:
    jaxprs = [jaxpr for jaxpr in jaxprs if jaxpr is not None]
    if any(names_an_address(str(jaxpr)) for jaxpr in jaxprs):
        return None
    digest = hashlib.sha256(repr(shapes).encode())
    for jaxpr in jaxprs:
        digest.update(str(jaxpr).encode())
        for const in jaxpr.consts:
            const = np.asarray(const)
            digest.update(f"{const.dtype}{const.shape}".encode() + const.tobytes())
    return digest.hexdigest()[:32]


@while_tracing
def trace_extractor(features: Features, data: Dataset) -> tuple:
    """``features.apply(constants, x)`` traced on two of ``data``'s inputs (nothing runs): the
    shape and dtype of one input's features, and a fingerprint of what the extractor computes
    (None when its text names an object's address). It must give one real floating-point array
    with a row per input (else a UserError); what the extractor raises itself passes through."""
    import jax
    import jax.numpy as jnp

    sample = jax.ShapeDtypeStruct((2, *data.input_shape), data.x_train.dtype)
    jaxpr, out = jax.make_jaxpr(features.apply, return_shape=True)(features.constants, sample)
    one = isinstance(out, jax.ShapeDtypeStruct)
    if not one or out.shape[:1] != (2,) or not jnp.issubdtype(out.dtype, jnp.floating):
        given = f"{out.dtype} of shape {out.shape}" if one else type(out).__name__
        raise UserError(f"the feature extractor must return one real floating-point array with a row per input; on "
                        f"inputs of shape {sample.shape} it returns {given}")
    return out.shape[1:], out.dtype, _digest((), (jaxpr,))
