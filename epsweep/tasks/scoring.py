"""How a model's outputs are scored: the losses and metrics :func:`epsweep.flax_task` takes, per example.

For a batch of B examples, ``outputs`` (what the model returns) and targets ``y``, each
function gives one number per example, shape (B,); training minimises the batch mean of the loss.

- ``cross_entropy``: -log softmax(outputs)_y, with outputs (B, C) logits and y integer labels
  below C;
- ``binary_cross_entropy``: the mean over an example's elements of
  -(y log s(o) + (1 - y) log(1 - s(o))), s the sigmoid, outputs logits shaped like y (a
  trailing axis of 1 allowed), y 0/1 labels or probabilities;
- ``mse``: the mean over an example's elements of (o - y)^2 (no factor 1/2);
- ``accuracy``: [argmax outputs = y] after ``cross_entropy``; the mean over an example's
  elements of [o > 0] = [y > 1/2] after ``binary_cross_entropy``;
- a callable ``(outputs, y) -> per-example values``, as loss or metric; a metric is reported
  under its ``__name__`` (records: ``val_<name>``), which may not be ``loss`` or ``accuracy``
  (the built-in fields ``val_loss`` and ``val_accuracy``).

The shape checks run while JAX traces (shapes are static), so a model whose outputs do not fit
the data fails before anything is compiled, with a :class:`~epsweep.errors.UserError`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from epsweep.data.dataset import Dataset
from epsweep.errors import UserError, param

LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")
CLASSIFICATION_LOSSES = ("cross_entropy", "binary_cross_entropy")
METRICS = ("accuracy",)
_METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_TAKEN = ("loss",)  # val_loss is a field already
_BUILT_IN = METRICS  # val_accuracy is the built-in metric's field: a function of that name would pose as it


@dataclasses.dataclass(frozen=True)
class Scoring:
    """The loss and metric of a task: per-example functions of (outputs, y), and their names."""

    loss_name: str
    metric_name: str | None
    loss: Callable[[Any, Any], Any]
    metric: Callable[[Any, Any], Any] | None


def _name_of(function: Callable) -> str:
    return getattr(function, "__name__", type(function).__name__)


def _per_example(values, batch: int, what: str):
    """``values`` checked to be one number per example, as float32."""
    import jax.numpy as jnp

    shape = getattr(values, "shape", None)
    if shape != (batch,):
        raise UserError(f"{what} must return one value per example (shape ({batch},)); got "
                        f"{'shape ' + str(tuple(shape)) if shape is not None else type(values).__name__}")
    return jnp.asarray(values, jnp.float32)


def _like_targets(outputs, y, what: str):
    """``outputs`` reshaped to ``y``'s shape: one output per target element, per example."""
    if outputs.shape[:1] != y.shape[:1] or math.prod(outputs.shape[1:]) != math.prod(y.shape[1:]):
        raise UserError(f"{what} needs one model output per target: the model gives outputs of shape "
                        f"{tuple(outputs.shape)} for targets of shape {tuple(y.shape)}")
    return outputs.reshape(y.shape)


def _mean_per_example(values):
    return values.reshape(values.shape[0], -1).mean(axis=1)


def _cross_entropy(num_classes: int):
    def cross_entropy(outputs, y):
        import jax.numpy as jnp
        import optax

        if outputs.ndim != 2 or outputs.shape[0] != y.shape[0] or outputs.shape[1] < num_classes:
            raise UserError(f"cross_entropy needs logits of shape (batch, {num_classes}) for {num_classes} "
                            f"classes (or more columns: classes the data lacks); the model gives outputs of shape "
                            f"{tuple(outputs.shape)}")
        return optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), y)

    return cross_entropy


def binary_cross_entropy(outputs, y):
    import jax.numpy as jnp
    import optax

    logits = _like_targets(outputs, y, "binary_cross_entropy").astype(jnp.float32)
    return _mean_per_example(optax.sigmoid_binary_cross_entropy(logits, y.astype(jnp.float32)))


def mse(outputs, y):
    import jax.numpy as jnp

    predictions = _like_targets(outputs, y, "mse").astype(jnp.float32)
    return _mean_per_example(jnp.square(predictions - y.astype(jnp.float32)))


def _argmax_accuracy(outputs, y):
    import jax.numpy as jnp

    if outputs.ndim != 2 or outputs.shape[0] != y.shape[0]:
        raise UserError(f"accuracy compares argmax(outputs) with the labels: it needs outputs of shape "
                        f"(batch, classes); the model gives {tuple(outputs.shape)}")
    return (outputs.argmax(-1) == y).astype(jnp.float32)


def _binary_accuracy(outputs, y):
    import jax.numpy as jnp

    logits = _like_targets(outputs, y, "accuracy")
    return _mean_per_example(((logits > 0) == (y > 0.5)).astype(jnp.float32))


def _checked(function: Callable, what: str) -> Callable:
    """A user's (outputs, y) -> per-example function, its result shape checked."""
    def checked(outputs, y):
        return _per_example(function(outputs, y), y.shape[0], what)

    return checked


def _loss(loss: str | Callable, data: Dataset) -> tuple[str, Callable]:
    labels = data.num_classes is not None
    if callable(loss):
        name = _name_of(loss)
        return name, _checked(loss, f"loss {name}")
    if loss not in LOSSES:
        raise UserError(f"{param('loss')}: unknown loss {loss!r}; choose from {', '.join(LOSSES)} or pass a "
                        f"function (outputs, y) -> per-example loss")
    if loss == "cross_entropy":
        if not labels or data.target_shape != ():
            raise UserError(f"{param('loss')} cross_entropy needs one integer class label per example; {data.name} "
                            f"has {_targets(data)} (for regression use mse)")
        return loss, _cross_entropy(data.num_classes)
    if loss == "binary_cross_entropy":
        values = [a for a in (data.y_train, data.y_val) if a.size]
        if any(a.min() < 0 or a.max() > 1 for a in values):
            raise UserError(f"{param('loss')} binary_cross_entropy needs labels 0 and 1 (or probabilities in "
                            f"[0, 1]); {data.name} has {_targets(data)} from {min(a.min() for a in values):g} "
                            f"to {max(a.max() for a in values):g}")
        return loss, binary_cross_entropy
    if labels:
        raise UserError(f"{param('loss')} mse needs float regression targets; {data.name} has integer class "
                        f"labels (make them float, e.g. y.astype(np.float32), to regress on them)")
    return loss, mse


def _targets(data: Dataset) -> str:
    kind = "integer class labels" if data.num_classes is not None else "float targets"
    return kind + (f" of shape {data.target_shape} per example" if data.target_shape != () else "")


def _metric(metric: str | Callable | None, loss: str | Callable, data: Dataset) -> tuple[str | None, Callable | None]:
    if metric is None:
        return None, None
    if callable(metric):
        name = _name_of(metric)
        if name in _BUILT_IN:
            raise UserError(f"{param('metric')}: your function {name!r} would be reported as val_{name}, the field of "
                            f"the built-in {name} (chance level, at-chance marks); rename the function, or pass "
                            f"the text {name!r} for the built-in {name}")
        if not _METRIC_NAME.fullmatch(name) or name.endswith("_std") or name in _TAKEN:
            raise UserError(f"{param('metric')}: a metric is reported under its function's name; {name!r} cannot "
                            f"name a result field (use a def with a name of letters, digits and _, not loss)")
        return name, _checked(metric, f"metric {name}")
    if metric not in METRICS:
        raise UserError(f"{param('metric')}: unknown metric {metric!r}; use accuracy, None, or a function "
                        f"(outputs, y) -> per-example value")
    if loss == "binary_cross_entropy":
        return metric, _binary_accuracy
    if loss == "cross_entropy" or (callable(loss) and data.num_classes is not None and data.target_shape == ()):
        return metric, _argmax_accuracy
    raise UserError(f"{param('metric')} accuracy needs class labels and a classification loss; with "
                    f"{param('loss')} {_name_of(loss) if callable(loss) else loss} use no metric (None; none on "
                    f"the command line) or a function")


def scoring(loss: str | Callable, metric: str | Callable | None, data: Dataset) -> Scoring:
    """The :class:`Scoring` of ``loss`` and ``metric`` on ``data``, checked against its targets
    (labels or regression targets, and their shape)."""
    loss_name, loss_fn = _loss(loss, data)
    metric_name, metric_fn = _metric(metric, loss, data)
    return Scoring(loss_name, metric_name, loss_fn, metric_fn)

