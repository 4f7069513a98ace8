"""What epsilon did (eps-dominated share, effective step size) and the baseline optimizers
(adam, adagrad, sgd), each against independent references: NumPy transcriptions of the
formulas in docs/conventions.md, torch.optim where installed, and the engine against a NumPy
run of the quadratic task."""

import csv
import importlib.util
import io
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from epsweep.cli import main
from epsweep.config import RunConfig
from epsweep.engine import DIAGNOSTIC_POINTS, trees
from epsweep.engine.programs import build_programs
from epsweep.engine.spec import TrainSpec, program_hyperparameters
from epsweep.engine.state import program_input
from epsweep.grid import Grid
from epsweep.optim import (
    CONVENTIONS,
    denominator_terms,
    eps_diagnostics,
    make_optimizer,
    moving_parameters,
)
from epsweep.optim.diagnostics import EXACT_FLOAT_COUNT, selected_and_dominated
from epsweep.runner import sweep

LR = 0.01
STEPS = 120


def fixed_gradients(steps=STEPS, seed=0):
    """A dict of two arrays, 7 + 6 parameters spanning 1e-4 to 10 in gradient scale, so that
    eps matters for some of them; the last step's gradient has exact zeros (parameters that
    do not move)."""
    rng = np.random.default_rng(seed)
    scales = {"w": np.logspace(-4, 1, 7), "b": np.logspace(-3, 0.5, 6).reshape(2, 3)}
    grads = [{k: rng.normal(size=s.shape) * s for k, s in scales.items()} for _ in range(steps)]
    grads[-1]["w"][[0, 3]] = 0.0
    grads[-1]["b"][1, 2] = 0.0
    return grads


def stack(grads):
    return {k: jnp.asarray(np.stack([g[k] for g in grads]), jnp.float32) for k in grads[0]}


P0 = {"w": np.linspace(-1, 1, 7), "b": np.linspace(0.5, -0.5, 6).reshape(2, 3)}


def run_optimizer(optimizer, grads, *, lr=LR, decay=0.9, eps=1e-8, momentum=0.0, convention="optax", centered=False):
    """(trajectory of params, final optimizer state, last updates) over ``grads``."""
    opt = make_optimizer(optimizer, lr, decay, eps, momentum=momentum, convention=convention, centered=centered)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), P0)

    @jax.jit
    def run(params, gs):
        def step(carry, g):
            params, state, _ = carry
            updates, state = opt.update(g, state, params)
            return (optax.apply_updates(params, updates), state, updates), optax.apply_updates(params, updates)

        zeros = jax.tree.map(jnp.zeros_like, params)
        return jax.lax.scan(step, (params, opt.init(params), zeros), gs)

    (_, state, last_updates), trajectory = run(params, stack(grads))
    return jax.tree.map(np.asarray, trajectory), state, jax.tree.map(np.asarray, last_updates)


# --- NumPy references -----------------------------------------------------------------------


def numpy_second_moment(optimizer, convention, decay, centered, grads):
    """Per parameter array: (stat, denominator) of docs/conventions.md after all ``grads``."""
    out = {}
    for k in grads[0]:
        v = np.ones_like(P0[k]) if (optimizer, convention) == ("rmsprop", "tf1") else np.zeros_like(P0[k])
        gbar = np.zeros_like(P0[k])
        s = np.full_like(P0[k], 0.1)
        for g in grads:
            v = decay * v + (1 - decay) * g[k] ** 2
            gbar = decay * gbar + (1 - decay) * g[k]
            s = s + g[k] ** 2
        out[k] = {"v": v - gbar**2 if centered else v, "s": s}
    return out


def numpy_terms(optimizer, convention, decay, eps, centered, grads):
    moments = numpy_second_moment(optimizer, convention, decay, centered, grads)
    terms = {}
    for k, m in moments.items():
        if optimizer == "adagrad":
            stat = m["s"]
            terms[k] = (stat, np.sqrt(stat + eps))
        elif optimizer == "adam":
            stat = np.sqrt(m["v"] / (1 - decay ** len(grads)))
            terms[k] = (stat, stat + eps)
        elif convention == "pytorch":
            stat = np.sqrt(m["v"])
            terms[k] = (stat, stat + eps)
        else:
            terms[k] = (m["v"], np.sqrt(m["v"] + eps))
    return terms


def numpy_trajectory(optimizer, grads, *, lr=LR, decay=0.9, eps=1e-8, momentum=0.0):
    """adam (b1 0.9, b2 = decay), adagrad (s0 0.1, eps inside the root), sgd, in float64."""
    p = {k: v.astype(np.float64).copy() for k, v in P0.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    s = {k: np.full_like(x, 0.1) for k, x in p.items()}
    out = []
    for t, g in enumerate(grads, start=1):
        for k in p:
            if optimizer == "adam":
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v[k] = decay * v[k] + (1 - decay) * g[k] ** 2
                p[k] = p[k] - lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - decay**t)) + eps)
            elif optimizer == "adagrad":
                s[k] = s[k] + g[k] ** 2
                p[k] = p[k] - lr * g[k] / np.sqrt(s[k] + eps)
            else:
                m[k] = momentum * m[k] + g[k]
                p[k] = p[k] - lr * m[k]
        out.append({k: x.copy() for k, x in p.items()})
    return {k: np.array([o[k] for o in out]) for k in p}


# --- the denominator's terms and the diagnostics ----------------------------------------------

# eps chosen per placement so that it dominates some parameters and not others
TERM_CASES = [
    dict(optimizer="rmsprop", convention=c, centered=cen, eps={"pytorch": 1e-2, "tf1": 0.1}.get(c, 1e-4), decay=0.9)
    for c, cen in itertools.product(CONVENTIONS, (False, True))
] + [
    dict(optimizer="adam", convention="optax", centered=False, eps=1e-2, decay=0.99),
    dict(optimizer="adagrad", convention="optax", centered=False, eps=0.5, decay=0.9),
]


def term_id(case):
    return "{optimizer}-{convention}-{c}".format(**case, c="centered" if case["centered"] else "plain")


@pytest.mark.parametrize("size", [1000, EXACT_FLOAT_COUNT - 1, EXACT_FLOAT_COUNT + 3])
def test_the_counts_of_selected_and_eps_dominated_parameters_are_exact(size):
    """One float32 sum below 2^24 elements, int32 sums from there: a float32 sum of 2^24 + 3 ones
    cannot be exact (float32 has no odd integers above 2^24), and neither count may be off by one."""
    rng = np.random.default_rng(size)
    stat = rng.random(size, dtype=np.float32)
    selected = np.ones(size, bool)
    selected[rng.integers(0, size, 7)] = False  # a few not selected, some of them dominated
    selected[:3] = True
    got = jax.jit(selected_and_dominated)(stat, jnp.float32(0.5), selected)
    assert got.dtype == jnp.int32
    assert got.tolist() == [int(selected.sum()), int(((0.5 > stat) & selected).sum())]
    all_ones = jax.jit(selected_and_dominated)(stat, jnp.float32(2.0), np.ones(size, bool))
    assert all_ones.tolist() == [size, size]


@pytest.mark.parametrize("case", TERM_CASES, ids=term_id)
def test_denominator_terms_and_diagnostics_match_numpy(case):
    grads = fixed_gradients(steps=30)
    _, state, last_updates = run_optimizer(case["optimizer"], grads, eps=case["eps"], decay=case["decay"],
                                           convention=case["convention"], centered=case["centered"])
    terms = denominator_terms(state, case["optimizer"], case["convention"])
    ref = numpy_terms(grads=grads, **case)
    for k, (stat, denominator) in ref.items():
        np.testing.assert_allclose(terms.stat[k], stat, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(terms.denominator[k], denominator, rtol=1e-4)
    assert float(terms.eps) == pytest.approx(case["eps"])

    # the denominator is what the last update divided by (no momentum here)
    if case["optimizer"] != "adam":
        for k in ref:
            np.testing.assert_allclose(last_updates[k], -LR * grads[-1][k] / ref[k][1], rtol=2e-4, atol=1e-10)

    # the diagnostics over the parameters the last gradient moved
    moving = {k: grads[-1][k] != 0 for k in ref}
    stats = np.concatenate([ref[k][0][moving[k]] for k in ref])
    effective = np.concatenate([(LR / ref[k][1])[moving[k]] for k in ref])
    expected_share = np.mean(case["eps"] > stats)
    assert 0 < expected_share < 1, "the case should have parameters on both sides"
    got = eps_diagnostics(state, case["optimizer"], case["convention"],
                          moving_parameters(jax.tree.map(jnp.asarray, grads[-1])))
    assert float(got["eps_dominated"]) == pytest.approx(expected_share, abs=1e-6)
    assert float(got["effective_lr"]) == pytest.approx(np.median(effective), rel=1e-4)
    # over every parameter when no selection is given
    every = eps_diagnostics(state, case["optimizer"], case["convention"])
    all_stats = np.concatenate([ref[k][0].ravel() for k in ref])
    assert float(every["eps_dominated"]) == pytest.approx(np.mean(case["eps"] > all_stats), abs=1e-6)


def test_frozen_arrays_and_zero_gradients_are_not_counted():
    grads = fixed_gradients(steps=30)
    _, state, _ = run_optimizer("rmsprop", grads, eps=1e-4)
    last = jax.tree.map(jnp.asarray, grads[-1])
    where = moving_parameters(last, {"w": True, "b": False})
    assert not np.asarray(where["b"]).any() and np.asarray(where["w"]).sum() == 5  # 7 minus 2 zeros
    v = numpy_second_moment("rmsprop", "optax", 0.9, False, grads)["w"]["v"][grads[-1]["w"] != 0]
    got = eps_diagnostics(state, "rmsprop", "optax", where)
    assert float(got["eps_dominated"]) == pytest.approx(np.mean(1e-4 > v))
    assert float(got["effective_lr"]) == pytest.approx(np.median(LR / np.sqrt(v + 1e-4)), rel=1e-4)


MEDIAN_CASES = [[], [np.nan] * 3, [1.0], [2.0, 1.0], [-0.0, 0.0], [-0.0, 0.0, -0.0], [np.inf, -np.inf, 1.0],
                [3, 3, 3, 1], [-1e-45, 1e-45], [np.inf, np.inf], [-3e38, 3e38, 1.0],
                [5, np.nan, 1, np.nan, 2, 8], [1e30, -1e-30, 7, 7, 7, 7, 2]]


def _median_reference(x: np.ndarray) -> np.float32:
    """NumPy's middle order statistics, combined as jnp.nanmedian combines them: the middle
    value for an odd count, 0.5 a + 0.5 b for an even one."""
    v = np.sort(x[~np.isnan(x)])
    if not len(v):
        return np.float32(np.nan)
    a, b = v[(len(v) - 1) // 2], v[len(v) // 2]
    return a if len(v) % 2 else np.float32(a * np.float32(0.5) + b * np.float32(0.5))


def _bits(x) -> np.ndarray:
    """float32 bit patterns, zeros unsigned (the sign of a zero median is not specified)."""
    x = np.asarray(x, np.float32)
    return np.where(x == 0, np.float32(0), x).view(np.uint32)


@pytest.mark.parametrize("counting", ["bisection", "histograms"])
def test_nanmedian_without_sorting_equals_the_order_statistics(counting, monkeypatch):
    """The median found by bisection, or by histograms (CPU, large vectors), without sorting
    (XLA's CPU sort is slow) against NumPy's sorted middle values, bit for bit: edge cases
    (empty, all NaN, ties, signed zeros, infinities, values near the float32 maximum; not a
    lone subnormal, which XLA's CPU flushes to zero, nor two values whose sum overflows, which
    XLA's simplifier turns into (a + b) / 2: as in jnp.nanmedian), random vectors over 60
    decades with NaNs and ties (NaN-padded to one length, vmapped), and a vector past
    HISTOGRAM_FROM."""
    from epsweep.optim import diagnostics
    from epsweep.optim.diagnostics import nanmedian

    if counting == "histograms":
        monkeypatch.setattr(diagnostics, "HISTOGRAM_FROM", 0)  # every vector, not only from 2**20 values
    rng = np.random.default_rng(0)
    random_rows = np.full((200, 64), np.nan, np.float32)  # NaN-padded: one compiled call for every length
    for row in random_rows:
        x = (rng.standard_normal(rng.integers(1, 60)) * 10.0 ** rng.integers(-30, 30)).astype(np.float32)
        x[rng.random(len(x)) < rng.choice([0.0, 0.3])] = np.nan
        row[:len(x)] = np.round(x) if rng.random() < 0.3 else x
        row[:] = rng.permutation(row)  # the padding anywhere, not only at the end
    median = jax.jit(lambda values: nanmedian(values))  # traced afresh: HISTOGRAM_FROM is read when tracing
    with np.errstate(all="ignore"):
        for x in (np.array(c, np.float32) for c in MEDIAN_CASES):  # each at its own length
            np.testing.assert_array_equal(_bits(median(x)), _bits(_median_reference(x)), err_msg=str(x))
        np.testing.assert_array_equal(_bits(jax.jit(jax.vmap(nanmedian))(random_rows)),
                                      _bits([_median_reference(row) for row in random_rows]))
        block = rng.random((4, 1001)).astype(np.float32)
        block[1, ::3] = np.nan
        np.testing.assert_array_equal(_bits(jax.jit(jax.vmap(nanmedian))(block)),
                                      _bits([_median_reference(row) for row in block]))
        random = rng.random(1000).astype(np.float32)  # and numpy's own nanmedian where it cannot overflow
        np.testing.assert_array_equal(_bits(median(random)), _bits(np.nanmedian(random)))
        large = rng.lognormal(-8, 3, 2**20 + 3).astype(np.float32)  # histograms on CPU whatever the variant
        large[::7] = np.nan
        np.testing.assert_array_equal(_bits(median(large)), _bits(_median_reference(large)))


def test_sgd_has_no_denominator():
    _, state, _ = run_optimizer("sgd", fixed_gradients(steps=3), momentum=0.9)
    assert denominator_terms(state, "sgd") is None and eps_diagnostics(state, "sgd") is None


# --- the baselines against NumPy and torch.optim ------------------------------------------------

BASELINE_CASES = (
    [dict(optimizer="adam", decay=b2, eps=eps) for b2, eps in itertools.product((0.9, 0.999), (1e-8, 1.0))]
    + [dict(optimizer="adagrad", eps=eps) for eps in (0.0, 1e-8, 1.0)]
    + [dict(optimizer="sgd", momentum=mu) for mu in (0.0, 0.9)]
)


def baseline_id(case):
    return "-".join(f"{k}{v}" if k != "optimizer" else v for k, v in case.items())


@pytest.mark.parametrize("case", BASELINE_CASES, ids=baseline_id)
def test_baselines_match_numpy_formula(case):
    grads = fixed_gradients()
    ours, _, _ = run_optimizer(grads=grads, **case)
    ref = numpy_trajectory(grads=grads, **case)
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("eps", (1e-8, 1.0))
def test_adagrad_is_optax_adagrad(eps):
    grads = fixed_gradients()
    ours, _, _ = run_optimizer("adagrad", grads, eps=eps)
    opt = optax.adagrad(LR, eps=eps)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), P0)
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, params)
        params = optax.apply_updates(params, updates)
    for k in params:
        np.testing.assert_allclose(ours[k][-1], params[k], rtol=1e-5, atol=1e-7)


needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")


def torch_trajectory(factory, grads):
    import torch

    params = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in P0.items()}
    optimizer = factory(list(params.values()))
    out = []
    for g in grads:
        for k, p in params.items():
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        optimizer.step()
        out.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return {k: np.array([o[k] for o in out]) for k in params}


# torch.optim.Adagrad adds eps outside the root (optax inside): the two agree at eps = 0 only
TORCH_CASES = [c for c in BASELINE_CASES if c["optimizer"] != "adagrad" or c["eps"] == 0]


@needs_torch
@pytest.mark.parametrize("case", TORCH_CASES, ids=baseline_id)
def test_baselines_match_torch_optim(case):
    import torch

    if case["optimizer"] == "adam":
        factory = lambda ps: torch.optim.Adam(ps, lr=LR, betas=(0.9, case["decay"]), eps=case["eps"])  # noqa: E731
    elif case["optimizer"] == "adagrad":
        factory = lambda ps: torch.optim.Adagrad(ps, lr=LR, initial_accumulator_value=0.1, eps=0.0)  # noqa: E731
    else:
        factory = lambda ps: torch.optim.SGD(ps, lr=LR, momentum=case["momentum"])  # noqa: E731
    grads = fixed_gradients()
    ref = torch_trajectory(factory, grads)
    ours, _, _ = run_optimizer(grads=grads, **case)
    assert len(grads) >= 100
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=2e-4, atol=2e-6)


def test_baseline_hyperparameters_are_traced():
    grads = {"w": jnp.ones(3)}

    @jax.jit
    def one_step(lr, decay, eps):
        opt = make_optimizer("adam", lr, decay, eps)
        params = {"w": jnp.zeros(3)}
        return opt.update(grads, opt.init(params), params)[0]

    first = one_step(0.1, 0.9, 1e-8)
    second = one_step(0.3, 0.999, 1.0)
    assert one_step._cache_size() == 1 and not np.allclose(first["w"], second["w"])


# --- through the engine -------------------------------------------------------------------------


def numpy_quadratic_diagnostics(optimizer, lr, eps, decay, steps):
    """The quadratic task (f = x^2 + 0.5 y^2 from (-4.5, 4.5)) in float64, with the share
    measured where the engine measures it: every ``steps // DIAGNOSTIC_POINTS``-th step
    counted back from the last."""
    p = np.array([-4.5, 4.5])
    m, v = np.zeros(2), np.zeros(2)
    every = max(1, steps // DIAGNOSTIC_POINTS)
    shares = []
    for t in range(1, steps + 1):
        g = np.array([2 * p[0], p[1]])
        v = decay * v + (1 - decay) * g**2
        if optimizer == "adam":
            m = 0.9 * m + 0.1 * g
            stat = np.sqrt(v / (1 - decay**t))
            denominator = stat + eps
            p = p - lr * (m / (1 - 0.9**t)) / denominator
        else:  # rmsprop, optax convention
            stat, denominator = v, np.sqrt(v + eps)
            p = p - lr * g / denominator
        if (steps - t) % every == 0:
            shares.append(np.mean(eps > stat))
    return shares[-1], np.mean(shares), np.median(lr / denominator), len(shares)


@pytest.mark.parametrize("optimizer, eps, lr", [("rmsprop", 1.0, 0.05), ("adam", 1.0, 0.1)])
def test_engine_diagnostics_match_a_numpy_run(quadratic_task, optimizer, eps, lr):
    steps = 120
    result = sweep(quadratic_task, Grid(eps=(eps,), lr=(lr, 1e30), decay=(0.9,)),
                   RunConfig(steps=steps, optimizers=(optimizer,), curve_points=4))
    share, mean_share, effective_lr, samples = numpy_quadratic_diagnostics(optimizer, lr, eps, 0.9, steps)
    assert samples == 60 and 0.1 < mean_share < 0.9  # the sampling is exercised, eps matters halfway
    record = result.records[0]
    assert record["optimizer"] == optimizer and record["eps_dominated"] == pytest.approx(share)
    # eps stays >= 0.3% away from the statistic at every step here, so float32 agrees exactly;
    # measuring at other steps (e.g. every step) would move the mean by 0.004 or more
    assert record["eps_dominated_mean"] == pytest.approx(mean_share, abs=1e-6)
    assert record["effective_lr"] == pytest.approx(effective_lr, rel=1e-3)
    diverged = result.records[1]  # lr 1e30 diverges; its diagnostics are left out like its losses
    assert diverged["diverged"] and diverged["eps_dominated"] is None and diverged["effective_lr"] is None


@pytest.mark.parametrize("loop_free, several_calls, one_per_device",
                         [(False, False, False), (False, True, False), (True, False, False), (True, False, True)])
def test_engine_diagnostics_count_only_parameters_that_move(loop_free, several_calls, one_per_device):
    """Which parameters the eps diagnostics count: those that train and whose gradient at that
    step is not zero. f = 3x + c . k[0] + |y|^2 + relu(w): x and the first row of the dense
    kernel k train (the looping program keeps kernels transposed); the four y are frozen
    (their gradient is not zero, their statistic grows); k's second row and z train with a
    zero gradient; w moves until it crosses 0, then its gradient is 0. Counting any of these
    wrongly moves the share or the median effective lr, which ``finish`` takes from the final
    state and the last step's moving parameters: after one call or one per step (loop-free,
    vmapped over several settings a device, or one a device: every program a plain call)."""
    from epsweep.engine.compiled import compiled_programs
    from epsweep.engine.driver import train_runs
    from epsweep.engine.spec import TrainSpec
    from epsweep.tasks.task import Task

    c = np.array([1.0, 2.0, 0.5])

    def init(rng):
        return {"x": jnp.float32(-4.5), "k": {"kernel": jnp.ones((2, 3), jnp.float32)},
                "y": jnp.full(4, 3.0, jnp.float32), "z": jnp.ones(2, jnp.float32), "w": jnp.float32(1.0)}, {}

    def loss(params, state, x, y, rng):
        return (3 * params["x"] + jnp.dot(c, params["k"]["kernel"][0]) + jnp.sum(params["y"] ** 2)
                + jax.nn.relu(params["w"])), state

    task = Task("moving", init, loss, None, None, metric_name=None, loop_free_on_cpu=loop_free,
                settings_per_cpu_device=1 if one_per_device else None,
                trainable=lambda params: {"x": True, "k": {"kernel": True}, "y": False, "z": True, "w": True})
    steps, lr, decay = 40, 0.5, 0.9
    spec = TrainSpec(steps=steps, batch_size=1, curve_points=4)
    if jax.devices()[0].platform == "cpu":
        assert compiled_programs(task, spec).loop_free == loop_free
    eps = np.array([10.0, 1.0])
    h = {"eps": eps, "lr": np.full(2, lr), "decay": np.full(2, decay), "momentum": np.zeros(2)}
    out = train_runs(task, spec, h, np.array([0]), progress=(lambda done, total: None) if several_calls else None)
    for j, e in enumerate(eps):  # float64 NumPy, optax's rmsprop: nu = decay nu + (1 - decay) g^2
        w, nu, nu_w, every, shares = 1.0, np.zeros(4), 0.0, max(1, steps // DIAGNOSTIC_POINTS), []
        g = np.array([3.0, *c])  # x and k's first row: constant gradients
        for t in range(steps):
            g_w = 1.0 if w > 0 else 0.0
            nu = decay * nu + (1 - decay) * g**2
            nu_w = decay * nu_w + (1 - decay) * g_w**2
            w -= lr * g_w / np.sqrt(nu_w + e)
            stats = np.append(nu, nu_w) if g_w else nu
            assert np.min(np.abs(stats - e)) > 1e-3 * e  # float32 compares like float64 here
            if (steps - 1 - t) % every == 0:
                shares.append(np.mean(e > stats))
        assert w < 0 and (e == 10.0 or 0 < shares[-1] < np.mean(shares) < 1)  # w stopped; eps 1: the share falls
        assert out.eps_dominated[0, j] == pytest.approx(shares[-1])
        assert out.eps_dominated_mean[0, j] == pytest.approx(np.mean(shares), abs=1e-6)
        assert out.effective_lr[0, j] == pytest.approx(np.median(lr / np.sqrt(nu + e)), rel=1e-5)


def test_eps_one_dominates_and_tiny_eps_does_not_on_digits(mlp_task):
    """The folklore in numbers: at lr 1e-3 an eps of 1 is (almost) the whole denominator of every
    parameter, so the step is lr / sqrt(v + 1) ~ lr; an eps of 1e-8 is almost nowhere."""
    result = sweep(mlp_task, Grid(eps=(1e-8, 1.0), lr=(1e-3,)), RunConfig(steps=30, batch_size=16, curve_points=10))
    tiny, one = result.records
    assert one["eps_dominated"] > 0.99 and one["eps_dominated_mean"] > 0.99
    assert one["effective_lr"] == pytest.approx(1e-3, rel=0.01)
    assert tiny["eps_dominated"] < 0.1 and tiny["eps_dominated_mean"] < 0.1
    assert tiny["effective_lr"] > 10 * 1e-3
    assert {r["optimizer"] for r in result.records} == {"rmsprop"}
    assert all(0 <= run["eps_dominated"] <= 1 for run in result.runs)


def test_optimizer_flag_through_the_cli_and_csv(capsys):
    code = main(["grid", "--task", "quadratic", "--steps", "20", "--lr", "0.1", "--eps", "1e-8", "1",
                 "--optimizer", "rmsprop", "adagrad,sgd", "--convention", "optax", "pytorch", "-f", "csv", "-q"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = list(csv.DictReader(io.StringIO(out.out)))
    pairs = [(r["optimizer"], r["convention"]) for r in rows]
    assert pairs == [("rmsprop", "optax")] * 2 + [("rmsprop", "pytorch")] * 2 + [("adagrad", "optax")] * 2 + [
        ("sgd", "optax")]  # conventions are RMSProp's; each other optimizer is trained once; sgd has no eps
    assert [r["eps"] for r in rows if r["optimizer"] == "sgd"] == [""] and {
        r["decay"] for r in rows if r["optimizer"] == "adagrad"} == {""}  # axes they do not use
    for row in rows:
        if row["optimizer"] == "sgd":
            assert row["eps_dominated"] == row["eps_dominated_mean"] == row["effective_lr"] == ""
        else:
            assert 0 <= float(row["eps_dominated"]) <= 1 and 0 <= float(row["eps_dominated_mean"]) <= 1
            assert float(row["effective_lr"]) > 0
    rms_eps1 = next(r for r in rows if r["optimizer"] == "rmsprop" and float(r["eps"]) == 1.0)
    assert float(rms_eps1["eps_dominated"]) == 0.0  # on the quadratic v >> 1 after 20 steps from (-4.5, 4.5)


def test_unknown_optimizer_is_a_one_line_error(capsys):
    assert main(["grid", "--optimizer", "lion"]) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'lion'" in err and err.count("\n") == 1


@pytest.mark.parametrize("convention", ["optax", "pytorch"])
def test_the_effective_lr_is_the_median_of_lr_over_each_denominator_to_the_bit(mlp_task, convention):
    """``finish`` divides lr by each parameter's denominator as float32 division does, on the
    moments it flattens first (one kernel, not one per array): XLA would otherwise rewrite
    lr / sqrt(v + eps) as lr * rsqrt(v + eps), a rounding more (one or two float steps off in
    78 of the benchmark's 256 settings). The reference: NumPy's float32 over the trained state's second moments."""
    spec = TrainSpec(steps=9, batch_size=16, curve_points=3, convention=convention)
    init, train, _, finish, _ = build_programs(mlp_task, spec)
    eps = np.array([1e-8, 1e-4, 0.3, 1.0, 2.5])
    h = program_hyperparameters({"eps": eps, "lr": np.geomspace(1e-4, 0.3, 5), "decay": np.full(5, 0.9),
                                 "momentum": np.zeros(5)})
    seeds = jnp.asarray([3, 4], jnp.uint32)
    data = mlp_task.data
    state = jax.jit(init)(h, seeds, mlp_task.constants)
    state, _ = jax.jit(train)(state, h, seeds, 0, spec.steps, data.x_train, data.y_train)
    zeros = jnp.zeros((2, 5), jnp.float32)
    got = np.asarray(jax.jit(finish)(program_input("finish", state), zeros, zeros, jnp.float32(1)).effective_lr)
    runs = state.runs
    nus = [np.asarray(leaf) for leaf in jax.tree.leaves(runs.opt_state.inner_state[0].nu)]
    for s, j in itertools.product(range(2), range(5)):
        nu = np.concatenate([leaf[s, j].ravel() for leaf in nus])
        eps32 = np.float32(h["eps"][j])
        denominator = np.sqrt(nu) + eps32 if convention == "pytorch" else np.sqrt(nu + eps32)
        values = np.sort((np.float32(h["lr"][j]) / denominator)[np.asarray(runs.moving[s, j])])
        middle = (len(values) - 1) // 2
        low, high = values[middle], values[len(values) // 2]
        expected = low if len(values) % 2 else np.float32(0.5) * low + np.float32(0.5) * high
        assert got[s, j] == expected, (s, j, got[s, j], expected)


def test_flat_like_flattens_the_moments_and_nothing_else():
    params = {"w": jnp.ones((2, 3)), "b": jnp.full(3, 2.0)}
    opt = make_optimizer("rmsprop", 0.1, 0.9, 1e-4, momentum=0.5, centered=True)
    state = opt.init(params)
    flat = trees.flat_like(state, params)
    moments = optax.ScaleByRStdDevState, optax.TraceState
    for before, after in zip(jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, moments)),
                             jax.tree.leaves(flat, is_leaf=lambda n: isinstance(n, moments)), strict=True):
        if isinstance(before, moments):  # every field an array per parameter array, now one vector
            assert all(np.array_equal(trees.flat(b), a) for b, a in zip(before, after, strict=True))
        else:  # hyperparameters and counts as they were
            assert np.shape(before) == np.shape(after) and np.array_equal(before, after)
    assert jax.tree.structure(trees.flat_like(state, {"w": jnp.ones(6), "b": jnp.ones(3)})) == jax.tree.structure(state)
    mixed = opt.init({"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(3)})  # as they are: one dtype would change
    assert jax.tree.structure(trees.flat_like(mixed, params)) == jax.tree.structure(mixed)
    one = opt.init(jnp.float32(1.0))  # a bare scalar: the counts and hyperparameters look like it
    assert [np.shape(x) for x in jax.tree.leaves(trees.flat_like(one, jnp.float32(1.0)))] == [
        np.shape(x) for x in jax.tree.leaves(one)]
