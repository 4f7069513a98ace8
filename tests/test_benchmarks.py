"""The benchmark's own arithmetic, checked against JAX: the FLOPs it counts for a training step
of the MLP (against the matrix products in the gradient's jaxpr) and how it extrapolates a loop."""

from __future__ import annotations

import doctest
import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp

from epsweep.tasks import build_task

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sweep.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_sweep", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _matmul_flops(jaxpr) -> int:
    """2 x (output elements) x (contracted length) summed over every dot_general, nested calls included."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                total += _matmul_flops(inner)
    return total


def test_flops_per_setting_step_are_the_gradients_matrix_products():
    bench = _bench_module()
    task = build_task("mlp")
    params, state = task.init(jax.random.key(0))
    x = jnp.zeros((bench.BATCH, *task.data.x_train.shape[1:]), jnp.float32)
    y = jnp.zeros((bench.BATCH,), jnp.int32)
    grad = jax.value_and_grad(task.loss, has_aux=True)
    jaxpr = jax.make_jaxpr(grad)(params, state, x, y, jax.random.key(1)).jaxpr
    assert _matmul_flops(jaxpr) == bench.FLOP_PER_SETTING_STEP == 1_294_336


def test_extrapolation_doctests():
    failures, tried = doctest.testmod(_bench_module())
    assert tried > 0 and failures == 0
