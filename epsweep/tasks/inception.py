"""The Inception-v3 classification task: model, loss and evaluation as pure functions.

Images arrive as uint8 RGB and are scaled to [-1, 1] inside the program (the Inception
preprocessing). Training loss: softmax cross-entropy with optional label smoothing, plus
0.4 x the auxiliary classifier's loss when it is enabled. BatchNorm statistics are the
task's ``model_state`` and dropout keys come from the engine's per-step key, so under
``vmap`` every configuration is an independent run. Pretrained weights are task
``constants`` (program arguments); leaves the file does not provide (a new head) are
initialised per seed.

A frozen base (``freeze_base``) follows Keras: a frozen layer runs in inference mode, so its
BatchNorm layers normalise with their moving statistics and never update them, while the head
(dropout included) trains. The base is then a fixed function of the image, ``f(x)``: the task
declares it as :class:`~epsweep.tasks.task.Features` (the pooled 2048 features, and the aux
classifier's pooled 768), which the engine computes once per image, and trains the head alone
on them, loss for loss the full model with that frozen base.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from epsweep.collector import while_tracing
from epsweep.data.dataset import Dataset
from epsweep.errors import UserError, param
from epsweep.models import inception as inception_model
from epsweep.models.inception import AUX_FEATURES, FEATURES, InceptionV3, is_head_param
from epsweep.models.inception_sizes import AUX_MIN_INPUT_SIZE, MIN_INPUT_SIZE  # noqa: F401 - importable from here as before
from epsweep.tasks.inception_options import DTYPE_NAMES, InceptionOptions, check_image_size
from epsweep.tasks.task import Features, Task

AUX_LOSS_WEIGHT = 0.4
DTYPES = {name: getattr(jnp, name) for name in DTYPE_NAMES}  # jnp.float32, jnp.bfloat16
FEATURE_BATCH = 32  # images per call of the frozen base


def _preprocess(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) * (2.0 / 255.0) - 1.0


@while_tracing  # the whole model's init, for its shapes
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


def _cross_entropy(options: InceptionOptions, num_classes: int):
    """Per-example softmax cross-entropy, against labels smoothed by ``options.label_smoothing``."""
    def cross_entropy(logits, y):
        if options.label_smoothing:
            targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes), options.label_smoothing)
            return optax.softmax_cross_entropy(logits, targets)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    return cross_entropy


def _training_loss(out, y, cross_entropy, aux_logits: bool):
    """mean CE(logits, y), + 0.4 x mean CE(aux logits, y) with the auxiliary classifier."""
    if aux_logits:
        logits, aux = out
        return cross_entropy(logits, y).mean() + AUX_LOSS_WEIGHT * cross_entropy(aux, y).mean()
    return cross_entropy(out, y).mean()


def _evaluation(logits, y):
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return losses, (logits.argmax(-1) == y).astype(jnp.float32)


def inception_task(data: Dataset, options: InceptionOptions = InceptionOptions()) -> Task:
    """Inception-v3 on ``data`` (uint8 images, N x S x S x 3) with ``options``."""
    size = data.input_shape[0]
    if len(data.input_shape) != 3 or data.input_shape[2] != 3 or data.input_shape[1] != size:
        raise UserError(f"Inception-v3 needs square RGB images; got inputs of shape {data.input_shape}")
    check_image_size(size, options)
    model = InceptionV3(num_classes=data.num_classes, aux_logits=options.aux_logits, head=options.head,
                        dropout_rate=options.dropout_rate, dtype=DTYPES[options.dtype])
    sample = np.zeros((1, size, size, 3), np.float32)  # a NumPy array: building the task starts no JAX backend
    details = {"model": "inception_v3", "image_size": size, "head": options.head, "aux_logits": options.aux_logits,
               "dtype": options.dtype, "label_smoothing": options.label_smoothing,
               "dropout": options.dropout_rate if options.head == "linear" else None, "preset": options.preset,
               "weights": str(options.weights) if options.weights else None, "freeze_base": options.freeze_base}
    if options.freeze_base:
        return _frozen_base_task(model, data, options, sample, details)
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

    cross_entropy = _cross_entropy(options, data.num_classes)

    def loss(params, batch_stats, x, y, rng):
        out, updated = model.apply({"params": params, "batch_stats": batch_stats}, _preprocess(x), train=True,
                                   rngs={"dropout": rng}, mutable=["batch_stats"])
        return _training_loss(out, y, cross_entropy, options.aux_logits), updated["batch_stats"]

    def evaluate(params, batch_stats, x, y):
        return _evaluation(model.apply({"params": params, "batch_stats": batch_stats}, _preprocess(x), train=False), y)

    identity = ("inception", options, None if from_file is None
                else tuple(sorted(traverse_util.flatten_dict(from_file["params"]).items())))
    return Task("inception", init, loss, evaluate, data, identity=identity, default_epochs=1, default_batch_size=32,
                eval_batch_size=32, details=details, constants=constants, loop_free_on_cpu=True,
                # vmapped settings turn every convolution into a grouped one, which XLA's CPU
                # backend runs slowly: at 75x75 one setting per core trained 1.5 s per setting
                # and step here, two per core 2.0 s
                settings_per_cpu_device=1)


@functools.cache
def _model_digest() -> str:
    """A hash of the model's source and of this module (the preprocessing and the feature
    extraction): features cached by an older version of either are never reused."""
    digest = hashlib.blake2b(digest_size=8)
    for source in (inception_model.__file__, __file__):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def _split_head(tree: dict) -> tuple[dict, dict]:
    """(base leaves, head leaves) of a params-shaped tree (see :func:`is_head_param`)."""
    flat = traverse_util.flatten_dict(tree)
    base = {path: leaf for path, leaf in flat.items() if not is_head_param(path)}
    head = {path: leaf for path, leaf in flat.items() if is_head_param(path)}
    return traverse_util.unflatten_dict(base), traverse_util.unflatten_dict(head)


def _frozen_base_task(model: InceptionV3, data: Dataset, options: InceptionOptions, sample: np.ndarray,
                      details: dict) -> Task:
    """The head trained on the frozen base's features (Keras semantics; see the module docstring).

    Features: ``f(x)`` = the base in inference mode, pooled: (N, 2048), with ``aux_logits``
    concatenated with the aux classifier's pooled (N, 768), at least float32 (bfloat16 values
    are exact in float32, so the head computes on what the full model's head would see).
    Task constants: the head leaves of the file (used where they fit, as in the full model);
    the base's go to the extractor.
    """
    constants, from_file = _pretrained(model, sample, options.weights)
    base_params, head_params = _split_head(constants["params"])
    base_from_file, head_from_file = _split_head(from_file["params"])
    from epsweep.models.inception_weights import torch_key

    fresh = [torch_key(collection, path) for collection, tree in (("params", base_from_file),
                                                                  ("batch_stats", from_file["batch_stats"]))
             for path, loaded in traverse_util.flatten_dict(tree).items() if not loaded]
    if fresh:  # only the aux classifier's convolutions may be absent from a file
        raise UserError(f"{param('freeze_base')} with {param('aux')} needs the auxiliary classifier's convolutions "
                        f"in {param('weights')} ({fresh[0]} is missing; torchvision's inception_v3 has them, "
                        f"timm's does not)")
    aux = options.aux_logits
    width = FEATURES + (AUX_FEATURES if aux else 0)

    def split(f):
        return (f[..., :FEATURES], f[..., FEATURES:]) if aux else f

    def extract(base, x):
        out = model.apply(base, _preprocess(x), train=False, stage="features")
        out = jnp.concatenate(out, axis=-1) if aux else out
        return out.astype(jnp.promote_types(out.dtype, jnp.float32))

    head_sample = split(np.zeros((1, width), np.float32))

    def init(rng, pretrained):
        params = model.init(rng, head_sample, train=False, stage="head")["params"]
        return jax.tree.map(lambda keep, file, fresh: file if keep else fresh, head_from_file, pretrained,
                            dict(params)), {}

    cross_entropy = _cross_entropy(options, data.num_classes)

    def loss(params, state, f, y, rng):
        out = model.apply({"params": params}, split(f), train=True, stage="head", rngs={"dropout": rng})
        return _training_loss(out, y, cross_entropy, aux), state

    def evaluate(params, state, f, y):
        return _evaluation(model.apply({"params": params}, split(f), train=False, stage="head"), y)

    base = {"params": base_params, "batch_stats": constants["batch_stats"]}
    what = ("inception_v3 base, inference mode", _model_digest(), options.dtype, aux)  # decides f(x), with x, base
    features = Features(extract, base, identity=what, batch_size=FEATURE_BATCH)
    identity = ("inception", options, tuple(sorted(traverse_util.flatten_dict(head_from_file).items())))
    return Task("inception", init, loss, evaluate, data, identity=identity, default_epochs=1, default_batch_size=32,
                eval_batch_size=512, details=details, constants=head_params, features=features)
