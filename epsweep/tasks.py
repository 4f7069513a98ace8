"""Training tasks: a model, its loss, its evaluation and its data, as pure functions.

A task's functions are what the engine vmaps:

- ``init(key) -> (params, model_state)``, or ``init(key, constants)`` when the task has
  ``constants`` (e.g. pretrained weights, passed to the program as arguments, not baked in)
- ``loss(params, model_state, x, y, key) -> (loss, new_model_state)`` on one minibatch
- ``evaluate(params, model_state, x, y) -> (per_example_loss, per_example_correct)``

``model_state`` holds non-trained variables (BatchNorm statistics); it is ``{}`` for the
small models. ``data`` is ``None`` for tasks with no data (``quadratic``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from epsweep.data import Dataset, load_dataset, split, toy
from epsweep.errors import UserError
from epsweep.models.small import CNN, MLP, ToyNet

TASKS = ("mlp", "toy", "quadratic", "cnn")


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """What to train and on which data. ``key`` identifies the compiled program: two tasks
    with equal keys and equal data shapes share one."""

    name: str
    key: tuple
    init: Callable[[jax.Array], tuple[Any, Any]]
    loss: Callable[..., tuple[jax.Array, Any]]
    evaluate: Callable[..., tuple[jax.Array, jax.Array]] | None
    data: Dataset | None
    has_accuracy: bool
    default_epochs: int | None = 10
    default_steps: int | None = None
    default_batch_size: int = 32
    eval_batch_size: int = 512
    describe_extra: dict = dataclasses.field(default_factory=dict)
    constants: Any = None
    trainable: Callable[[Any], Any] | None = None  # params -> pytree of bools; None: all trained
    # convolutions: on CPU, train one step per compiled call (see engine.build_programs)
    loop_free_on_cpu: bool = False
    # on CPU, at most this many settings per device and call (None: as memory.plan_chunk decides)
    settings_per_cpu_device: int | None = None

    def trainable_mask(self) -> Any:
        """Which parameters the optimizer may move (a pytree of Python bools), or None for all."""
        if self.trainable is None:
            return None
        shapes = jax.eval_shape(self.init, jax.random.key(0), *(() if self.constants is None else (self.constants,)))
        return self.trainable(shapes[0])

    def describe(self) -> dict:
        out = {"task": self.name, **self.describe_extra}
        out["data"] = self.data.describe() if self.data is not None else None
        return out


def classifier_task(name: str, model, data: Dataset, key: tuple, **kwargs) -> Task:
    """Softmax cross-entropy classification with ``model`` (a flax module returning logits)."""
    sample = jnp.zeros((1, *data.input_shape), jnp.float32)

    def init(rng):
        return model.init(rng, sample)["params"], {}

    def loss(params, model_state, x, y, rng):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), model_state

    def evaluate(params, model_state, x, y):
        logits = model.apply({"params": params}, x)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return losses, (logits.argmax(-1) == y).astype(jnp.float32)

    return Task(name, key + (data.input_shape, data.num_classes), init, loss, evaluate, data, True, **kwargs)


def toy_task(val_split: float, data_seed: int = 0) -> Task:
    """Dense(10, ReLU) -> Dense(1, sigmoid) on 100 x 10 normal inputs, binary cross-entropy."""
    x, y = toy(seed=data_seed)
    data = split("toy", x, y, val_split, data_seed)
    model = ToyNet()

    def init(rng):
        return model.init(rng, jnp.zeros((1, 10)))["params"], {}

    def losses(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.sigmoid_binary_cross_entropy(logits, y.astype(jnp.float32)), logits

    def loss(params, model_state, x, y, rng):
        return losses(params, x, y)[0].mean(), model_state

    def evaluate(params, model_state, x, y):
        per_example, logits = losses(params, x, y)
        return per_example, ((logits > 0) == (y > 0)).astype(jnp.float32)

    return Task("toy", ("toy",), init, loss, evaluate, data, True, default_epochs=10)


def quadratic_task() -> Task:
    """f(x, y) = x^2 + 0.5 y^2 from (x, y) = (-4.5, 4.5): loss only, no data."""

    def init(rng):
        return {"xy": jnp.array([-4.5, 4.5], jnp.float32)}, {}

    def loss(params, model_state, x, y, rng):
        px, py = params["xy"]
        return px**2 + 0.5 * py**2, model_state

    return Task("quadratic", ("quadratic",), init, loss, None, None, False, default_epochs=None, default_steps=100)


DEFAULT_DATASET = "digits"
OWN_DATA_TASKS = ("quadratic", "toy")  # no data, or data of their own: a dataset is an error


def build_task(name: str = "mlp", dataset: str = DEFAULT_DATASET, val_split: float = 0.2, data_seed: int = 0) -> Task:
    """Build a built-in task by name: ``mlp`` (default), ``cnn``, ``toy`` or ``quadratic``.

    ``quadratic`` and ``toy`` bring their own data (none, or their own synthetic set), so any
    ``dataset`` other than the default is refused rather than silently ignored.
    """
    if name in OWN_DATA_TASKS and dataset not in (None, DEFAULT_DATASET):
        raise UserError(f"task {name} takes no dataset (got --dataset {dataset})")
    if name == "quadratic":
        return quadratic_task()
    if name == "toy":
        return toy_task(val_split, data_seed)
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    data = load_dataset(dataset, val_split, data_seed)
    if name == "mlp":
        return classifier_task("mlp", MLP(data.num_classes), data, ("mlp", 128))
    if len(data.input_shape) != 3:
        raise UserError(f"task cnn needs image data (N, H, W[, C]); {data.name} has inputs of shape {data.input_shape}")
    return classifier_task("cnn", CNN(data.num_classes), data, ("cnn",), loop_free_on_cpu=True)
