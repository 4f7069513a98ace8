"""What a sweep trains: a model, its loss, its evaluation and its data, as pure functions.

A task's functions are what the engine vmaps:

- ``init(key) -> (params, model_state)``, or ``init(key, constants)`` when the task has
  ``constants`` (e.g. pretrained weights, passed to the program as arguments, not baked in)
- ``loss(params, model_state, x, y, key) -> (loss, new_model_state)`` on one minibatch
- ``evaluate(params, model_state, x, y) -> (per_example_loss, per_example_metric)``

``model_state`` holds non-trained variables (BatchNorm statistics); it is ``{}`` for models
without any. ``data`` is ``None`` for tasks with no data (``quadratic``).

A task with :class:`Features` (a frozen feature extractor, e.g. a pretrained base in inference
mode) trains on ``f(x)`` instead of ``x``: ``f`` never changes during training, so the engine
computes it once per example (:mod:`epsweep.engine.features`) and sweeps ``init``, ``loss``
and ``evaluate`` over the feature arrays, like any small model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from epsweep.data.dataset import Dataset


@dataclasses.dataclass(frozen=True, eq=False)
class Features:
    """A frozen feature extractor: ``apply(constants, x) -> f``, a float array (batch, ...).

    ``apply`` must be a pure, deterministic function of its arguments (no key, no training
    mode: a frozen network runs in inference mode), so that ``f(x)`` can be computed once per
    example and reused by every setting, step and epoch, and by later sweeps. ``constants``
    (e.g. the pretrained weights of a frozen base) are passed as a program argument.
    ``identity``: a hashable value that, with the inputs and the constants, determines
    ``apply``'s output (the model and its options, the dtype); features are cached on disk
    only when it is given. ``batch_size``: inputs per compiled call. Give it to
    :func:`~epsweep.tasks.own.flax_task` (``features=``) to train a model of yours as the head
    behind it.

    Example:
        >>> import numpy as np
        >>> import flax.linen as nn
        >>> import jax.numpy as jnp
        >>> import epsweep
        >>> base = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)  # frozen weights
        >>> extractor = epsweep.Features(lambda w, x: jnp.tanh(x @ w), base, identity="tanh base v1")
        >>> rng = np.random.default_rng(1)
        >>> data = epsweep.Dataset.from_arrays(rng.normal(size=(40, 5)), rng.integers(0, 2, 40))
        >>> task = epsweep.flax_task(nn.Dense(2), data, features=extractor)  # the head sees 8 features
        >>> task.details["parameters"], task.details["frozen_features"]["shape"]
        (18, [8])
    """

    apply: Callable[[Any, Any], Any]
    constants: Any = None
    identity: Hashable | None = None
    batch_size: int = 32


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """What to train and on which data.

    ``identity``: a hashable value that determines ``init``, ``loss`` and ``evaluate``
    completely (the model class and its fields, the loss, options), given by the constructors in
    this package so that a task built again shares the first one's compiled programs. Leave it
    ``None`` when building a task by hand, and set it to ``None`` when replacing a function of a
    task (``dataclasses.replace(task, loss=..., identity=None)``): the engine then keys the
    programs by the function objects themselves, so a different model never meets another's
    program.
    ``metric_name``: what ``evaluate``'s second output is (``"accuracy"``), or ``None`` when the
    task reports no metric.
    ``features``: when set, ``data`` holds the raw inputs and ``init``, ``loss`` and
    ``evaluate`` see ``features.apply(features.constants, x)`` in their place (see
    :class:`Features`); a sweep computes them first, with
    :func:`epsweep.engine.features.on_features`.

    Example:
        >>> import numpy as np
        >>> def init(key):
        ...     return {"w": np.float32(3.0)}, {}
        >>> def loss(params, state, x, y, key):
        ...     return params["w"] ** 2, state
        >>> task = Task("parabola", init, loss, None, None, metric_name=None, default_steps=50)
        >>> task.describe()
        {'task': 'parabola', 'data': None}
    """

    name: str
    init: Callable[..., tuple[Any, Any]]
    loss: Callable[..., tuple[Any, Any]]
    evaluate: Callable[..., tuple[Any, Any]] | None
    data: Dataset | None
    metric_name: str | None = "accuracy"
    identity: Hashable | None = None
    default_epochs: int | None = 10
    default_steps: int | None = None
    default_batch_size: int = 32
    eval_batch_size: int = 512
    details: dict = dataclasses.field(default_factory=dict)  # what describe() adds (model options)
    constants: Any = None
    trainable: Callable[[Any], Any] | None = None  # params -> pytree of bools; None: all trained
    # convolutions: on CPU, train one step per compiled call (see engine.programs)
    loop_free_on_cpu: bool = False
    # on CPU, at most this many settings per device and call (None: as the memory plan decides)
    settings_per_cpu_device: int | None = None
    features: Features | None = None  # a frozen feature extractor the data goes through first
    fingerprint_at: Callable[[int, int], str | None] | None = None  # see shaped_identity

    @property
    def has_metric(self) -> bool:
        return self.metric_name is not None and self.evaluate is not None

    def validation_batch_size(self, eval_batch_size: int) -> int:
        """Rows per validation batch: ``eval_batch_size``, or fewer when there are fewer (0: none)."""
        if self.data is None or len(self.data.x_val) == 0:
            return 0
        return min(eval_batch_size, len(self.data.x_val))

    def shaped_identity(self, batch_size: int, eval_batch_size: int) -> Hashable | None:
        """``identity`` for programs that call the model on ``batch_size`` training rows and
        validation batches of ``eval_batch_size``. An identity traced at other shapes
        (:func:`~epsweep.tasks.own.flax_task` fingerprints at batch 2) is completed by
        ``fingerprint_at`` these shapes, so a model that branches on its batch size never meets
        the programs of another; None when that trace names an object's address."""
        if self.identity is None or self.fingerprint_at is None:
            return self.identity
        at = self.fingerprint_for(batch_size, eval_batch_size)
        return None if at is None else (self.identity, at)

    def fingerprint_for(self, batch_size: int, eval_batch_size: int) -> str | None:
        """``fingerprint_at`` the programs' shapes (``batch_size`` training rows, validation
        batches of ``eval_batch_size``); None without one."""
        if self.fingerprint_at is None:
            return None
        return self.fingerprint_at(batch_size, self.validation_batch_size(eval_batch_size))

    def trainable_mask(self) -> Any:
        """Which parameters the optimizer may move (a pytree of Python bools), or None for all."""
        if self.trainable is None:
            return None
        import jax

        args = () if self.constants is None else (self.constants,)
        shapes = jax.eval_shape(self.init, jax.random.key(0), *args)
        return self.trainable(shapes[0])

    def data_signature(self) -> tuple:
        """Shapes and dtypes of everything the programs are built around: the training and
        validation arrays and the constants (the programs close over the training-set size)."""
        arrays: list[Any] = []
        if self.data is not None:
            arrays += [self.data.x_train, self.data.y_train, self.data.x_val, self.data.y_val]
        if self.constants is not None:
            import jax

            arrays += jax.tree.leaves(self.constants)
        return tuple((tuple(np.shape(a)), str(np.asarray(a).dtype if not hasattr(a, "dtype") else a.dtype))
                     for a in arrays)

    def describe(self) -> dict:
        out = {"task": self.name, **self.details}
        out["data"] = self.data.describe() if self.data is not None else None
        return out
