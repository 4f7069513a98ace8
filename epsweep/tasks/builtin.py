"""The built-in tasks: ``mlp`` and ``cnn`` on a dataset, ``toy`` and ``quadratic``.

Building a task never starts JAX (no arrays are made until the engine runs its programs), so
it may come before :func:`epsweep.setup`.
"""

from __future__ import annotations

import numpy as np

from epsweep.data.dataset import Dataset, check_seed, split
from epsweep.data.sources import load_dataset, toy
from epsweep.errors import UserError, param
from epsweep.tasks.task import Task

TASKS = ("mlp", "toy", "quadratic", "cnn")
DEFAULT_DATASET = "digits"
OWN_DATA_TASKS = ("quadratic", "toy")  # no data, or data of their own: a dataset is an error


def classifier_task(name: str, model, data: Dataset, **kwargs) -> Task:
    """Softmax cross-entropy classification with ``model`` (a flax linen module returning logits).

    Args:
        name: the task's name in results.
        model: a ``flax.linen.Module`` mapping a batch of inputs to logits.
        data: the dataset (integer labels below ``data.num_classes``).
        **kwargs: further :class:`Task` fields.

    Returns:
        The :class:`Task`.
    """
    import jax.numpy as jnp
    import optax

    sample = np.zeros((1, *data.input_shape), np.float32)

    def init(rng):
        return model.init(rng, sample)["params"], {}

    def loss(params, model_state, x, y, rng):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), model_state

    def evaluate(params, model_state, x, y):
        logits = model.apply({"params": params}, x)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return losses, (logits.argmax(-1) == y).astype(jnp.float32)

    identity = ("classifier", type(model), repr(model))
    return Task(name, init, loss, evaluate, data, identity=identity, **kwargs)


def toy_task(val_split: float, data_seed: int = 0) -> Task:
    """Dense(10, ReLU) -> Dense(1, sigmoid) on 100 x 10 normal inputs, binary cross-entropy."""
    import jax.numpy as jnp
    import optax

    from epsweep.models.small import ToyNet

    check_seed(data_seed)  # before toy() draws with it
    x, y = toy(seed=data_seed)
    data = split("toy", x, y, val_split, data_seed)
    model = ToyNet()
    sample = np.zeros((1, 10), np.float32)

    def init(rng):
        return model.init(rng, sample)["params"], {}

    def losses(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.sigmoid_binary_cross_entropy(logits, y.astype(jnp.float32)), logits

    def loss(params, model_state, x, y, rng):
        return losses(params, x, y)[0].mean(), model_state

    def evaluate(params, model_state, x, y):
        per_example, logits = losses(params, x, y)
        return per_example, ((logits > 0) == (y > 0)).astype(jnp.float32)

    return Task("toy", init, loss, evaluate, data, identity=("toy", repr(model)), default_epochs=10)


QUADRATIC_START = (-4.5, 4.5)


def quadratic_task() -> Task:
    """f(x, y) = x^2 + 0.5 y^2 from (x, y) = (-4.5, 4.5): loss only, no data."""
    import jax.numpy as jnp

    def init(rng):
        return {"xy": jnp.array(QUADRATIC_START, jnp.float32)}, {}

    def loss(params, model_state, x, y, rng):
        px, py = params["xy"]
        return px**2 + 0.5 * py**2, model_state

    return Task("quadratic", init, loss, None, None, metric_name=None, identity=("quadratic", QUADRATIC_START),
                default_epochs=None, default_steps=100)


def build_task(name: str = "mlp", dataset: str = DEFAULT_DATASET, val_split: float = 0.2, data_seed: int = 0) -> Task:
    """A built-in task by name.

    ``quadratic`` and ``toy`` bring their own data (none, or their own synthetic set), so any
    ``dataset`` other than the default is refused rather than silently ignored.

    Args:
        name: ``mlp`` (default), ``cnn``, ``toy`` or ``quadratic``.
        dataset: ``digits``, ``synthetic``, or a path (.npz, MNIST IDX file or directory).
        val_split: the fraction held out for validation.
        data_seed: the seed of the train/validation split.

    Returns:
        The :class:`Task`.

    Example:
        >>> task = build_task("mlp", "digits")
        >>> task.name, task.data.describe()["train"], task.data.num_classes
        ('mlp', 1438, 10)
    """
    if name in OWN_DATA_TASKS and dataset not in (None, DEFAULT_DATASET):
        raise UserError(f"task {name} takes no dataset (got {param('dataset')} {dataset})")
    if name == "quadratic":
        return quadratic_task()
    if name == "toy":
        return toy_task(val_split, data_seed)
    if name not in TASKS:
        raise UserError(f"{param('task')}: unknown task {name!r}; choose from {', '.join(TASKS)}")
    data = load_dataset(dataset, val_split, data_seed)  # first: a bad file is reported without importing flax
    from epsweep.models.small import CNN, MLP

    if name == "mlp":
        return classifier_task("mlp", MLP(data.num_classes), data)
    if len(data.input_shape) != 3:
        raise UserError(f"task cnn needs image data (N, H, W[, C]); {data.name} has inputs of shape {data.input_shape}")
    # vmapped settings turn each convolution into a grouped one, slow on XLA's CPU backend: one
    # setting per core trained 17 ms per setting for 50 steps here, 4 per core 24 ms, 32 per core 49 ms
    return classifier_task("cnn", CNN(data.num_classes), data, loop_free_on_cpu=True, settings_per_cpu_device=1)
