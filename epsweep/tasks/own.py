"""Your own model: :func:`flax_task` makes a :class:`~epsweep.tasks.Task` of any Flax model
(linen or NNX) and a :class:`~epsweep.data.Dataset`, trained by the engine like the built-ins.

What the engine does with it, seed s and step t (as for every task, see
:mod:`epsweep.engine.programs`): the initial weights come from the key
``k0 = fold_in(key(s), 0)``; step t trains on the minibatch the engine draws for (s, t) with
the key ``kt = fold_in(fold_in(key(s), 2), t)`` for dropout. For a linen module that is

- init: ``model.init(k0, zeros((1, *input_shape)), train=False)``: ``params`` are trained,
  every other collection (``batch_stats``, ...) is model state; ``intermediates`` is dropped;
- training: ``model.apply({"params": p, **state}, x, train=True, rngs={"dropout": kt},
  mutable=[the state's collections])``, the state replaced by the updated collections;
- evaluation: the same with ``train=False`` (BatchNorm then uses its running averages).

(``train=`` is passed only when the module's ``__call__`` takes it.) For Flax NNX the model is
``factory(rngs=nnx.Rngs(k0))`` (an ``nnx.Module`` class is a factory), split with
``nnx.split(model, nnx.Param, nnx.RngState, ...)``: ``nnx.Param`` is trained, everything but
the RNG streams is model state. A step merges them back (``nnx.merge``), sets ``model.train()``
(``model.eval()`` to evaluate), reseeds every RNG stream from ``kt``, calls ``model(x)`` and
splits the state out again, so the engine only ever sees pure functions.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from epsweep.data.dataset import Dataset
from epsweep.errors import UserError, first_line, param, quoted
from epsweep.tasks.scoring import Scoring, scoring
from epsweep.tasks.task import Features, Task
from epsweep.tasks.traced import check_task, fingerprint, names_an_address, trace_extractor

DROPPED_COLLECTIONS = ("intermediates",)  # sown values: not state (they grow at every call)


class _Guard:
    """Turns what a user's model (or function) raises into one UserError line naming it."""

    def __init__(self, name: str):
        self.name = name

    def call(self, function: Callable, *args, shape=None, what: str | None = None, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError:
            raise
        except (Exception, SystemExit) as error:  # the model's own failure, whatever it is (an exit too)
            where = f" on inputs of shape {tuple(shape)}" if shape is not None else ""
            raise UserError(f"{what or 'model ' + self.name} fails{where}: {first_line(error)}") from None


def _accepts(function: Callable, name: str) -> bool:
    """Whether ``function`` (a class: its ``__init__``) has a parameter ``name``, by that name."""
    try:
        parameters = inspect.signature(function.__init__ if isinstance(function, type) else function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


class _Linen:
    """A linen module as pure init/apply functions (see the module docstring)."""

    framework = "linen"

    def __init__(self, module, data: Dataset, guard: _Guard):
        self.module, self.guard = module, guard
        self.takes_train = _accepts(module.__call__, "train")
        self.sample_shape = (1, *data.input_shape)
        self.constants = None

    def _train(self, train: bool) -> dict:
        return {"train": train} if self.takes_train else {}

    def init(self, key, constants=None):
        import jax.numpy as jnp

        sample = jnp.zeros(self.sample_shape, jnp.float32)
        variables = dict(self.guard.call(self.module.init, key, sample, shape=self.sample_shape, **self._train(False)))
        params = variables.pop("params", {})
        for name in DROPPED_COLLECTIONS:
            variables.pop(name, None)
        return params, variables

    def apply(self, params, state, x, train: bool, rng):
        import jax

        rngs = {"dropout": rng if rng is not None else jax.random.key(0)}
        collections = list(state)
        out = self.guard.call(self.module.apply, {"params": params, **state}, x, rngs=rngs,
                              mutable=collections or False, shape=x.shape, **self._train(train))
        if not collections:
            return out, state
        outputs, updates = out
        return outputs, {**state, **updates}


class _Nnx:
    """A Flax NNX model as pure init/apply functions (see the module docstring): from a factory
    (fresh weights per seed) or an instance (its weights start every seed)."""

    framework = "nnx"

    def __init__(self, model, guard: _Guard, factory: Callable | None):
        from flax import nnx

        self.guard, self.factory = guard, factory
        if factory is None:  # an instance: its weights are constants of the programs
            graphdef, params, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
            self.constants = (_host(params), _host(rest))
            self.rng_template = rng_state
        else:
            abstract = guard.call(nnx.eval_shape, lambda: factory(rngs=nnx.Rngs(0)))
            if not isinstance(abstract, nnx.Module):
                raise UserError(f"model {guard.name}: the factory returned {type(abstract).__name__}, not an "
                                f"nnx.Module")
            graphdef, _, rng_state, _ = nnx.split(abstract, nnx.Param, nnx.RngState, ...)
            self.constants = None
            self.rng_template = rng_state
        self.graphdef = graphdef

    def init(self, key, constants=None):
        from flax import nnx

        if constants is not None:
            return constants
        model = self.guard.call(self.factory, rngs=nnx.Rngs(key))
        _, params, _, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
        return params, rest

    def _rng_state(self, key):
        """Every RNG stream of the model started afresh from ``key``: stream i (in split
        order) gets the key ``fold_in(key, i)`` (split to its shape, if it has one), count 0."""
        import jax
        import jax.numpy as jnp
        from flax import nnx

        leaves, treedef = jax.tree.flatten(self.rng_template, is_leaf=lambda v: isinstance(v, nnx.Variable))
        fresh, streams = [], 0
        for variable in leaves:
            shape = variable.get_value().shape
            if isinstance(variable, nnx.RngKey):
                value = jax.random.fold_in(key, streams)
                value = jax.random.split(value, shape) if shape else value
                streams += 1
            else:
                value = jnp.zeros(shape, variable.get_value().dtype)
            fresh.append(variable.replace(value))
        return jax.tree.unflatten(treedef, fresh)

    def apply(self, params, state, x, train: bool, rng):
        import jax
        from flax import nnx

        rngs = self._rng_state(rng if rng is not None else jax.random.key(0))
        model = nnx.merge(self.graphdef, params, rngs, state, copy=True)
        if train:
            model.train()
        else:
            model.eval()
        outputs = self.guard.call(model, x, shape=x.shape)
        _, _, _, new_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
        return outputs, new_state


def _host(state):
    """An NNX state's arrays as NumPy arrays (constants are fingerprinted and placed from the host)."""
    import jax

    return jax.tree.map(np.asarray, state)


def _with_classes(factory: Callable, data: Dataset) -> Callable:
    """``factory`` with ``num_classes`` filled in when it takes it and the data has classes."""
    import functools

    if data.num_classes is not None and _accepts(factory, "num_classes"):
        return functools.partial(factory, num_classes=data.num_classes)
    return factory


def _model_name(model) -> str:
    return model.__name__ if isinstance(model, type) or inspect.isfunction(model) else type(model).__name__


def adapt_model(model, data: Dataset, name: str):
    """The linen or NNX adapter for ``model``: a linen module (instance or class), an NNX
    module (instance or class), or a factory returning one (NNX factories take ``rngs``)."""
    import flax.linen as linen
    from flax import nnx

    guard = _Guard(name)
    if isinstance(model, linen.Module):
        return _Linen(model, data, guard)
    if isinstance(model, nnx.Module):
        return _Nnx(model, guard, None)
    if not callable(model):
        raise UserError(f"{param('model')}: expected a Flax linen or NNX module, a module class or a factory; got "
                        f"{type(model).__name__}")
    factory = _with_classes(model, data)
    if (isinstance(model, type) and issubclass(model, nnx.Module)) or _accepts(model, "rngs"):
        return _Nnx(None, guard, factory)
    built = guard.call(factory)
    if isinstance(built, linen.Module):
        return _Linen(built, data, guard)
    if isinstance(built, nnx.Module):
        return _Nnx(built, guard, None)
    raise UserError(f"model {name}: calling it gave {type(built).__name__}, not a linen or NNX module")


def flax_task(model: Any, data: Dataset, *, loss: str | Callable = "cross_entropy",
              metric: str | Callable | None = "accuracy", name: str | None = None,
              features: Features | None = None) -> Task:
    """A task that trains your Flax model on your data, for :func:`epsweep.sweep` and
    :func:`epsweep.run`, with everything the built-in tasks have (seeds, conventions, eps
    diagnostics, divergence isolation, streaming and resume).

    The training loss of a step is the batch mean of the per-example loss (see
    :mod:`epsweep.tasks.scoring`): ``cross_entropy`` -log softmax(o)_y, ``binary_cross_entropy``
    on logits, ``mse`` mean (o - y)^2 (no 1/2). How the model is initialised and called (its
    ``train=`` flag, BatchNorm statistics, dropout keys per seed and step) is in
    :mod:`epsweep.tasks.own`. The model is traced on the data's shapes here, so a model that
    does not fit the data fails now, with a UserError; no JAX backend starts.

    Args:
        model: a linen module instance or class; an NNX module class or a factory called as
            ``factory(rngs=nnx.Rngs(key))``, once per seed; an NNX instance, whose weights
            start every seed; or a function returning a linen module. A class or factory that
            takes ``num_classes`` gets the data's class count.
        data: a :class:`~epsweep.data.Dataset`, e.g. ``Dataset.from_arrays(x, y)``.
        loss: ``"cross_entropy"`` (integer labels), ``"binary_cross_entropy"`` (0/1 labels,
            logits out), ``"mse"`` (float targets) or a function (outputs, y) -> per-example loss.
        metric: ``"accuracy"``, ``None`` (records then hold null), or a function
            (outputs, y) -> per-example value, reported as ``val_<its name>``.
        name: the task's name in results (default: the model's class or function name).
        features: a frozen feature extractor in front of the model,
            ``epsweep.Features(apply, constants, identity=...)``: ``model`` is then the head, and
            sees ``apply(constants, x)`` (a pure function: inference mode, no key) in place of
            each input ``x``. A sweep computes every input's features once, not once per
            setting and step, and trains the head on them (kept on disk for later sweeps when
            ``identity`` names what ``apply`` computes; see docs/own-model.md).

    Returns:
        The :class:`~epsweep.tasks.Task`. Its compiled programs are shared by every task that
        computes the same (model, loss and metric, traced on the data's shapes) on data of the
        same shapes: new eps values never recompile, an edited model never reuses a program.

    Example:
        >>> import numpy as np
        >>> import flax.linen as nn
        >>> import epsweep
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))
        >>> rng = np.random.default_rng(0)
        >>> data = epsweep.Dataset.from_arrays(rng.normal(size=(64, 5)), rng.integers(0, 3, 64))
        >>> task = flax_task(Net(), data)
        >>> task.name, task.details["parameters"]
        ('Net', 147)
        >>> result = epsweep.sweep(task, epsweep.Grid(eps=(1e-8, 1.0)), epsweep.RunConfig(steps=5))
        >>> [r["eps"] for r in result.records], result.records[0]["val_accuracy"] is not None
        ([1e-08, 1.0], True)
    """
    if not isinstance(data, Dataset):
        raise UserError(f"{param('data')}: expected an epsweep.Dataset (e.g. Dataset.from_arrays(x, y)); got "
                        f"{type(data).__name__}")
    name = name or _model_name(model)
    seen, frozen, features = (data, {}, None) if features is None else _behind(features, data)  # the model's view
    score = scoring(loss, metric, seen)
    try:
        adapter = adapt_model(model, seen, name)
        task = _task(adapter, score, seen, name)
        checked = check_task(task, name)
    except UserError as error:
        if features is None:
            raise
        given = frozen["frozen_features"]
        raise UserError(f"{error.message} (the model is given the feature extractor's output: {given['dtype']}, "
                        f"{tuple(given['shape'])} per input)") from None
    details = {"model": name, "framework": adapter.framework, "parameters": checked["parameters"],
               "model_shapes": checked["shapes"], "model_fingerprint": checked["fingerprint"],
               "loss": score.loss_name, "metric": score.metric_name, **frozen}
    # the programs are keyed by what the functions compute: the same model, loss and metric share
    # them (in this process and, via the fingerprint's text, in others); a change to any never does
    identity = ("flax_task", checked["fingerprint"] or _Unshared(), score.loss_name, score.metric_name,
                data.num_classes)
    # convolutions on CPU: one step per call and one setting per core (as the built-in cnn)
    task = dataclasses.replace(task, details=details, loop_free_on_cpu=checked["convolves"], identity=identity,
                               settings_per_cpu_device=1 if checked["convolves"] else None)
    at = functools.lru_cache(maxsize=8)(functools.partial(fingerprint, task))  # traced once per batch sizes
    # with an extractor: the raw inputs, which a sweep turns into features first (engine.on_features)
    return dataclasses.replace(task, fingerprint_at=at, data=data, features=features)


def _behind(features: Features, data: Dataset) -> tuple[Dataset, dict, Features]:
    """``data`` as a model behind the frozen extractor ``features`` is given it, for tracing:
    inputs of the features' shape and dtype (zeros of stride 0: nothing computed or held), the
    targets as they are; what the task's details record of the extractor; and the extractor,
    its ``identity`` (the feature store's key) completed by the fingerprint of what ``apply``
    computes, so that an edited extractor under the same identity never reads stored features."""
    if not isinstance(features, Features):
        raise UserError(f"{param('features')}: expected an epsweep.Features(apply, constants); got "
                        f"{type(features).__name__}")
    if type(features.batch_size) is not int or features.batch_size < 1:
        raise UserError(f"{param('features')}: batch_size must be a whole number of inputs, at least 1; got "
                        f"{quoted(features.batch_size)}")
    try:
        hash(features.identity)
    except TypeError as error:
        raise UserError(f"{param('features')}: identity must be hashable (a string or a tuple); got "
                        f"{type(features.identity).__name__} ({error})") from None
    if names_an_address(repr(features.identity)):  # the store's key and the run's description hold its repr
        raise UserError(f"{param('features')}: identity {quoted(repr(features.identity))} names an object by its "
                        f"address, which changes from run to run; give strings and numbers (e.g. the base's name "
                        f"and version)")
    shape, dtype, traced = _Guard("").call(trace_extractor, features, data, shape=(2, *data.input_shape),
                                           what="the feature extractor")
    x_train, x_val = (np.broadcast_to(np.zeros((), dtype), (len(x), *shape)) for x in (data.x_train, data.x_val))
    described = {"shape": list(shape), "dtype": str(dtype), "fingerprint": traced,
                 "identity": None if features.identity is None else repr(features.identity)}
    if features.identity is not None and traced is not None:
        features = dataclasses.replace(features, identity=(features.identity, traced))
    return dataclasses.replace(data, x_train=x_train, x_val=x_val), {"frozen_features": described}, features


class _Unshared:
    """A fingerprint that matches only itself (its text, with its address, matches no other
    process's): for computations whose traced text is not the same from process to process."""


def _task(adapter, score: Scoring, data: Dataset, name: str) -> Task:
    """The pure functions of a task from a model adapter and its scoring."""
    import jax.numpy as jnp

    def init(key, constants=None):
        return adapter.init(key, constants)

    def loss(params, model_state, x, y, rng):
        outputs, new_state = adapter.apply(params, model_state, x, True, rng)
        return jnp.mean(_scored(score.loss, outputs, y)), new_state

    def evaluate(params, model_state, x, y):
        outputs, _ = adapter.apply(params, model_state, x, False, None)
        losses = _scored(score.loss, outputs, y)
        if score.metric is None:
            return losses, jnp.zeros_like(losses)
        return losses, _scored(score.metric, outputs, y)

    def _scored(function, outputs, y):
        if not hasattr(outputs, "shape") or not hasattr(outputs, "dtype"):
            raise UserError(f"model {name} returns {type(outputs).__name__}; it must return one array (logits or "
                            f"predictions)")
        if not jnp.issubdtype(outputs.dtype, jnp.floating):  # int or bool: no gradient; complex: no order
            raise UserError(f"model {name} returns {outputs.dtype} outputs; it must return real floating-point ones "
                            f"(logits or predictions), through which a gradient reaches its parameters")
        return adapter.guard.call(function, outputs, y, what=f"scoring the outputs of model {name}")

    return Task(name, init, loss, evaluate, data, metric_name=score.metric_name, constants=adapter.constants)
