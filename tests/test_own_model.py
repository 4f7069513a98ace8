"""Your own model: the vmapped sweep of a user-style Flax model against a hand-written optax
training loop of the same model (same initial weights, minibatches and dropout keys), setting
by setting; a closed form for regression; the command line with a model file; hostile input."""

import functools
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import epsweep
from epsweep.cli import main
from epsweep.errors import UserError

STEPS, BATCH = 50, 8  # 40 training examples: 5 minibatches per epoch, 10 epochs
GRID = epsweep.Grid(eps=(1e-8, 1e-3, 1.0), lr=(3e-3, 1e-2), decay=(0.9, 0.5))
SETTINGS = [(s["lr"], s["decay"], s["eps"]) for s in GRID.settings()]
RTOL = 1e-5
EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")


def classification_data(image: bool = False) -> epsweep.Dataset:
    rng = np.random.default_rng(1)
    shape = (6, 6, 1) if image else (6,)
    centres = rng.normal(size=(3, *shape))
    y = rng.integers(0, 3, 52)
    x = centres[y] + rng.normal(scale=2.5 if image else 0.8, size=(52, *shape))  # no loss near 0: rtol stays meaningful
    return epsweep.Dataset.from_arrays(x[:40], y[:40], x_val=x[40:], y_val=y[40:], name="blobs")


class MLP(nn.Module):  # no train flag: called as model.apply(variables, x)
    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(nn.tanh(nn.Dense(16)(x)))


class CNN(nn.Module):  # BatchNorm and Dropout, switched by train
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.8)(x))
        x = nn.Dropout(0.25, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x.reshape(len(x), -1))


class NnxNet(nnx.Module):
    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(6, 12, rngs=rngs)
        self.norm = nnx.BatchNorm(12, momentum=0.8, rngs=rngs)
        self.out = nnx.Linear(12, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.norm(self.hidden(x))))


def cross_entropy(outputs, y):
    return optax.softmax_cross_entropy_with_integer_labels(outputs, y)


def squared_error(outputs, y):
    return (outputs[:, 0] - y) ** 2


@functools.partial(jax.jit, static_argnums=2)
def epoch_order(seed, epoch, n):
    return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), epoch), n)


def minibatches(data, seed):
    """The engine's minibatch of every step (docs: a fresh order per epoch, from fold_in(key(seed), 1))."""
    per_epoch = len(data.x_train) // BATCH
    orders = [np.asarray(epoch_order(seed, epoch, len(data.x_train))) for epoch in range(STEPS // per_epoch)]
    return [(data.x_train[i], data.y_train[i]) for i in
            (orders[t // per_epoch][(t % per_epoch) * BATCH:][:BATCH] for t in range(STEPS))]


def reference_linen(model, data, seed, loss_fn, takes_train):
    """The plain optax loop: model.init with fold_in(key(seed), 0), then optax.rmsprop steps
    with the dropout key fold_in(fold_in(key(seed), 2), t). Returns per setting the loss of
    every step and the validation loss and accuracy at the end."""
    key = jax.random.key(seed)
    batches = minibatches(data, seed)
    flag = (lambda train: {"train": train}) if takes_train else (lambda train: {})
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, *data.input_shape)), **flag(False)))
    variables = init(jax.random.fold_in(key, 0))
    start = variables.pop("params")

    @jax.jit
    def step(params, state, opt_state, x, y, t, lr, decay, eps):
        def objective(p):
            out, new_state = model.apply({"params": p, **state}, x, mutable=list(state), **flag(True),
                                         rngs={"dropout": jax.random.fold_in(jax.random.fold_in(key, 2), t)})
            return loss_fn(out, y).mean(), new_state

        (loss, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optax.rmsprop(lr, decay=decay, eps=eps).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss

    results = []
    for lr, decay, eps in SETTINGS:
        params, state = start, variables
        opt_state = optax.rmsprop(lr, decay=decay, eps=eps).init(params)
        curve = []
        for t, (x, y) in enumerate(batches):
            params, state, opt_state, loss = step(params, state, opt_state, x, y, t, lr, decay, eps)
            curve.append(float(loss))
        out = jax.jit(lambda v, x: model.apply(v, x, **flag(False)))({"params": params, **state}, data.x_val)
        results.append((curve, *_val(loss_fn, out, data.y_val)))
    return results


def _val(loss_fn, out, y, metric=None):
    """Validation loss and metric (default: accuracy, for logits) of the outputs ``out``."""
    if metric is not None:
        value = float(np.mean(metric(out, y)))
    else:
        value = float(np.mean(np.argmax(out, -1) == y)) if np.ndim(out) == 2 and out.shape[1] > 1 else None
    return float(np.mean(loss_fn(out, y))), value


def margin(outputs, y):
    """A metric of the user's: the true class's logit above the mean logit."""
    return jnp.take_along_axis(outputs, y[:, None], 1)[:, 0] - outputs.mean(-1)


@nnx.jit
def nnx_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y).mean())(model)
    optimizer.update(model, grads)
    return loss


RMSPROP = optax.inject_hyperparams(optax.rmsprop)(learning_rate=1.0, decay=0.9, eps=1.0)


def reference_nnx(data, seed):
    """The NNX way, stateful: nnx.Optimizer over NnxNet(rngs=nnx.Rngs(fold_in(key(seed), 0)));
    one optax.rmsprop with its hyperparameters injected (set per setting), so the step compiles once."""
    batches = minibatches(data, seed)
    results = []
    for lr, decay, eps in SETTINGS:
        model = NnxNet(3, rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 0)))
        optimizer = nnx.Optimizer(model, RMSPROP, wrt=nnx.Param)
        for name, value in (("learning_rate", lr), ("decay", decay), ("eps", eps)):
            optimizer.opt_state.hyperparams[name][...] = value
        model.train()
        curve = [float(nnx_step(model, optimizer, x, y)) for x, y in batches]
        model.eval()
        results.append((curve, *_val(cross_entropy, model(data.x_val), data.y_val, margin)))
    return results


def swept(task, seed):
    """Every setting of GRID in one vmapped sweep; one loss per step (curve_points = steps)."""
    config = epsweep.RunConfig(steps=STEPS, batch_size=BATCH, curve_points=STEPS, first_seed=seed)
    records = epsweep.sweep(task, GRID, config).records
    assert [(r["lr"], r["decay"], r["eps"]) for r in records] == SETTINGS
    return records


def assert_matches(records, reference, metric="val_accuracy"):
    for record, (curve, val_loss, value) in zip(records, reference, strict=True):
        setting = (record["lr"], record["decay"], record["eps"])
        np.testing.assert_allclose(record["loss_curve"], curve, rtol=RTOL, err_msg=str(setting))
        np.testing.assert_allclose(record["val_loss"], val_loss, rtol=RTOL, err_msg=str(setting))
        if value is not None:
            assert record[metric] == pytest.approx(value, rel=RTOL, abs=1e-6), setting
        assert not record["diverged"]
    assert reference[0][0][-1] < reference[0][0][0]  # it learned: the comparison is not of constants


CASES = {
    "linen MLP": lambda: (MLP(3), classification_data(), cross_entropy, False, {}),
    "linen CNN, BatchNorm and Dropout": lambda: (CNN(), classification_data(image=True), cross_entropy, True, {}),
}


@pytest.mark.parametrize("case", CASES)
def test_linen_sweep_equals_a_plain_optax_loop(case):
    model, data, loss_fn, takes_train, kwargs = CASES[case]()
    task = epsweep.flax_task(model, data, **kwargs)
    seed = 3
    assert_matches(swept(task, seed), reference_linen(model, data, seed, loss_fn, takes_train))


def test_nnx_sweep_equals_the_nnx_optimizer_loop_and_reports_a_named_metric():
    data = classification_data()
    task = epsweep.flax_task(NnxNet, data, metric=margin)  # a class: NnxNet(num_classes=3, rngs=...) per seed
    assert (task.details["framework"], task.metric_name) == ("nnx", "margin")
    records = swept(task, 5)
    assert_matches(records, reference_nnx(data, 5), metric="val_margin")
    assert all(r["val_accuracy"] is None and "val_margin_std" in r for r in records)
    from epsweep.results.formats import to_csv

    assert ",val_accuracy,val_accuracy_std,val_margin,val_margin_std," in to_csv(records).splitlines()[0]


def test_mse_regression_equals_a_plain_optax_loop():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(52, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + np.sin(3 * x[:, 0]) + 0.1 * rng.normal(size=52)
    data = epsweep.Dataset.from_arrays(x[:40], y[:40], x_val=x[40:], y_val=y[40:])
    model = MLP(1)  # outputs (batch, 1) for targets (batch,)
    task = epsweep.flax_task(model, data, loss="mse", metric=None)
    records = swept(task, 0)
    assert all(r["val_accuracy"] is None for r in records)
    assert_matches(records, reference_linen(model, data, 0, squared_error, False))


def test_linear_regression_reaches_least_squares():
    """Full-batch RMSProp with eps = 1: near the optimum v << 1, so the step is lr * g (gradient
    descent), which converges to the least-squares loss min_w mean((Xw + b - y)^2)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 3))
    y = x @ np.array([0.7, -1.2, 2.0]) + 0.3 + 0.5 * rng.normal(size=64)
    design = np.c_[x, np.ones(64)]
    w = np.linalg.lstsq(design, y, rcond=None)[0]
    least = np.mean((design @ w - y) ** 2)
    data = epsweep.Dataset.from_arrays(x, y, x_val=x[:0], y_val=y[:0])
    task = epsweep.flax_task(nn.Dense(1), data, loss="mse", metric=None)
    config = epsweep.RunConfig(steps=400, batch_size=64, curve_points=200)
    record = epsweep.sweep(task, epsweep.Grid(eps=(1.0,), lr=(0.1,), decay=(0.9,)), config).records[0]
    assert record["loss_curve"][-1] == pytest.approx(least, rel=1e-4)
    assert record["loss_curve"][0] > 2 * least


def test_same_model_new_eps_compiles_nothing_and_a_different_model_its_own():
    """The linen MLP task built again (as the MLP comparison above did, same spec) trains new eps
    values with no compilation; another model, loss or metric gets programs of its own: the key
    is what the functions compute, so an edited model never meets its old programs."""
    data = classification_data()
    config = epsweep.RunConfig(steps=STEPS, batch_size=BATCH, curve_points=STEPS)
    epsweep.sweep(epsweep.flax_task(MLP(3), data), epsweep.Grid(eps=(1e-8,)), config)
    again = epsweep.sweep(epsweep.flax_task(MLP(3), data), epsweep.Grid(eps=(1e-5, 0.3)), config)
    assert again.meta["compilations"] == 0 and len(again.records) == 2

    class Other(nn.Module):  # the same shapes, another function
        num_classes: int

        @nn.compact
        def __call__(self, x):
            return nn.Dense(self.num_classes)(nn.relu(nn.Dense(16)(x)))

    def edited():  # the model file edited: the same class name, fields and repr, another __call__
        class MLP(nn.Module):
            num_classes: int

            @nn.compact
            def __call__(self, x):
                return nn.Dense(self.num_classes)(nn.sigmoid(nn.Dense(16)(x)))

        return MLP(3)

    from epsweep.engine import program_key
    from epsweep.runner import resolve_spec
    from epsweep.vocabulary import UpdateRule

    def key(task):
        return program_key(task, resolve_spec(task, config, UpdateRule("rmsprop", "optax")), jax.devices()[:1])

    same = key(epsweep.flax_task(MLP(3), data))
    assert same == key(epsweep.flax_task(MLP(3), data, name="renamed"))
    assert same == key(epsweep.flax_task(MLP(3), data, loss=cross_entropy))  # the same computation

    def smoothed(outputs, y):
        return optax.softmax_cross_entropy(outputs, optax.smooth_labels(jax.nn.one_hot(y, 3), 0.1))

    def scaled_from(rows):  # the same as MLP(3) on fewer rows: at batch 2, where flax_task fingerprints it
        class MLP(nn.Module):
            num_classes: int

            @nn.compact
            def __call__(self, x):
                y = nn.Dense(self.num_classes)(nn.tanh(nn.Dense(16)(x)))
                return 5.0 * y if len(x) >= rows else y

        return MLP(3)

    from epsweep.engine.exports import stable_key

    spec = resolve_spec(epsweep.flax_task(MLP(3), data), config, UpdateRule("rmsprop", "optax"))
    branching = [epsweep.flax_task(scaled_from(BATCH), data), epsweep.flax_task(scaled_from(12), data)]  # 12 rows: val
    for task in branching:
        assert task.details["model_fingerprint"] == epsweep.flax_task(MLP(3), data).details["model_fingerprint"]
        assert stable_key(task, spec, None, None) != stable_key(epsweep.flax_task(MLP(3), data), spec, None, None)
    assert repr(edited()) == repr(MLP(3))
    others = [*branching, epsweep.flax_task(Other(3), data), epsweep.flax_task(edited(), data),
              epsweep.flax_task(MLP(3), data, metric=None),
              epsweep.flax_task(MLP(4), data), epsweep.flax_task(MLP(3), data, loss=smoothed),
              epsweep.flax_task(MLP(3), epsweep.Dataset.from_arrays(np.ones((40, 7)), np.arange(40) % 3))]
    assert len({same, *map(key, others)}) == 1 + len(others)


def test_an_nnx_instance_starts_every_seed_and_a_class_each_its_own():
    """An instance's weights are the task's constants and every seed's start; a class is
    initialised per seed from fold_in(key(seed), 0). (Traced on shapes, run eagerly: no sweep.)"""
    data = classification_data()
    model = NnxNet(3, rngs=nnx.Rngs(0))
    task = epsweep.flax_task(model, data)
    weights = jax.tree.leaves(nnx.state(model, nnx.Param))
    for seed in (0, 1):
        params, state = task.init(jax.random.fold_in(jax.random.key(seed), 0), task.constants)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), weights, strict=True))
        assert set(state["norm"]) == {"mean", "var"}  # BatchNorm statistics: model state; no RNG streams
    fresh = epsweep.flax_task(NnxNet, data)
    seed_0, seed_1 = (jax.tree.leaves(fresh.init(jax.random.fold_in(jax.random.key(s), 0))[0]) for s in (0, 1))
    expected = NnxNet(3, rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(0), 0)))
    assert all(np.array_equal(a, b) for a, b in zip(seed_0, jax.tree.leaves(nnx.state(expected, nnx.Param)),
                                                    strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(seed_0, seed_1, strict=True))


class NnxDropout(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(x))


def test_nnx_dropout_draws_from_the_step_key_as_nnx_reseed_sets_it():
    """A step's dropout: the stream reseeded with the step's key (nnx.reseed, the NNX way);
    evaluation drops nothing."""
    data = classification_data()
    task = epsweep.flax_task(NnxDropout, data)
    seed = jax.random.key(7)
    params, state = task.init(jax.random.fold_in(seed, 0))
    x, y = data.x_train[:8], data.y_train[:8]
    step_key = jax.random.fold_in(jax.random.fold_in(seed, 2), 11)
    loss = jax.jit(task.loss)(params, state, x, y, step_key)[0]
    model = NnxDropout(rngs=nnx.Rngs(jax.random.fold_in(seed, 0)))
    model.train()
    nnx.reseed(model, **{model.drop.rngs.key.tag: step_key})
    assert float(loss) == pytest.approx(float(cross_entropy(model(x), y).mean()), rel=1e-6)
    assert jax.jit(task.loss)(params, state, x, y, jax.random.fold_in(step_key, 1))[0] != loss
    model.eval()
    losses, _ = task.evaluate(params, state, x, y)
    np.testing.assert_allclose(losses, cross_entropy(model(x), y), rtol=1e-6)


def test_dataset_from_arrays_checks_what_it_is_given():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))
    data = epsweep.Dataset.from_arrays(x, np.arange(10) % 4, val_split=0.3, seed=1)
    assert (data.num_classes, len(data.x_train), data.x_train.dtype) == (4, 7, np.float32)
    regression = epsweep.Dataset.from_arrays(x, rng.normal(size=(10, 2)))
    assert regression.num_classes is None and regression.target_shape == (2,)
    bad = [
        ({"x": x[:, 0], "y": np.arange(10)}, "one example per row"),
        ({"x": x, "y": np.arange(9)}, "10 examples of inputs but 9 of targets"),
        ({"x": np.where(x > 1, np.nan, x), "y": np.arange(10)}, "NaN"),
        ({"x": x, "y": np.full(10, np.inf)}, "targets contain NaN or infinite"),
        ({"x": x, "y": -np.arange(10)}, "labels must be >= 0"),
        ({"x": x.astype(str), "y": np.arange(10)}, "unsupported dtype"),
        ({"x": x, "y": np.arange(10), "x_val": x}, "give both x_val and y_val"),
        ({"x": x, "y": np.arange(10), "x_val": x[:, :2], "y_val": np.arange(10)}, "x_val has examples of shape"),
        ({"x": x, "y": np.arange(10), "x_val": x, "y_val": x[:, 0]}, "y_val (regression targets"),
    ]
    for kwargs, message in bad:
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            epsweep.Dataset.from_arrays(**kwargs)


FROZEN = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)  # a frozen extractor's weights


def frozen_tanh(w, x):
    return jnp.tanh(x @ w)


def test_a_head_behind_a_frozen_extractor_trains_as_a_plain_loop_on_the_features_computed_once():
    """flax_task(head, data, features=...): the sweep equals the plain optax loop of the head on
    the features of every input (issue 13: the frozen-base mechanism for a user's model)."""
    data = classification_data()
    extractor = epsweep.Features(frozen_tanh, FROZEN, batch_size=16)  # no identity: kept in memory only
    task = epsweep.flax_task(MLP(3), data, features=extractor)
    assert task.data is data and task.features.apply is frozen_tanh  # the raw inputs; a sweep computes the features
    described = task.describe()
    assert described["data"]["input_shape"] == [6] and described["parameters"] == 5 * 16 + 16 + 16 * 3 + 3
    assert described["frozen_features"]["shape"] == [5] and described["frozen_features"]["dtype"] == "float32"
    f_train, f_val = (np.asarray(jax.jit(frozen_tanh)(FROZEN, x)) for x in (data.x_train, data.x_val))
    np.testing.assert_allclose(f_train, np.tanh(data.x_train.astype(np.float32) @ FROZEN), rtol=1e-5, atol=1e-6)
    on_features = epsweep.Dataset.from_arrays(f_train, data.y_train, x_val=f_val, y_val=data.y_val, name="f")
    seed = 3
    config = epsweep.RunConfig(steps=STEPS, batch_size=BATCH, curve_points=STEPS, first_seed=seed)
    first = epsweep.sweep(task, GRID, config)
    assert first.meta["features"]["source"] == "computed" and first.meta["features"]["shape"] == [5]
    assert_matches(first.records, reference_linen(MLP(3), on_features, seed, cross_entropy, False))
    again = epsweep.sweep(task, epsweep.Grid(eps=(1e-8,), lr=(3e-3,), decay=(0.9,)), config)
    assert again.meta["features"]["source"] == "memory"  # the same task: nothing computed again
    assert again.records[0]["loss_curve"] == first.records[0]["loss_curve"]
    other = epsweep.flax_task(MLP(3), data, features=epsweep.Features(lambda w, x: jnp.sin(x @ w), FROZEN))
    assert other.describe()["frozen_features"]["fingerprint"] != described["frozen_features"]["fingerprint"]


def test_stored_features_are_read_back_under_their_identity_and_never_for_an_edited_extractor(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setenv("EPSWEEP_FEATURE_CACHE", str(tmp_path))
    data, grid = classification_data(), epsweep.Grid(eps=(1e-8,))
    config = epsweep.RunConfig(steps=5, batch_size=BATCH)

    def source(apply, constants=FROZEN):
        task = epsweep.flax_task(MLP(3), data, features=epsweep.Features(apply, constants, identity="my base v1"))
        return epsweep.sweep(task, grid, config).meta["features"]["source"]

    assert [source(frozen_tanh), source(frozen_tanh)] == ["computed", "store"]  # a new task object: from disk
    assert source(lambda w, x: jnp.sin(x @ w)) == "computed"  # the same identity, another computation
    assert source(frozen_tanh, FROZEN + 1) == "computed"  # other weights


def test_flax_task_refuses_what_cannot_train():
    data = classification_data()
    regression = epsweep.Dataset.from_arrays(np.ones((8, 6)), np.ones(8))
    cases = [
        (lambda: epsweep.flax_task(MLP(3), regression), "cross_entropy needs one integer class label"),
        (lambda: epsweep.flax_task(MLP(3), data, loss="mse"), "mse needs float regression targets"),
        (lambda: epsweep.flax_task(MLP(1), regression, loss="mse"), "metric accuracy needs class labels"),
        (lambda: epsweep.flax_task(MLP(2), data), r"logits of shape \(batch, 3\)"),
        (lambda: epsweep.flax_task(MLP(3), data, loss="binary_cross_entropy"), "needs labels 0 and 1"),
        (lambda: epsweep.flax_task(MLP(3), data, metric=lambda o, y: o[:, 0]), "'<lambda>' cannot name"),
        (lambda: epsweep.flax_task(MLP(3), data, loss=lambda o, y: o.sum()), r"one value per example"),
        (lambda: epsweep.flax_task(nn.Dense(3), data.x_train), "expected an epsweep.Dataset"),
        (lambda: epsweep.flax_task("MLP", data), "expected a Flax linen or NNX module"),
        (lambda: epsweep.flax_task(CNN(), data), r"model CNN fails on inputs of shape \(1, 6\): "),
        (lambda: epsweep.flax_task(MLP(3), data, features=frozen_tanh), "features: expected an epsweep.Features"),
        (lambda: epsweep.flax_task(MLP(3), data, features=epsweep.Features(frozen_tanh, np.ones((7, 5)))),
         r"the feature extractor fails on inputs of shape \(2, 6\): TypeError: "),
        (lambda: epsweep.flax_task(MLP(3), data, features=epsweep.Features(lambda w, x: (x, x), None)),
         r"one real floating-point array with a row per input; on inputs of shape \(2, 6\) it returns tuple"),
        (lambda: epsweep.flax_task(MLP(3), data, features=epsweep.Features(lambda w, x: x.sum(0), None)),
         r"a row per input; on inputs of shape \(2, 6\) it returns float\d+ of shape \(6,\)"),
        (lambda: epsweep.flax_task(MLP(3), data, features=epsweep.Features(lambda w, x: x > 0, None)),
         r"a row per input; on inputs of shape \(2, 6\) it returns bool of shape \(2, 6\)"),
        (lambda: epsweep.flax_task(CNN(), data, features=epsweep.Features(frozen_tanh, FROZEN)),
         r"model CNN fails on inputs of shape \(1, 5\): .*\(the model is given the feature extractor's output: "
         r"float32, \(5,\) per input\)$"),
        (lambda: epsweep.flax_task(MLP(3), data, features=epsweep.Features(frozen_tanh, FROZEN, identity=frozen_tanh)),
         r"features: identity '<function frozen_tanh at 0x.*' names an object by its address, which changes"),
        (lambda: epsweep.flax_task(MLP(3), data, features=epsweep.Features(frozen_tanh, FROZEN, identity=("v", data))),
         r"features: identity must be hashable \(a string or a tuple\); got tuple \(unhashable type: "
         r"'numpy.ndarray'\)"),  # a Dataset holds arrays
        (lambda: epsweep.flax_task(MLP(3), data, features=epsweep.Features(frozen_tanh, FROZEN, batch_size=0)),
         "features: batch_size must be a whole number of inputs, at least 1; got 0"),
        (lambda: epsweep.flax_task(MLP(3), data, features=epsweep.Features(frozen_tanh, FROZEN, identity={"v": 1})),
         "features: identity must be hashable"),
    ]
    for build, message in cases:
        with pytest.raises(UserError, match=message):
            build()


# --- the command line -----------------------------------------------------------------------

MODEL_FILE = """
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class Net(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(8)(x.reshape(len(x), -1))
        x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.num_classes)(x)


class Regressor(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x)


class Broken(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x) @ nn.Dense(5)(x)


class Echo(nn.Module):  # Net, calling back to Python on the way (which jax.export cannot serialize)
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jax.pure_callback(np.asarray, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="sequential")
        x = nn.Dense(8)(x.reshape(len(x), -1))
        x = nn.Dropout(0.1, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.num_classes)(x)


class Still(nn.Module):  # nothing to train
    @nn.compact
    def __call__(self, x):
        return x.reshape(len(x), -1)[:, :3]


class Counted(nn.Module):  # an integer parameter: no gradient
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x.reshape(len(x), -1)) * self.param("k", lambda key: jnp.ones((), jnp.int32))


class Quits(nn.Module):
    @nn.compact
    def __call__(self, x):
        raise SystemExit(5)


class Rounded(nn.Module):  # integer outputs: no gradient reaches the parameters
    @nn.compact
    def __call__(self, x):
        return jnp.round(nn.Dense(3)(x.reshape(len(x), -1))).astype(jnp.int32)


import epsweep

WEIGHTS = np.random.default_rng(5).normal(size=(16, 6)).astype(np.float32)
frozen = epsweep.Features(lambda w, x: jnp.tanh(x.reshape(len(x), -1) @ w), WEIGHTS, batch_size=8)
not_features = frozen.apply


class Callback(nn.Module):  # traces alone, but not under vmap (a pure_callback without vmap_method)

    @nn.compact
    def __call__(self, x):
        x = x.reshape(len(x), -1)
        x = jax.pure_callback(np.asarray, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return nn.Dense(3)(x)
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    (d / "own_models.py").write_text(MODEL_FILE)
    (d / "failing.py").write_text("import flax.linen as nn\nraise RuntimeError('no GPU here\\nsecond line')\n")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.random((48, 4, 4)).astype(np.float32), y=np.arange(48) % 3)
    np.savez(d / "targets.npz", x=rng.random((48, 5)).astype(np.float32), y=rng.normal(size=48))
    np.savez(d / "probabilities.npz", x=rng.random((48, 5)).astype(np.float32), y=rng.random(48))
    (d / "photos" / "cats").mkdir(parents=True)
    (d / "printing.py").write_text(
        "import flax.linen as nn\nimport jax\n\n\nclass Loud(nn.Module):\n    @nn.compact\n"
        "    def __call__(self, x):\n        print('tracing')\n        jax.debug.print('mean {m}', m=x.mean())\n"
        "        return nn.Dense(3)(x.reshape(len(x), -1))\n")
    return d


def run_cli(args, cwd):
    done = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_trains_a_model_file_and_a_rerun_with_new_eps_compiles_nothing(model_dir):
    """Two processes of the installed executable: the second finds every program in the session's
    persistent compilation cache (tests/conftest.py)."""
    assert EXE, "the epsweep executable is not installed"
    args = ["grid", "--model", "own_models.py:Net", "--dataset", "data.npz", "--steps", "20", "-f", "json", "-q"]
    first = run_cli([*args, "--eps", "1e-8", "1"], model_dir)
    assert (first["meta"]["task"], first["meta"]["model"], first["meta"]["data"]["classes"]) == ("Net", "Net", 3)
    assert [r["eps"] for r in first["results"]] == [1e-8, 1.0]
    assert all(0 <= r["val_accuracy"] <= 1 for r in first["results"])
    again = run_cli([*args, "--eps", "1e-4", "0.1", "0.5"], model_dir)
    assert again["meta"]["compilations"] == 0 and [r["eps"] for r in again["results"]] == [1e-4, 0.1, 0.5]


def test_cli_trains_a_model_file_behind_the_frozen_extractor_it_declares(model_dir):
    """--features names an epsweep.Features in the model's file (imported once): the model sees the
    extractor's features, computed once, and trains as the library's flax_task(..., features=) does."""
    args = ["grid", "--model", "own_models.py:Net", "--features", "./own_models.py:frozen", "--dataset", "data.npz",
            "--steps", "20", "--batch-size", "8", "--eps", "1e-8", "1", "-f", "json", "-q"]
    done = run_cli(args, model_dir)
    assert done["meta"]["features"]["source"] == "computed" and done["meta"]["features"]["shape"] == [6]
    assert done["meta"]["frozen_features"]["shape"] == [6] and done["meta"]["data"]["input_shape"] == [4, 4, 1]
    assert done["meta"]["parameters"] == 6 * 8 + 8 + 8 * 3 + 3  # the head on 6 features, not on 16 pixels
    from epsweep.data.images import load_any_dataset

    spec = importlib.util.spec_from_file_location("own_models_again", model_dir / "own_models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    data = load_any_dataset(str(model_dir / "data.npz"), 0.2, 0)  # as grid reads --dataset
    task = epsweep.flax_task(models.Net(3), data, name="Net", features=models.frozen)
    config = epsweep.RunConfig(steps=20, batch_size=8)
    library = epsweep.sweep(task, epsweep.Grid(eps=(1e-8, 1.0)), config).records
    for record, expected in zip(done["results"], library, strict=True):
        assert record["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-6)
        assert record["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)


def test_a_file_named_by_model_and_features_runs_once_however_it_is_written(model_dir, monkeypatch):
    from epsweep.tasks import model_file

    monkeypatch.chdir(model_dir)
    before = len(model_file.IMPORTED)
    task = model_file.model_task("own_models.py:Net", "data.npz", features_spec="./own_models.py:frozen")
    assert model_file.IMPORTED[before:] == ["own_models.py"] and task.describe()["frozen_features"]["shape"] == [6]


def test_a_model_named_by_module_with_regression_targets_from_a_file(model_dir, monkeypatch):
    from epsweep.tasks.model_file import model_task

    monkeypatch.chdir(model_dir)
    task = model_task("own_models:Regressor", "targets.npz", loss="mse", metric=None)
    assert (task.name, task.data.num_classes, task.data.y_train.dtype, task.metric_name) == ("Regressor", None,
                                                                                            np.float32, None)
    np.testing.assert_allclose(np.sort(np.r_[task.data.y_train, task.data.y_val]),
                               np.sort(np.load(model_dir / "targets.npz")["y"]), rtol=1e-6)


def test_binary_cross_entropy_reads_probability_targets_from_a_file(model_dir, monkeypatch):
    """As Dataset.from_arrays does: float targets in [0, 1] (not whole numbers) are kept as they are."""
    from epsweep.tasks.model_file import model_task

    monkeypatch.chdir(model_dir)
    task = model_task("own_models.py:Regressor", "probabilities.npz", loss="binary_cross_entropy")
    assert (task.data.num_classes, task.data.y_train.dtype, task.metric_name) == (None, np.float32, "accuracy")
    np.testing.assert_array_equal(np.sort(np.r_[task.data.y_train, task.data.y_val]),
                                  np.sort(np.load(model_dir / "probabilities.npz")["y"]).astype(np.float32))


def test_a_model_that_calls_back_to_python_trains_as_without_the_call(model_dir, capsys, monkeypatch):
    """A host callback (jax.debug.print, pure_callback) cannot be exported (jax.export refuses
    it): such a model's programs are compiled as traced, and not stored. The identity callback
    leaves Net's numbers as they are."""
    monkeypatch.chdir(model_dir)
    results = {}
    for name in ("Net", "Echo"):
        code = main(["grid", "--model", f"own_models.py:{name}", "--dataset", "data.npz", "--steps", "6",
                     "--eps", "1e-8", "1", "-f", "json", "-q"])
        out, err = capsys.readouterr()
        assert code == 0 and err == "", err
        results[name] = [{k: r[k] for k in ("eps", "final_loss", "val_loss", "eps_dominated")}
                         for r in json.loads(out)["results"]]
    assert results["Echo"] == results["Net"]


def test_a_model_whose_callback_raises_mid_sweep_is_one_line_and_keeps_what_finished(tmp_path, capsys,
                                                                                      monkeypatch):
    """The model's own Python code, called back while a program runs (``jax.debug.callback``),
    raises in the second call of two: a user's error (exit 2, one epsweep line after JAX's log
    of the model's traceback), the first call's settings kept in the stream."""
    monkeypatch.chdir(tmp_path)
    Path("cb.py").write_text(
        "import flax.linen as nn\nimport jax\n\n\ndef count(_):\n    with open('calls', 'a') as f:\n"
        "        f.write('x')\n    with open('calls') as f, open('limit') as g:\n"
        "        if len(f.read()) > int(g.read()):\n            raise RuntimeError('exploded')\n\n\n"
        "class Net(nn.Module):\n    @nn.compact\n    def __call__(self, x):\n"
        "        y = nn.Dense(10)(x.reshape(len(x), -1))\n        jax.debug.callback(count, y.sum())\n"
        "        return y\n")
    per_call = jax.device_count()  # settings a call trains, one per device
    args = ["grid", "--model", "cb.py:Net", "--steps", "1", "--chunk-size", "1", "-q", "-f", "jsonl", "--eps"]
    Path("limit").write_text("1000000")
    assert main([*args, *map(str, range(1, per_call + 1))]) == 0  # one call: how many callbacks it makes
    Path("limit").write_text(str(len(Path("calls").read_text())))
    Path("calls").unlink()
    capsys.readouterr()
    code = main([*args, *map(str, range(1, 2 * per_call + 1)), "-o", "out.jsonl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (f"epsweep: error: the model failed while training: RuntimeError: exploded; "
                                     f"{per_call} of {2 * per_call} settings saved to out.jsonl (resume with "
                                     f"--resume)"), err
    assert len(Path("out.jsonl").read_text().splitlines()) == per_call


def test_resume_refuses_the_results_of_an_edited_model_of_the_same_shapes(tmp_path, capsys, monkeypatch):
    """The run a results file belongs to includes what the model computes, not only its shapes."""
    monkeypatch.chdir(tmp_path)
    np.savez("data.npz", x=np.random.default_rng(0).random((40, 6)).astype(np.float32), y=np.arange(40) % 3)
    edited = "return nn.Dense(3)(jnp.tanh(x) * 100)"
    for step, body in enumerate(("return nn.Dense(3)(x)", edited)):
        Path(f"net{step}.py").write_text(f"import flax.linen as nn\nimport jax.numpy as jnp\n\n\n"
                                         f"class Net(nn.Module):\n    @nn.compact\n    def __call__(self, x):\n"
                                         f"        {body}\n")
        code = main(["grid", "--model", f"net{step}.py:Net", "--dataset", "data.npz", "--steps", "3", "-q",
                     "--eps", "1e-8", *(["1", "--resume"] if step else []), "-o", "out.jsonl"])
        out, err = capsys.readouterr()
    assert code == 2 and "--resume: out.jsonl comes from a different run (model_fingerprint" in err, err
    assert err.count("\n") == 1


def test_a_models_own_prints_go_to_stderr_and_stdout_holds_only_results(model_dir):
    """stdout carries results: a model that prints as it is traced (``print``) and as it runs
    (``jax.debug.print``) leaves ``-f jsonl`` output that parses line by line, its prints on
    stderr (through the installed executable, as in a shell pipeline)."""
    done = subprocess.run([EXE, "grid", "--model", "printing.py:Loud", "--dataset", "data.npz", "--steps", "3",
                           "--eps", "1e-8", "1", "-q", "-f", "jsonl"], capture_output=True, text=True, timeout=300,
                          cwd=model_dir, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["eps"] for line in done.stdout.splitlines()] == [1e-8, 1.0], done.stdout
    assert "tracing\n" in done.stderr and "mean " in done.stderr, done.stderr


LEAVING = """import atexit, concurrent.futures, sys, threading
from pathlib import Path

import flax.linen as nn

atexit.register(lambda: print("said at exit", file=sys.stderr))
POOL = concurrent.futures.ThreadPoolExecutor(1)  # never shut down: Python's exit stops it
POOL.submit(lambda: 1)
LOG = open("unclosed.log", "w")  # never closed: Python's exit flushes it
LOG.write("written, never closed")


def _late():
    threading.main_thread().join()  # until the main thread is done
    Path("late.txt").write_text("written by a thread the exit waits for")


threading.Thread(target=_late).start()


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x.reshape(len(x), -1))
"""


def test_a_model_files_threads_pools_files_and_exit_functions_end_as_python_ends_them(model_dir):
    """The executable skips the interpreter's teardown only when none of the user's code ran
    (epsweep/__main__.py): a model file's pool, its thread waiting for the main thread, its
    unclosed file and its exit function all end as Python ends them, and every result is out."""
    (model_dir / "leaving.py").write_text(LEAVING)
    for name in ("late.txt", "unclosed.log"):
        (model_dir / name).unlink(missing_ok=True)
    done = subprocess.run([EXE, "grid", "--model", "leaving.py:Net", "--dataset", "data.npz", "--steps", "3",
                           "--eps", "1e-8", "1", "-q", "-f", "jsonl"], capture_output=True, text=True, timeout=300,
                          cwd=model_dir, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["eps"] for line in done.stdout.splitlines()] == [1e-8, 1.0], done.stdout
    assert done.stderr.splitlines()[-1] == "said at exit", done.stderr
    assert (model_dir / "late.txt").read_text() == "written by a thread the exit waits for"
    assert (model_dir / "unclosed.log").read_text() == "written, never closed"


def test_with_standard_output_closed_a_model_that_prints_still_trains(model_dir, capsys, monkeypatch):
    """Started with stdout closed (``>&-``, Python's sys.stdout is None), a model's own prints
    go to stderr as always; the results, which cannot go to stdout, are in the file the error
    line (the last) names. main() leaves sys.stdout as it found it."""
    monkeypatch.chdir(model_dir)
    monkeypatch.setattr(sys, "stdout", None)
    code = main(["grid", "--model", "printing.py:Loud", "--dataset", "data.npz", "--steps", "3", "--eps", "1e-8", "1",
                 "-q", "-o", "loud.jsonl"])
    assert sys.stdout is None
    *prints, last = capsys.readouterr().err.splitlines()
    assert code == 2 and last == "epsweep: error: cannot write to standard output: it is closed; the results are in " \
                                 "loud.jsonl", last
    assert "tracing" in prints and any(line.startswith("mean ") for line in prints), prints
    assert len((model_dir / "loud.jsonl").read_text().splitlines()) == 2

    class Full(io.StringIO):  # a stderr on a full disk
        def write(self, text):
            raise OSError(28, "No space left on device")

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", Full())
    code = main(["grid", "--model", "printing.py:Loud", "--dataset", "data.npz", "--steps", "3", "--eps", "1e-8", "1",
                 "-q", "-f", "jsonl"])  # the prints are lost, not the run
    assert code == 0 and [json.loads(line)["eps"] for line in out.getvalue().splitlines()] == [1e-8, 1.0]


CLI_CASES = [
    (["--model", "missing.py:Net"], "--model: missing.py: no such file"),
    (["--model", "failing.py:Net"], "--model: cannot import failing.py: RuntimeError: no GPU here second line"),
    (["--model", "no_such_module:Net"], "cannot import no_such_module: ModuleNotFoundError: No module named"),
    (["--model", "own_models.py:Nope"], "--model: own_models.py has no 'Nope'"),
    (["--model", "own_models.py"], "must look like FILE.py:NAME or package.module:NAME"),
    (["--model", "own_models.py:Broken"], "model Broken fails on inputs of shape (1, 4, 4, 1): TypeError: dot_general"),
    (["--model", "own_models.py:Still"], "model Still has no parameters to train"),
    (["--model", "own_models.py:Quits"], "model Quits fails on inputs of shape (1, 4, 4, 1): SystemExit: 5"),
    (["--model", "own_models.py:Counted"], "model Counted: parameter ['k'] is int32; only real floating-point"),
    (["--model", "own_models.py:Rounded"], "model Rounded returns int32 outputs; it must return real floating-point"),
    (["--model", "own_models.py:Callback"], "model Callback fails on inputs of shape (32, 4, 4, 1): NotImplemented"),
    (["--model", "own_models.py:nn"], "--model: expected a Flax linen or NNX module, a module class or a factory"),
    (["--model", "own_models.py:Net", "--task", "mlp"], "give --task or --model, not both"),
    (["--model", "own_models.py:Net", "--loss", "hinge"], "--loss: unknown loss 'hinge'"),
    (["--model", "own_models.py:Net", "--metric", "f1"], "--metric: unknown metric 'f1'; choose accuracy or none"),
    (["--model", "own_models.py:Net", "--loss", "mse"], "model Net fails: TypeError: "),  # no classes to give
    (["--model", "own_models.py:Net", "--dataset", "targets.npz"], "targets.npz: labels must be whole numbers"),
    (["--model", "own_models.py:Net", "--dataset", "digits", "--loss", "mse"], "mse needs float regression targets"),
    (["--model", "own_models.py:Net", "--dataset", "photos"], "photos is an ImageFolder directory: give --image-size"),
    (["--model", "own_models.py:Net", "--image-size", "8"], "--image-size applies to ImageFolder directories only"),
    (["--loss", "mse"], "--loss applies to --model only"),
    (["--features", "own_models.py:frozen"], "--features applies to --model only"),
    (["--model", "own_models.py:Net", "--features", "own_models.py:not_features"],
     "--features: own_models.py:not_features is a function, not an epsweep.Features(apply, constants)"),
    (["--model", "own_models.py:Net", "--features", "own_models.py:Net"],
     "--features: own_models.py:Net is a class, not an epsweep.Features(apply, constants)"),
    (["--model", "own_models.py:Net", "--features", "own_models.py:Nope"], "--features: own_models.py has no 'Nope'"),
    (["--model", "own_models.py:Net", "--features", "missing.py:frozen"], "--features: missing.py: no such file"),
    (["--model", "own_models.py:Net", "--features", "own_models.py"], "--features: 'own_models.py' must look like"),
]


@pytest.mark.parametrize("args, message", CLI_CASES, ids=[" ".join(a)[:50] for a, _ in CLI_CASES])
def test_cli_model_errors_exit_2_with_one_line(args, message, model_dir, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    code = main(["grid", "--dataset", "data.npz", "--steps", "2", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", err
    assert err.startswith("epsweep: error: ") and err.count("\n") == 1 and message in err, err


def test_a_model_file_that_changes_directory_leaves_paths_as_typed(tmp_path, capsys, monkeypatch):
    """An os.chdir as the file is imported is undone, with one warning: --dataset and --output
    still name files where the command was typed (the error after the import shows the order)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    Path("mover.py").write_text("import os\n\nos.chdir('elsewhere')\n")
    code = main(["grid", "--model", "mover.py:Net", "--steps", "2"])
    warned, error = capsys.readouterr().err.splitlines()
    assert code == 2 and Path.cwd() == tmp_path
    assert warned == (f"epsweep: warning: importing mover.py changed the working directory to {tmp_path}/elsewhere; "
                      f"it is changed back to {tmp_path}, so that relative paths mean what they meant before"), warned
    assert error == "epsweep: error: --model: mover.py has no 'Net'"


class Wide(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.Dense(2048)(nn.relu(nn.Dense(2048)(x))))


def test_a_large_models_settings_start_from_the_weights_its_own_jitted_init_gives():
    """The ``init`` program of a model with a large training state (4.2 M parameters a setting)
    is compiled as XLA compiles any jitted function, so every setting starts from exactly the
    weights ``jax.jit(task.init)`` gives for its seed. (A small model's compiles at low
    optimisation, whose truncated-normal draws may differ in the last bit.)"""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from epsweep.engine import compiled
    from epsweep.engine.spec import HPARAMS, TrainSpec

    task = epsweep.flax_task(Wide(), classification_data())
    devices = jax.devices()[:1]
    programs = compiled.compiled_programs(task, TrainSpec(steps=1, batch_size=8), devices, 2)
    mesh = Mesh(np.array(devices), (compiled.CONFIG_AXIS,))
    h = {name: jax.device_put(np.full(2, 0.5, np.float32), NamedSharding(mesh, P(compiled.CONFIG_AXIS)))
         for name in HPARAMS}
    state = programs.init(h, jax.device_put(np.array([5], np.uint32), NamedSharding(mesh, P())), None)
    params, _ = jax.jit(task.init)(jax.random.fold_in(jax.random.key(5), 0))
    for ours, theirs in zip(jax.tree.leaves(state.runs.params), jax.tree.leaves(params), strict=True):
        for setting in (0, 1):
            np.testing.assert_array_equal(np.asarray(ours)[0, setting], np.asarray(theirs))
