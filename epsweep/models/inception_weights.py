"""Load PyTorch (torchvision / timm) Inception-v3 weights from a .safetensors file.

Export the weights once, where torch is installed::

    import timm, safetensors.torch
    m = timm.create_model("inception_v3", pretrained=True)
    safetensors.torch.save_file(m.state_dict(), "inception_v3.safetensors")

or from torchvision (its checkpoint also holds the ``AuxLogits.*`` weights)::

    import torchvision, safetensors.torch
    m = torchvision.models.inception_v3(weights="DEFAULT")
    safetensors.torch.save_file(m.state_dict(), "inception_v3.safetensors")

torchvision's pretrained model sets ``transform_input=True``: its forward first maps inputs
normalised with the ImageNet mean/std to the (x - 0.5) / 0.5 scaling the Google weights
expect. That step is not part of the weights nor of :class:`InceptionV3`; feed our model
images scaled to [-1, 1] (timm's ``IMAGENET_INCEPTION_MEAN/STD`` = 0.5) instead.

Key layout: ``<flax module path joined by '.'>.<leaf>`` with conv/linear ``weight`` <->
``kernel`` (OIHW -> HWIO, (out, in) -> (in, out)), BatchNorm ``weight``/``bias`` <->
``scale``/``bias`` and ``running_mean``/``running_var`` <-> ``batch_stats`` ``mean``/``var``;
``num_batches_tracked`` is ignored. The file is read with ``safetensors.numpy`` (no torch,
no pickle).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from epsweep.errors import UserError

_TORCH_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# Classifier layers: may differ in shape (class count) and are then kept as initialised.
_REPLACEABLE_MODULES = ("fc.", "AuxLogits.fc.", "head_hidden.", "head_out.")
# May be absent from the file (kept as initialised) or from the model (ignored).
_OPTIONAL_MODULES = ("fc.", "AuxLogits.", "head_hidden.", "head_out.")
_IGNORED_SUFFIX = ".num_batches_tracked"


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_inception_safetensors` did, as PyTorch key names."""

    loaded: tuple[str, ...]  # model entries copied from the file
    kept_init: tuple[str, ...]  # model entries left as in init_variables (new head, absent aux)
    ignored: tuple[str, ...]  # file entries not used (other head, aux the model lacks, counters)


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """PyTorch state-dict key of the flax leaf ``variables[collection][path...]``."""
    *modules, leaf = path
    return ".".join([*modules, _TORCH_LEAF_NAMES[(collection, leaf)]])


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """PyTorch shape of a flax leaf shape: HWIO -> OIHW, (in, out) -> (out, in)."""
    if len(shape) == 4:
        height, width, in_ch, out_ch = shape
        return (out_ch, in_ch, height, width)
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def torch_state_shapes(variables: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The PyTorch keys and shapes a file must hold to fill ``variables`` (arrays or
    ``jax.ShapeDtypeStruct``s), in model order."""
    return {
        torch_key(collection, path): torch_shape(leaf.shape)
        for collection, path, leaf in _flax_leaves(variables)
    }


def _flax_leaves(variables):
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
            yield collection, path, leaf


def torch_state(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``variables`` (``{"params", "batch_stats"}`` of an :class:`InceptionV3`) as a PyTorch
    state dict of NumPy arrays (HWIO -> OIHW, (in, out) -> (out, in)): what
    ``safetensors.numpy.save_file`` writes for :func:`load_inception_safetensors` (or timm) to
    read back."""
    return {torch_key(collection, path): np.ascontiguousarray(_to_torch_layout(np.asarray(leaf)))
            for collection, path, leaf in _flax_leaves(variables)}


def random_state(init_variables: Mapping[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """A stand-in for pretrained weights (tests, benchmarks): a PyTorch state dict shaped like
    ``init_variables`` (arrays or shape structs) whose base keeps activations O(1) in inference
    mode. Kernels He-normal, N(0, 2 / fan_in); BatchNorm scale U(0.8, 1.2), bias, running mean
    N(0, 0.1), running variance U(0.5, 2); linear biases N(0, 0.1)."""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        shape, name = tuple(leaf.shape), path[-1]
        if name == "kernel":
            return rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        if name in ("scale", "var"):
            return rng.uniform(*((0.8, 1.2) if name == "scale" else (0.5, 2.0)), shape)
        return rng.normal(0.0, 0.1, shape)  # bias, mean

    return torch_state({collection: traverse_util.unflatten_dict({
        path: value(path, leaf).astype(np.float32)
        for path, leaf in traverse_util.flatten_dict(dict(init_variables.get(collection, {}))).items()})
        for collection in ("params", "batch_stats")})


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if array.ndim == 2:
        return array.T
    return array


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


def _first(keys, limit: int = 3) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _check_values(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Refuse the tensors that casting to the model's float type would turn into garbage: whole
    numbers or bools (a quantised checkpoint, or not weights at all), and NaN or infinite values
    (which would only show as every run diverging at step 0). float16, bfloat16 and float64 are
    cast as they are."""
    for key, array in tensors.items():
        if array.dtype.kind in "biuc":  # bool, int, uint, complex; bfloat16 is kind "V"
            raise UserError(f"{path}: {key} holds {array.dtype} values; weights must be floating point (float16, "
                            "bfloat16, float32 or float64): a quantised checkpoint cannot be used as it is")
    not_finite = [key for key, array in tensors.items() if not np.isfinite(array).all()]
    if not_finite:
        raise UserError(f"{path}: NaN or infinite values in {_first(not_finite)}")


def load_inception_safetensors(
    path: str | Path, init_variables: Mapping[str, Any]
) -> tuple[dict[str, Any], LoadReport]:
    """Fill ``init_variables`` (``{"params", "batch_stats"}`` of an :class:`InceptionV3`) from
    a torchvision/timm state dict saved as .safetensors; return ``(variables, report)``.

    The model's configuration is read off ``init_variables``: every base entry must be in
    the file with the matching shape. A classifier (``fc``, ``AuxLogits.fc``) is loaded only
    when its shape matches (same ``num_classes``); otherwise, and for the ``head="mlp"``
    layers and an aux block the file lacks, the entries stay as in ``init_variables``. File
    entries the model has no place for are ignored only if they are ``fc.*``, ``AuxLogits.*``
    or ``num_batches_tracked``. Leaves that will be overwritten may be ``jax.ShapeDtypeStruct``
    (e.g. from ``jax.eval_shape(model.init, ...)``); leaves kept must be real arrays.
    Raises :class:`~epsweep.errors.UserError` (a ``ValueError``) with a one-line message.
    """
    path = Path(path)
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a .safetensors file") from None
    except Exception as error:  # safetensors raises its own error types for bad headers/dtypes
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: cannot read as safetensors ({detail})") from None

    targets = {torch_key(c, p): (c, p, leaf) for c, p, leaf in _flax_leaves(init_variables)}
    expected_shapes = {key: torch_shape(leaf.shape) for key, (_, _, leaf) in targets.items()}

    def matches(key):
        return key in tensors and tuple(tensors[key].shape) == expected_shapes[key]

    missing, mismatched, kept = [], [], set()
    for key in targets:
        if matches(key):
            continue
        if key.startswith(_OPTIONAL_MODULES) and key not in tensors:
            kept.add(key)  # aux block or classifier the file lacks
        elif key.startswith(_REPLACEABLE_MODULES):
            kept.add(key)  # different num_classes: keep the fresh classifier
        elif key not in tensors:
            missing.append(key)
        else:
            mismatched.append(f"{key} file {tuple(tensors[key].shape)} vs model {expected_shapes[key]}")
    for prefix in _REPLACEABLE_MODULES:  # a classifier is loaded whole or not at all
        group = [key for key in targets if key.startswith(prefix)]
        if kept.intersection(group):
            kept.update(group)
    unexpected = [
        key
        for key in tensors
        if key not in targets and not key.endswith(_IGNORED_SUFFIX) and not key.startswith(_OPTIONAL_MODULES)
    ]

    if mismatched:
        raise UserError(f"{path}: shape mismatch for {_first(mismatched)}")
    if missing:
        raise UserError(f"{path}: missing keys {_first(missing)}")
    if unexpected:
        raise UserError(f"{path}: unexpected keys {_first(unexpected)}")
    is_array = lambda leaf: isinstance(leaf, (jax.Array, np.ndarray))  # noqa: E731
    abstract = [key for key in targets if key in kept and not is_array(targets[key][2])]
    if abstract:
        raise UserError(
            f"{path}: {_first(abstract)} not loadable from the file and init_variables holds no "
            "initialised array for it; pass variables from model.init"
        )
    _check_values(path, {key: tensors[key] for key in targets if key not in kept})

    merged = {
        collection: traverse_util.flatten_dict(dict(init_variables[collection]))
        for collection in ("params", "batch_stats")
        if collection in init_variables
    }
    loaded = []
    for key, (collection, flax_path, leaf) in targets.items():
        if key in kept:
            continue
        # NumPy, not jax.numpy: loading weights starts no JAX backend
        merged[collection][flax_path] = np.asarray(_to_flax_layout(tensors[key]), dtype=leaf.dtype)
        loaded.append(key)
    variables = dict(init_variables)
    variables.update({collection: traverse_util.unflatten_dict(flat) for collection, flat in merged.items()})
    report = LoadReport(
        loaded=tuple(loaded),
        kept_init=tuple(key for key in targets if key in kept),
        ignored=tuple(key for key in tensors if key not in targets or key in kept),
    )
    return variables, report
