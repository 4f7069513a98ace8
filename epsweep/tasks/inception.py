"""The Inception-v3 classification task: model, loss and evaluation as pure functions.

Images arrive as uint8 RGB and are scaled to [-1, 1] inside the program (the Inception
preprocessing). Training loss: softmax cross-entropy with optional label smoothing, plus
0.4 x the auxiliary classifier's loss when it is enabled. BatchNorm statistics are the
task's ``model_state`` and dropout keys come from the engine's per-step key, so under
``vmap`` every configuration is an independent run. Pretrained weights are task
``constants`` (program arguments); leaves the file does not provide (a new head) are
initialised per seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from epsweep.data.dataset import Dataset
from epsweep.errors import UserError, param
from epsweep.models.inception import AUX_MIN_INPUT_SIZE, MIN_INPUT_SIZE, InceptionV3, head_mask
from epsweep.tasks.task import Task

AUX_LOSS_WEIGHT = 0.4
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class InceptionOptions:
    """Model choices for :func:`inception_task`."""

    head: str = "linear"
    aux_logits: bool = False
    dropout_rate: float = 0.5
    dtype: str = "float32"
    label_smoothing: float = 0.0
    weights: Path | None = None
    freeze_base: bool = False
    preset: str | None = None  # recorded in the results; the preset's values arrive as the others

    def __post_init__(self) -> None:
        if self.head not in ("linear", "mlp"):
            raise UserError(f"{param('head')}: unknown head {self.head!r}; choose linear or mlp")
        if self.dtype not in DTYPES:
            raise UserError(f"{param('dtype')}: unknown dtype {self.dtype!r}; choose {' or '.join(DTYPES)}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"{param('label_smoothing')}: {self.label_smoothing:g} must lie in [0, 1)")
        if not 0 <= self.dropout_rate < 1:
            raise UserError(f"{param('dropout')}: {self.dropout_rate:g} must lie in [0, 1)")
        if self.freeze_base and self.weights is None:
            raise UserError(f"{param('freeze_base')} needs {param('weights')} (a frozen random base learns nothing)")
        if self.weights is not None and not Path(self.weights).is_file():
            raise UserError(f"{param('weights')}: {self.weights}: no such file")


def check_image_size(size: int, options: InceptionOptions) -> None:
    """Refuse an image size the model cannot take (before any image is decoded)."""
    if size < MIN_INPUT_SIZE:
        raise UserError(f"{param('image_size')}: Inception-v3 needs at least {MIN_INPUT_SIZE}; got {size}")
    if options.aux_logits and size < AUX_MIN_INPUT_SIZE:
        raise UserError(f"{param('aux')}: the auxiliary classifier needs {param('image_size')} >= "
                        f"{AUX_MIN_INPUT_SIZE}; got {size}")


def _preprocess(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def _pretrained(model: InceptionV3, sample: jax.Array, path: Path) -> tuple[dict, dict]:
    """(variables from the file, static tree of bools: True where a leaf came from the file)."""
    from epsweep.models.inception_weights import load_inception_safetensors, torch_key

    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))
    placeholders = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)  # kept leaves: re-initialised
    variables, report = load_inception_safetensors(path, placeholders)
    loaded = set(report.loaded)
    from_file = {
        collection: traverse_util.unflatten_dict({
            flax_path: torch_key(collection, flax_path) in loaded
            for flax_path in traverse_util.flatten_dict(dict(variables[collection]))
        })
        for collection in ("params", "batch_stats")
    }
    constants = {c: jax.tree.map(np.asarray, dict(variables[c])) for c in ("params", "batch_stats")}
    return constants, from_file


def inception_task(data: Dataset, options: InceptionOptions = InceptionOptions()) -> Task:
    """Inception-v3 on ``data`` (uint8 images, N x S x S x 3) with ``options``."""
    size = data.input_shape[0]
    if len(data.input_shape) != 3 or data.input_shape[2] != 3 or data.input_shape[1] != size:
        raise UserError(f"Inception-v3 needs square RGB images; got inputs of shape {data.input_shape}")
    check_image_size(size, options)
    model = InceptionV3(num_classes=data.num_classes, aux_logits=options.aux_logits, head=options.head,
                        dropout_rate=options.dropout_rate, dtype=DTYPES[options.dtype])
    sample = np.zeros((1, size, size, 3), np.float32)  # a NumPy array: building the task starts no JAX backend
    constants = from_file = None
    if options.weights is not None:
        constants, from_file = _pretrained(model, sample, options.weights)

    def init(rng, pretrained=None):
        variables = model.init(rng, sample, train=False)
        if pretrained is not None:
            variables = {c: jax.tree.map(lambda keep, file, fresh: file if keep else fresh,
                                         from_file[c], pretrained[c], dict(variables[c]))
                         for c in ("params", "batch_stats")}
        return variables["params"], variables["batch_stats"]

    def cross_entropy(logits, y):
        if options.label_smoothing:
            targets = optax.smooth_labels(jax.nn.one_hot(y, data.num_classes), options.label_smoothing)
            return optax.softmax_cross_entropy(logits, targets)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    def loss(params, batch_stats, x, y, rng):
        if options.freeze_base:  # no backward pass through the frozen base
            mask = head_mask(params)
            params = jax.tree.map(lambda p, head: p if head else jax.lax.stop_gradient(p), params, mask)
        out, updated = model.apply({"params": params, "batch_stats": batch_stats}, _preprocess(x), train=True,
                                   rngs={"dropout": rng}, mutable=["batch_stats"])
        if options.aux_logits:
            logits, aux = out
            value = cross_entropy(logits, y).mean() + AUX_LOSS_WEIGHT * cross_entropy(aux, y).mean()
        else:
            value = cross_entropy(out, y).mean()
        return value, updated["batch_stats"]

    def evaluate(params, batch_stats, x, y):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, _preprocess(x), train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return losses, (logits.argmax(-1) == y).astype(jnp.float32)

    identity = ("inception", options, None if from_file is None
                else tuple(sorted(traverse_util.flatten_dict(from_file["params"]).items())))
    details = {"model": "inception_v3", "image_size": size, "head": options.head, "aux_logits": options.aux_logits,
               "dtype": options.dtype, "label_smoothing": options.label_smoothing,
               "dropout": options.dropout_rate if options.head == "linear" else None, "preset": options.preset,
               "weights": str(options.weights) if options.weights else None, "freeze_base": options.freeze_base}
    return Task("inception", init, loss, evaluate, data, identity=identity, default_epochs=1, default_batch_size=32,
                eval_batch_size=32, details=details, constants=constants,
                trainable=head_mask if options.freeze_base else None, loop_free_on_cpu=True,
                # vmapped settings turn every convolution into a grouped one, which XLA's CPU
                # backend runs slowly: at 75x75 one setting per core trained 1.5 s per setting
                # and step here, two per core 2.0 s
                settings_per_cpu_device=1)
