"""Each RMSProp convention against independent references over 120 steps of fixed gradients:
a NumPy transcription of the framework's formula, and the framework itself where installed."""

import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import import_timm

from epsweep.optim import CONVENTIONS, rmsprop

STEPS = 120
LR = 0.01
CASES = [
    dict(convention=c, eps=eps, decay=decay, momentum=mom, centered=cen)
    for c, eps, (decay, mom), cen in itertools.product(
        CONVENTIONS, (1e-8, 1.0), ((0.9, 0.0), (0.99, 0.9)), (False, True)
    )
]


def case_id(case):
    kind = "centered" if case["centered"] else "plain"
    return "{convention}-eps{eps:g}-rho{decay}-mu{momentum}-{c}".format(**case, c=kind)


def fixed_gradients(shape=(7,), steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.logspace(-4, 1, shape[0])  # tiny to large, so eps matters for some coordinates
    return [rng.normal(size=shape) * scales for _ in range(steps)]


def numpy_reference(convention, eps, decay, momentum, centered, grads, p0):
    """The update rules of ../shared/rmsprop-conventions.md, written out in float64."""
    p = p0.astype(np.float64).copy()
    v = np.ones_like(p) if convention == "tf1" else np.zeros_like(p)
    gbar = np.zeros_like(p)
    m = np.zeros_like(p)
    trajectory = []
    for g in grads:
        v = decay * v + (1 - decay) * g**2
        gbar = decay * gbar + (1 - decay) * g
        var = v - gbar**2 if centered else v
        if convention == "pytorch":
            m = momentum * m + g / (np.sqrt(var) + eps)
            p = p - LR * m
        else:  # optax, keras, tf1: eps inside the root, lr inside the momentum buffer
            m = momentum * m + LR * g / np.sqrt(var + eps)
            p = p - m
        trajectory.append(p.copy())
    return np.array(trajectory)


def run_epsweep(case, grads, p0):
    opt = rmsprop(LR, case["decay"], case["eps"], convention=case["convention"],
                  momentum=case["momentum"], centered=case["centered"])
    params = jnp.asarray(p0, jnp.float32)
    state = opt.init(params)

    def step(carry, g):
        params, state = carry
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, trajectory = jax.lax.scan(step, (params, state), jnp.asarray(np.array(grads), jnp.float32))
    return np.asarray(trajectory)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_numpy_formula(case):
    grads = fixed_gradients()
    p0 = np.linspace(-1, 1, 7)
    ours = run_epsweep(case, grads, p0)
    ref = numpy_reference(grads=grads, p0=p0, **case)
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-6)


def bfloat16_reference(convention, eps, decay, momentum, centered, grads, p0):
    """The same rules for bfloat16 parameters: each step computes in float32 from the stored
    bfloat16 values (the hyperparameters exact in float32, not rounded to bfloat16) and stores
    p, v, gbar and m rounded to bfloat16, as PyTorch keeps its state in the parameter's dtype."""
    f32 = np.float32
    rho, eps, mu, lr = f32(decay), f32(eps), f32(momentum), f32(LR)
    # 1 - rho: TF's kernel takes it from float32 rho; the others from the double, rounded once
    one_minus = f32(1) - rho if convention == "tf1" else f32(1 - decay)

    def stored(x):
        return np.asarray(x, f32).astype(jnp.bfloat16).astype(f32)

    p = stored(p0)
    v = np.ones_like(p) if convention == "tf1" else np.zeros_like(p)
    gbar, m = np.zeros_like(p), np.zeros_like(p)
    trajectory, second_moments = [], []
    for g in grads:
        g = stored(g)
        v = one_minus * (g * g) + rho * v
        gbar = one_minus * g + rho * gbar
        var = v - gbar * gbar if centered else v
        if convention == "pytorch":
            m = mu * m + g / (np.sqrt(var) + eps)
            step = -lr * m
        else:
            m = mu * m - lr * (g / np.sqrt(var + eps))
            step = m
        p, v, gbar, m = stored(p + step), stored(v), stored(gbar), stored(m)
        trajectory.append(p)
        second_moments.append(v)
    return np.array(trajectory), np.array(second_moments)


BFLOAT16_CASES = [dict(convention=c, eps=1e-8, decay=0.99, momentum=0.9, centered=cen)
                  for c, cen in itertools.product(CONVENTIONS, (False, True))]


@pytest.mark.parametrize("case", BFLOAT16_CASES, ids=case_id)
def test_bfloat16_parameters_keep_bfloat16_statistics_and_exact_hyperparameters(case):
    """A step inside lax.scan (as the engine's loop) must give back a state of the same types:
    the statistics stay bfloat16 although the float32 hyperparameters promote the arithmetic."""
    grads = fixed_gradients(steps=30)
    p0 = np.linspace(-1, 1, 7)
    opt = rmsprop(LR, case["decay"], case["eps"], convention=case["convention"],
                  momentum=case["momentum"], centered=case["centered"])

    def step(carry, g):
        params, state = carry
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), (params, state.inner_state[0].nu)

    params = jnp.asarray(p0, jnp.bfloat16)
    (_, state), (trajectory, nu) = jax.lax.scan(step, (params, opt.init(params)),
                                                jnp.asarray(np.array(grads), jnp.bfloat16))
    assert {leaf.dtype for leaf in jax.tree.leaves(state.inner_state)} == {jnp.dtype(jnp.bfloat16)}
    assert state.hyperparams["eps"].dtype == jnp.float32 and float(state.hyperparams["eps"]) == np.float32(1e-8)
    ref_trajectory, ref_nu = bfloat16_reference(grads=grads, p0=p0, **case)
    # equal today; one bfloat16 rounding step of slack for XLA's freedom to keep excess precision
    np.testing.assert_allclose(np.asarray(trajectory, np.float32), ref_trajectory, rtol=2**-8, atol=0)
    np.testing.assert_allclose(np.asarray(nu, np.float32), ref_nu, rtol=2**-8, atol=0)


NEAR_ONE = (0.999, 0.99999, 0.9999999)


@pytest.mark.parametrize("decay", NEAR_ONE)
@pytest.mark.parametrize("convention", ["optax", "pytorch", "keras"])
def test_a_decay_near_1_is_the_frameworks_decay(convention, decay):
    """optax, PyTorch and Keras take 1 - rho of a Python float in double and round it once;
    1 - float32(rho) is 19% larger at rho = 0.9999999. The first update, g = 3, lr 0.01,
    eps 1e-8, against the float32 rounding of the frameworks' formula: lr*g/sqrt((1-rho)*g^2)."""
    opt = rmsprop(LR, decay, 1e-8, convention=convention)
    params = jnp.zeros(1, jnp.float32)
    updates, _ = opt.update(jnp.array([3.0], jnp.float32), opt.init(params), params)
    f32 = np.float32
    v = f32(1 - decay) * f32(9)
    expected = f32(LR) * f32(3) / (np.sqrt(v) + f32(1e-8)) if convention == "pytorch" else (
        f32(3) / np.sqrt(v + f32(1e-8)) * f32(LR))
    np.testing.assert_allclose(-float(updates[0]), expected, rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_a_sweep_near_decay_1_follows_torch():
    """The engine's programs get 1 - decay from the grid's double (spec.program_hyperparameters):
    the quadratic task, three steps of torch.optim.RMSprop at rho 0.99999 and 0.9999999."""
    import torch

    from epsweep import Grid, RunConfig, sweep

    result = sweep("quadratic", Grid(eps=(1e-8,), decay=NEAR_ONE[1:], lr=(1e-3,)),
                   RunConfig(steps=3, conventions=("pytorch",)))
    for record in result.records:
        p = torch.tensor([-4.5, 4.5], requires_grad=True)
        opt = torch.optim.RMSprop([p], lr=1e-3, alpha=record["decay"], eps=1e-8)
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = p[0] ** 2 + 0.5 * p[1] ** 2
            loss.backward()
            losses.append(loss.item())
            opt.step()
        np.testing.assert_allclose(record["loss_curve"], losses, rtol=1e-6)


def test_a_hyperparameter_set_in_the_state_as_optax_documents_is_used():
    """optax's way to change an injected hyperparameter: assign it in ``state.hyperparams``."""
    opt = rmsprop(0.1, 0.9, 1e-8)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    state.hyperparams["eps"] = 1e-3
    updates, state = opt.update({"w": jnp.full(3, 0.1)}, state, params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.1 / np.sqrt(0.1 * 0.01 + 1e-3), rtol=1e-5)


def test_hyperparameters_are_traced_and_compile_once():
    """One jitted step serves every hyperparameter value: the second call does not recompile."""
    grads = jnp.ones(3)

    @jax.jit
    def one_step(lr, decay, eps, momentum):
        opt = rmsprop(lr, decay, eps, convention="tf1", momentum=momentum)
        params = jnp.zeros(3)
        updates, state = opt.update(grads, opt.init(params), params)
        return updates, state.hyperparams

    first, hp1 = one_step(0.1, 0.9, 1.0, 0.0)
    second, hp2 = one_step(0.2, 0.5, 1e-8, 0.9)
    assert one_step._cache_size() == 1
    assert float(hp2["eps"]) == pytest.approx(1e-8) and float(hp2["learning_rate"]) == pytest.approx(0.2)
    assert not np.allclose(first, second)


def test_eps_placement_differs_between_conventions():
    """At v = 0 a PyTorch eps of sqrt(e) matches an optax eps of e (first step, no momentum)."""
    g = {"w": jnp.array([0.2])}
    p = {"w": jnp.array([0.5])}
    inside = rmsprop(0.01, 0.9, 1e-4, convention="optax")
    outside = rmsprop(0.01, 0.9, 1e-2, convention="pytorch")
    u_in, _ = inside.update(g, inside.init(p), p)
    u_out, _ = outside.update(g, outside.init(p), p)
    # sqrt(v + 1e-4) vs sqrt(v) + 1e-2 with v = 0.004: close but not equal
    assert float(u_in["w"][0]) == pytest.approx(-0.01 * 0.2 / np.sqrt(0.004 + 1e-4), rel=1e-5)
    assert float(u_out["w"][0]) == pytest.approx(-0.01 * 0.2 / (np.sqrt(0.004) + 1e-2), rel=1e-5)


# --- the frameworks themselves ---------------------------------------------------------

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
needs_timm = pytest.mark.skipif(import_timm() is None, reason="timm not installed")
needs_keras = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras not installed")
FRAMEWORK_CASES = [c for c in CASES if c["convention"] == "optax"]  # hyperparameter combinations


def torch_trajectory(optimizer_factory, grads, p0):
    import torch

    param = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    optimizer = optimizer_factory([param])
    out = []
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        out.append(param.detach().numpy().copy())
    return np.array(out)


@needs_torch
@pytest.mark.parametrize("case", FRAMEWORK_CASES, ids=case_id)
def test_pytorch_convention_matches_torch_optim_rmsprop(case):
    import torch

    grads, p0 = fixed_gradients(), np.linspace(-1, 1, 7)
    ref = torch_trajectory(lambda ps: torch.optim.RMSprop(
        ps, lr=LR, alpha=case["decay"], eps=case["eps"], momentum=case["momentum"], centered=case["centered"]
    ), grads, p0)
    ours = run_epsweep({**case, "convention": "pytorch"}, grads, p0)
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-6)


@needs_timm
@pytest.mark.parametrize("case", FRAMEWORK_CASES, ids=case_id)
def test_tf1_convention_matches_timm_rmsproptf(case):
    import_timm()
    from timm.optim import RMSpropTF

    grads, p0 = fixed_gradients(), np.linspace(-1, 1, 7)
    ref = torch_trajectory(lambda ps: RMSpropTF(
        ps, lr=LR, alpha=case["decay"], eps=case["eps"], momentum=case["momentum"], centered=case["centered"]
    ), grads, p0)
    ours = run_epsweep({**case, "convention": "tf1"}, grads, p0)
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-6)


@needs_keras
@pytest.mark.parametrize("case", FRAMEWORK_CASES, ids=case_id)
def test_keras_convention_matches_keras3_rmsprop(case):
    import keras

    grads, p0 = fixed_gradients(), np.linspace(-1, 1, 7)
    variable = keras.Variable(p0.astype(np.float32))
    optimizer = keras.optimizers.RMSprop(
        learning_rate=LR, rho=case["decay"], epsilon=case["eps"], momentum=case["momentum"], centered=case["centered"]
    )
    ref = []
    for g in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g.astype(np.float32)), variable)])
        ref.append(np.asarray(variable.numpy()).copy())
    ours = run_epsweep({**case, "convention": "keras"}, grads, p0)
    np.testing.assert_allclose(ours, np.array(ref), rtol=5e-4, atol=5e-6)


@pytest.mark.parametrize(("name", "decay", "eps"), [("sgd", None, None), ("adagrad", None, 1e-8)])
def test_an_optimizer_takes_none_for_an_axis_it_does_not_use(name, decay, eps):
    from epsweep.optim import make_optimizer

    params, grads = {"w": jnp.ones(3)}, {"w": jnp.asarray([0.5, -1.0, 2.0])}
    given, reference = make_optimizer(name, 0.1, decay, eps), make_optimizer(name, 0.1, 0.9, 1e-8)
    state, reference_state = given.init(params), reference.init(params)
    for _ in range(3):
        updates, state = given.update(grads, state, params)
        expected, reference_state = reference.update(grads, reference_state, params)
        np.testing.assert_array_equal(updates["w"], expected["w"])
