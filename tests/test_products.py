"""Products of data by weights (engine.products) and the loop's layout (engine.layout), against
NumPy's closed form, JAX's own transpose rule and the loop-free program, which uses neither."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from epsweep.engine import products
from epsweep.engine.driver import train_runs
from epsweep.engine.layout import LoopLayout, loop_layout
from epsweep.engine.spec import TrainSpec
from epsweep.engine.state import Carry

RNG = np.random.default_rng(0)


def product_equation(x, w, contract):
    """The jaxpr equation of dot_general(x, w) contracting ``contract`` (x's dims, w's dims)."""
    jaxpr = jax.make_jaxpr(lambda a, b: jax.lax.dot_general(a, b, (contract, ((), ()))))(x, w)
    (equation,) = jaxpr.jaxpr.eqns
    return equation


# x shape, w shape, (x's contracted dims, w's contracted dims)
PRODUCTS = [
    ((5, 3), (3, 4), ((1,), (0,))),  # a dense layer
    ((2, 5, 3), (3, 4), ((2,), (0,))),  # over a sequence
    ((5, 2, 3), (2, 3, 4), ((1, 2), (0, 1))),  # two contracted dimensions
    ((5, 3, 2), (2, 3, 4), ((2, 1), (0, 1))),  # ... met in the other order
]


@pytest.mark.parametrize("x_shape, w_shape, contract", PRODUCTS)
def test_a_data_product_has_the_plain_products_value_and_gradients(x_shape, w_shape, contract):
    x = RNG.normal(size=x_shape).astype(np.float32)
    w = RNG.normal(size=w_shape).astype(np.float32)
    product = products.data_product(product_equation(x, w, contract))
    y = np.tensordot(x, w, axes=contract)
    cotangent = RNG.normal(size=y.shape).astype(np.float32)
    np.testing.assert_allclose(product(x, w), y, rtol=1e-5, atol=1e-5)

    def plain(a, b):
        return jnp.sum(jax.lax.dot_general(a, b, (contract, ((), ()))) * cotangent)

    ours = jax.grad(lambda a, b: jnp.sum(product(a, b) * cotangent), argnums=(0, 1))(x, w)
    theirs = jax.grad(plain, argnums=(0, 1))(x, w)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.shape == reference.shape
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)
    if x.ndim == 2:  # closed form: dL/dW = x^T g
        np.testing.assert_allclose(ours[1], x.T @ cotangent, rtol=1e-5, atol=1e-5)


# x shape, w shape: a dense layer with few outputs on activations
NARROW = [((5, 3), (3, 4)), ((2, 5, 3), (3, 4)), ((6, 8), (8, 1))]


@pytest.mark.parametrize("x_shape, w_shape", NARROW)
def test_a_narrow_product_has_the_plain_products_value_and_gradients(x_shape, w_shape):
    """Against the closed form, y = x W and with L = sum(c sin y), g = c cos y: dL/dx = g W^T,
    dL/dW = x^T g (rows flattened); one setting and three under vmap (the loop's case). The
    value is taken through jax.vjp, which runs the transposed forward (a plain call runs the
    custom_vjp's primal), and the loss is not linear, so the gradients depend on it too."""
    x = RNG.normal(size=(3, *x_shape)).astype(np.float32)
    w = RNG.normal(size=(3, *w_shape)).astype(np.float32)
    product = products.narrow_product(product_equation(x[0], w[0], ((len(x_shape) - 1,), (0,))))
    y = np.einsum("s...i,sio->s...o", x, w)
    c = RNG.normal(size=y.shape).astype(np.float32)

    def value_and_grads(a, b, c_):
        value = jax.vjp(product, a, b)[0]
        return value, jax.grad(lambda a_, b_: jnp.sum(c_ * jnp.sin(product(a_, b_))), argnums=(0, 1))(a, b)

    one = value_and_grads(x[0], w[0], c[0])
    mapped = jax.vmap(value_and_grads)(x, w, c)
    for s, (value, (dx, dw)) in [(0, one)] + [(s, jax.tree.map(lambda a, s=s: a[s], mapped)) for s in range(3)]:
        g = c[s] * np.cos(y[s])
        np.testing.assert_allclose(value, y[s], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, np.einsum("...o,io->...i", g, w[s]), rtol=1e-4, atol=1e-5)
        rows, g_rows = x[s].reshape(-1, w_shape[0]), g.reshape(-1, w_shape[1])
        np.testing.assert_allclose(dw, rows.T @ g_rows, rtol=1e-4, atol=1e-5)


@pytest.fixture
def narrow_calls(monkeypatch):
    """The narrow products built from now on (their equations), each counted once it has run:
    a product that failed while tracing (the loop would then fall back to the plain loss) is
    not counted."""
    taken = []
    build = products.narrow_product

    def counted(equation):
        product = build(equation)

        def run(*args):
            out = product(*args)
            taken.append(equation)
            return out

        return run

    monkeypatch.setattr(products, "narrow_product", counted)
    return taken


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        hidden = nn.relu(nn.Dense(8)(x))
        return nn.Dense(3)(hidden)


def mlp_loss(params, state, x, y, key):
    logits = MLP().apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state


@pytest.fixture(scope="module")
def mlp():
    x = RNG.normal(size=(6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    params = MLP().init(jax.random.key(0), x)["params"]
    return params, x, y


@pytest.mark.parametrize("narrow", [False, True])
def test_the_first_layer_is_a_data_product_and_the_second_a_narrow_one(mlp, narrow):
    params, x, y = mlp
    found = products.find_data_products(mlp_loss, params, {}, x, y, jax.random.key(1), narrow=narrow)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert {paths[i]: k for i, k in found.contracted.items()} == {"['Dense_0']['kernel']": 1}
    assert len(found.equations) == 1
    assert len(found.narrow) == narrow  # Dense(3) on 6 rows


def two_layers(n, second):
    """A loss of weights {"a": (4, 4), "b": (4, n)} whose second product is ``second(h, b)``,
    h = x a depending on the weights."""
    return lambda w, x: jnp.sum(second(x @ w["a"], w["b"]))


@pytest.mark.parametrize("n, rows, second, expected", [
    (3, 6, lambda h, b: h @ b, 1),
    (3, 6, lambda h, b: jax.jit(lambda u, v: u @ v)(h, b), 1),  # inside a nested jit
    (15, 20, lambda h, b: h @ b, 1),
    (16, 20, lambda h, b: h @ b, 0),  # as many outputs as NARROW_OUTPUTS
    (5, 4, lambda h, b: h @ b, 0),  # more outputs than rows
    (3, 4096, lambda h, b: h @ b, 1),  # an input of 16,384 elements
    (3, 4097, lambda h, b: h @ b, 0),  # ... and one more row
    (3, 6, lambda h, b: h @ (2 * b), 0),  # not the weight itself
    (3, 6, lambda h, b: (h @ b.reshape(3, 4).T), 0),  # the weight's trailing dimension contracted
    (3, 6, lambda h, b: jax.lax.dot_general(h, b, (((1,), (0,)), ((), ())),
                                            precision=(jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT)), 0),
])
def test_which_products_count_as_narrow(n, rows, second, expected, narrow_calls):
    w = {"a": RNG.normal(size=(4, 4)).astype(np.float32), "b": RNG.normal(size=(4, n)).astype(np.float32)}
    x = RNG.normal(size=(rows, 4)).astype(np.float32)
    found = products.find_data_products(two_layers(n, second), w, x, narrow=True)
    assert len(found.narrow) == expected
    value, grads = jax.value_and_grad(lambda w_: products.evaluate(found, w_, x))(w)  # a nested jit is inlined
    assert len(narrow_calls) == expected
    expected_value, expected_grads = jax.value_and_grad(two_layers(n, second))(w, x)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads, expected_grads)
    assert not products.find_data_products(two_layers(n, second), w, x).narrow  # only when asked


@pytest.mark.parametrize("w_shape, loss, expected", [
    ((4, 4), lambda w, x: jax.jit(lambda a, b: a @ b)(x, w), 1),  # inside a nested jit
    ((4, 4), lambda w, x: x @ w.T, 0),  # the weight's trailing dimension contracted
    ((4, 4), lambda w, x: x @ (2 * w), 0),  # not the weight itself
    ((4, 4), lambda w, x: (x @ w) @ w.T, 1),  # the second product's left operand depends on the weight
    ((6, 4, 4), lambda w, x: jax.lax.dot_general(x, w, (((1,), (1,)), ((0,), (0,)))), 0),  # a batch dimension
])
def test_which_products_count_as_data_products(w_shape, loss, expected):
    w = RNG.normal(size=w_shape).astype(np.float32)
    x = RNG.normal(size=(6, 4)).astype(np.float32)
    found = products.find_data_products(lambda w, x: jnp.sum(loss(w, x)), w, x)
    assert len(found.contracted) == expected


def smoothed_loss(params, state, x, y, key):
    """Label smoothing, as Inception's: ``jax.nn.one_hot`` traces an ``iota``, an equation with
    no inputs (it crashed the search for data products: --freeze-base --label-smoothing)."""
    targets = optax.smooth_labels(jax.nn.one_hot(y, 3), 0.1)
    return optax.softmax_cross_entropy(MLP().apply({"params": params}, x), targets).mean(), state


@pytest.mark.parametrize("narrow", [False, True], ids=["data products", "and narrow"])
@pytest.mark.parametrize("loss", [mlp_loss, smoothed_loss], ids=["integer labels", "label smoothing"])
def test_the_rewritten_loss_has_the_losss_value_and_gradient(mlp, loss, narrow):
    params, x, y = mlp
    key = jax.random.key(1)
    found = products.find_data_products(loss, params, {}, x, y, key, narrow=narrow)
    assert list(found.contracted.values()) == [1]  # the first layer's kernel
    assert len(found.narrow) == narrow
    (value, _), grads = jax.value_and_grad(lambda p: products.evaluate(found, p, {}, x, y, key), has_aux=True)(params)
    (expected, _), expected_grads = jax.value_and_grad(loss, has_aux=True)(params, {}, x, y, key)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, expected_grads)


def test_the_loop_layout_moves_data_weights_with_their_statistics_and_undoes_itself(mlp):
    params, x, y = mlp
    S, G = 2, 3  # noqa: N806
    runs_params = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (S, G, *leaf.shape)) + 0, params)
    runs_params = jax.tree.map(lambda leaf: leaf + jnp.arange(leaf.size, dtype=leaf.dtype).reshape(leaf.shape),
                               runs_params)
    opt_state = jax.vmap(jax.vmap(optax.rmsprop(1e-3).init))(runs_params)
    runs = Carry(runs_params, {}, opt_state, *([None] * 6))
    layout = loop_layout(mlp_loss, runs, x, y)
    looped = layout.to_loop({"params": runs.params, "opt_state": runs.opt_state})
    first, second = looped["params"]["Dense_0"]["kernel"], looped["params"]["Dense_1"]["kernel"]
    assert first.shape == (S, 4, G, 8)  # (in, settings, out)
    np.testing.assert_array_equal(first[:, :, 1], runs_params["Dense_0"]["kernel"][:, 1])
    assert second.shape == (S, G, 3, 8)  # swapped: (out, in)
    assert looped["opt_state"][0].nu["Dense_0"]["kernel"].shape == (S, 4, G, 8)
    assert looped["params"]["Dense_0"]["bias"].shape == (S, G, 8)
    back = layout.from_loop(looped)
    jax.tree.map(np.testing.assert_array_equal, back, {"params": runs.params, "opt_state": runs.opt_state})
    axes = layout.run_axes(runs.params)  # where G lies in the loop, from the model's layout
    assert axes == {"Dense_0": {"kernel": 1, "bias": 0}, "Dense_1": {"kernel": 0, "bias": 0}}
    assert LoopLayout().run_axes(runs.params) == 0  # nothing to map specially


def test_the_looped_mlp_trains_as_the_loop_free_program_which_keeps_the_models_layout(mlp_task):
    """The loop takes the first layer's gradient as x^T g with its kernel as (in, settings, out)
    and sums the eps-dominated share array by array; a loop-free program (one step per call)
    keeps every weight as the model has it and sums the share over one flat vector."""
    settings = TrainSpec(steps=12, batch_size=8, curve_points=4)
    h = {"eps": np.array([1e-8, 1e-3, 1.0]), "lr": np.array([1e-2, 3e-3, 1e-2]), "decay": np.full(3, 0.9),
         "momentum": np.zeros(3)}
    loop_free = dataclasses.replace(mlp_task, loop_free_on_cpu=True)
    looped = train_runs(mlp_task, settings, h, np.array([0, 3]))
    stepped = train_runs(loop_free, settings, h, np.array([0, 3]))
    for name in looped._fields:
        np.testing.assert_allclose(getattr(looped, name), getattr(stepped, name), rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_loops_narrow_last_layer_trains_as_the_loop_free_program(mlp_task, narrow_calls):
    """On CPU the loop takes the MLP's last layer (10 classes on a batch of 16) as a narrow
    product; the loop-free program takes it as the model writes it."""
    settings = TrainSpec(steps=11, batch_size=16, curve_points=4)
    h = {"eps": np.array([1e-8, 1e-3, 1.0]), "lr": np.array([1e-2, 3e-3, 1e-2]), "decay": np.full(3, 0.9),
         "momentum": np.zeros(3)}
    looped = train_runs(mlp_task, settings, h, np.array([0, 3]))
    assert narrow_calls  # traced here (no other test trains these settings), without falling back
    stepped = train_runs(dataclasses.replace(mlp_task, loop_free_on_cpu=True), settings, h, np.array([0, 3]))
    for name in looped._fields:
        np.testing.assert_allclose(getattr(looped, name), getattr(stepped, name), rtol=1e-5, atol=1e-6, err_msg=name)


def looped_and_loop_free(task, settings=TrainSpec(steps=10, batch_size=8, curve_points=5)):
    h = {"eps": np.array([1e-8, 1e-3, 1.0]), "lr": np.array([1e-2, 3e-3, 1e-2]), "decay": np.array([0.9, 0.5, 0.9]),
         "momentum": np.zeros(3)}
    return [train_runs(dataclasses.replace(task, loop_free_on_cpu=free), settings, h, np.array([0, 3]))
            for free in (False, True)]


def blobs(n=40, features=6):
    from epsweep.data import Dataset

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, features))
    y = rng.integers(0, 3, n + 12)
    x = (centres[y] + rng.normal(scale=0.8, size=(n + 12, features))).astype(np.float32)
    return Dataset.from_arrays(x[:n], y[:n], x_val=x[n:], y_val=y[n:], name="blobs")


class AveragedDense(nn.Module):
    """A dense layer that keeps a moving average of its kernel in model state, under the same
    name as the kernel (found by a helper probing the layout: state is not a weight)."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        average = self.variable("average", "kernel", lambda: jnp.zeros((x.shape[-1], self.features)))
        if not self.is_initializing():
            average.value = 0.9 * average.value + 0.1 * jax.lax.stop_gradient(kernel)
        return x @ kernel + 0.01 * jnp.sum(average.value)


class AveragingNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.tanh(AveragedDense(16, name="first")(x)))


def bare_vector_task():
    """Least squares with the weights one bare vector (path ()): only the weights and their
    statistics may take the data product's layout, not the loss curve of the same rank."""
    from epsweep.data import Dataset
    from epsweep.tasks.task import Task

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x @ rng.normal(size=6) + 0.1 * rng.normal(size=40)).astype(np.float32)
    data = Dataset.from_arrays(x[:32], y[:32], x_val=x[32:], y_val=y[32:], name="lin")

    def loss(w, state, xb, yb, key):
        return jnp.mean((xb @ w - yb) ** 2), state

    def evaluate(w, state, xb, yb):
        error = (xb @ w - yb) ** 2
        return error, error

    return Task("bare", lambda key: (jax.random.normal(key, (6,)) * 0.1, {}), loss, evaluate, data, metric_name=None)


class HalfNet(nn.Module):
    """bfloat16 weights: their optimizer statistics must stay bfloat16 from step to step, or the
    loop's carry changes type (found as a crash in the looped program)."""

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(16, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)(x))
        return nn.Dense(3, param_dtype=jnp.bfloat16)(x)


@pytest.mark.parametrize("make_task", [lambda: __import__("epsweep").flax_task(AveragingNet(), blobs()),
                                       bare_vector_task, lambda: __import__("epsweep").flax_task(HalfNet(), blobs())],
                         ids=["state named like the kernel", "bare vector", "bfloat16 weights"])
def test_only_weights_and_their_statistics_take_the_data_layout(make_task):
    looped, stepped = looped_and_loop_free(make_task())
    assert np.isfinite(looped.val_loss).all()
    for name in looped._fields:
        np.testing.assert_allclose(getattr(looped, name), getattr(stepped, name), rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_data_weight_is_found_by_its_place_in_the_weights_not_by_its_name():
    """A hidden layer named like the first one, deeper in the tree, keeps the (out, in) swap."""
    S, G = 1, 2  # noqa: N806
    weights = {"Dense_0": {"kernel": np.zeros((S, G, 4, 5))},
               "Block_0": {"Dense_0": {"kernel": np.zeros((S, G, 5, 5))}}}
    index = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(weights)[0]].index(
        "['Dense_0']['kernel']")
    layout = LoopLayout(jax.tree.structure(weights), {index: (1, (4, 5))})
    looped = layout.to_loop({"weights": weights, "statistics": (optax.EmptyState(), weights)})
    for tree in (looped["weights"], looped["statistics"][1]):
        assert tree["Dense_0"]["kernel"].shape == (S, 4, G, 5)
        assert tree["Block_0"]["Dense_0"]["kernel"].shape == (S, G, 5, 5)  # swapped (square here)
    assert layout.run_axes(weights) == {"Dense_0": {"kernel": 1}, "Block_0": {"Dense_0": {"kernel": 0}}}
    jax.tree.map(np.testing.assert_array_equal, layout.from_loop(looped),
                 {"weights": weights, "statistics": (optax.EmptyState(), weights)})
