"""Inception-v3 in flax.linen, layer for layer the torchvision / timm ``inception_v3``.

Inputs are NHWC. Submodule names are the PyTorch attribute names (``Conv2d_1a_3x3/conv``,
``Mixed_6e/branch7x7dbl_3/bn``, ``AuxLogits/fc``, ``fc``), so a PyTorch state dict maps onto
the flax tree key for key (see :mod:`epsweep.models.inception_weights`). Initialisation
follows torchvision/timm: conv and linear kernels N(0, 0.1) (AuxLogits.conv1 0.01,
AuxLogits.fc 0.001), linear biases U(+-1/sqrt(fan_in)), BatchNorm scale 1 and bias 0.

Head vs base (for freezing the base): the head is the classifier (``fc`` for
``head="linear"``, ``head_hidden`` + ``head_out`` for ``head="mlp"``) and, when
``aux_logits``, the auxiliary classifier's final layer ``AuxLogits/fc``; everything else,
including ``AuxLogits/conv0`` and ``AuxLogits/conv1``, is base. That is what torchvision's
fine-tuning recipe replaces (``model.fc`` and ``model.AuxLogits.fc``). Freezing base
*params* does not freeze BatchNorm running statistics: they still update whenever the base
runs in training mode, so a frozen base (Keras semantics) runs with ``base_train=False``.

Stages: ``stage="features"`` runs the base alone and returns what the head reads (the pooled
2048 features, and the aux classifier's pooled 768 when ``aux_logits``); ``stage="head"`` runs
the head on them. Module names are those of the full model, so the head stage's parameters
initialise to the full model's head leaves for the same key and its dropout draws the same
mask (linen derives both from the module path): ``head(features(x))`` is the full model, step
for step, when the base is frozen in inference mode.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from epsweep.models.inception_sizes import AUX_MIN_INPUT_SIZE, MIN_INPUT_SIZE

HEAD_MODULES = ("fc", "head_hidden", "head_out")
"""Top-level parameter groups that form the classifier head."""

STAGES = ("full", "features", "head")
"""What :meth:`InceptionV3.__call__` runs: the whole model, the base alone, the head alone."""

FEATURES = 2048
"""Width of the pooled features the classifier reads."""

AUX_FEATURES = 768
"""Width of the pooled features the auxiliary classifier's final layer reads."""

_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.9  # flax keeps `momentum` of the old value: PyTorch's momentum 0.1
_DEFAULT_STDDEV = 0.1


def _bias_init(fan_in: int):
    """PyTorch nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _at_least_float32(x):
    """Cast bfloat16/float16 outputs up to float32 (float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _avg_pool_3x3(x):
    """F.avg_pool2d(x, 3, stride=1, padding=1): zero padding counted in the mean."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _max_pool_3x3_s2(x):
    """F.max_pool2d(x, 3, stride=2): no padding, floor mode."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU; ``padding`` is PyTorch's symmetric (h, w)."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int = 1
    padding: int | Sequence[int] = 0
    stddev: float = _DEFAULT_STDDEV
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        pad_h, pad_w = _pair(self.padding)
        x = nn.Conv(
            self.features,
            _pair(self.kernel_size),
            strides=_pair(self.strides),
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False,
            kernel_init=nn.initializers.normal(self.stddev),
            dtype=self.dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=_BN_MOMENTUM,
            epsilon=_BN_EPSILON,
            dtype=self.dtype,
            name="bn",
        )(x)
        return nn.relu(x)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (Mixed_5b/c/d)."""

    pool_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(name, *args, **kwargs):
            return BasicConv2d(*args, dtype=self.dtype, name=name, **kwargs)

        branch1x1 = conv("branch1x1", 64, 1)(x, train)
        branch5x5 = conv("branch5x5_1", 48, 1)(x, train)
        branch5x5 = conv("branch5x5_2", 64, 5, padding=2)(branch5x5, train)
        branch3x3dbl = conv("branch3x3dbl_1", 64, 1)(x, train)
        branch3x3dbl = conv("branch3x3dbl_2", 96, 3, padding=1)(branch3x3dbl, train)
        branch3x3dbl = conv("branch3x3dbl_3", 96, 3, padding=1)(branch3x3dbl, train)
        branch_pool = conv("branch_pool", self.pool_features, 1)(_avg_pool_3x3(x), train)
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (Mixed_6a)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(name, *args, **kwargs):
            return BasicConv2d(*args, dtype=self.dtype, name=name, **kwargs)

        branch3x3 = conv("branch3x3", 384, 3, strides=2)(x, train)
        branch3x3dbl = conv("branch3x3dbl_1", 64, 1)(x, train)
        branch3x3dbl = conv("branch3x3dbl_2", 96, 3, padding=1)(branch3x3dbl, train)
        branch3x3dbl = conv("branch3x3dbl_3", 96, 3, strides=2)(branch3x3dbl, train)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (Mixed_6b/c/d/e)."""

    channels_7x7: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(name, *args, **kwargs):
            return BasicConv2d(*args, dtype=self.dtype, name=name, **kwargs)

        c7 = self.channels_7x7
        branch1x1 = conv("branch1x1", 192, 1)(x, train)
        branch7x7 = conv("branch7x7_1", c7, 1)(x, train)
        branch7x7 = conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(branch7x7, train)
        branch7x7 = conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(branch7x7, train)
        branch7x7dbl = conv("branch7x7dbl_1", c7, 1)(x, train)
        branch7x7dbl = conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(branch7x7dbl, train)
        branch7x7dbl = conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(branch7x7dbl, train)
        branch7x7dbl = conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(branch7x7dbl, train)
        branch7x7dbl = conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(branch7x7dbl, train)
        branch_pool = conv("branch_pool", 192, 1)(_avg_pool_3x3(x), train)
        return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (Mixed_7a)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(name, *args, **kwargs):
            return BasicConv2d(*args, dtype=self.dtype, name=name, **kwargs)

        branch3x3 = conv("branch3x3_1", 192, 1)(x, train)
        branch3x3 = conv("branch3x3_2", 320, 3, strides=2)(branch3x3, train)
        branch7x7x3 = conv("branch7x7x3_1", 192, 1)(x, train)
        branch7x7x3 = conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(branch7x7x3, train)
        branch7x7x3 = conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(branch7x7x3, train)
        branch7x7x3 = conv("branch7x7x3_4", 192, 3, strides=2)(branch7x7x3, train)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3/3x1 branches (Mixed_7b/c)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(name, *args, **kwargs):
            return BasicConv2d(*args, dtype=self.dtype, name=name, **kwargs)

        branch1x1 = conv("branch1x1", 320, 1)(x, train)
        branch3x3 = conv("branch3x3_1", 384, 1)(x, train)
        branch3x3 = jnp.concatenate(
            [
                conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(branch3x3, train),
                conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(branch3x3, train),
            ],
            axis=-1,
        )
        branch3x3dbl = conv("branch3x3dbl_1", 448, 1)(x, train)
        branch3x3dbl = conv("branch3x3dbl_2", 384, 3, padding=1)(branch3x3dbl, train)
        branch3x3dbl = jnp.concatenate(
            [
                conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(branch3x3dbl, train),
                conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(branch3x3dbl, train),
            ],
            axis=-1,
        )
        branch_pool = conv("branch_pool", 192, 1)(_avg_pool_3x3(x), train)
        return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on Mixed_6e: avgpool 5/3 -> 1x1 conv 128 -> 5x5 conv 768 ->
    global average -> fc. Needs a Mixed_6e map of at least 17x17 (input >= 299x299).

    ``stage``: ``"full"`` (the map to logits), ``"features"`` (the map to the pooled 768
    features ``fc`` reads) or ``"head"`` (those features to logits); ``train`` is the
    BatchNorm mode of the two convolutions."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, stage: str = "full"):
        if stage != "head":
            height, width = x.shape[-3:-1]
            if min(height, width) < 17:
                raise ValueError(
                    f"AuxLogits needs a Mixed_6e map of at least 17x17 (input >= {AUX_MIN_INPUT_SIZE}x"
                    f"{AUX_MIN_INPUT_SIZE}), got {height}x{width}"
                )
            x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding="VALID")
            x = BasicConv2d(128, 1, dtype=self.dtype, name="conv0")(x, train)
            x = BasicConv2d(768, 5, stddev=0.01, dtype=self.dtype, name="conv1")(x, train)
            x = jnp.mean(x, axis=(-3, -2))
            if stage == "features":
                return x
        return nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.normal(0.001),
            bias_init=_bias_init(AUX_FEATURES),
            dtype=self.dtype,
            name="fc",
        )(x.astype(self.dtype))


class InceptionV3(nn.Module):
    """Inception-v3 (torchvision/timm layout), NHWC input of at least 75x75.

    ``__call__(x, train)`` returns logits, or ``(logits, aux_logits)`` when ``train`` and
    ``aux_logits`` (as torchvision; the aux branch then needs input >= 299x299). Logits are at
    least float32 whatever ``dtype`` (the computation dtype; params stay float32). ``head``:
    ``"linear"`` = global average pool -> dropout -> Dense(num_classes) named ``fc``;
    ``"mlp"`` = global average pool -> Dense(1024, ReLU) ``head_hidden`` ->
    Dense(num_classes) ``head_out`` (the Keras fine-tuning example head, no dropout).
    Dropout draws from the ``"dropout"`` rng collection; BatchNorm state is ``batch_stats``.

    ``base_train`` (default ``train``): the BatchNorm mode of the base, everything but the
    head (see :func:`is_head_param`); ``False`` with ``train=True`` is a frozen base in
    inference mode under a training head. ``stage`` (see the module docstring):
    ``"features"`` maps images to the pooled features (N, 2048), or to ``(features,
    aux_features)`` (N, 768) when ``aux_logits`` (input >= 299x299); ``"head"`` maps those
    to what ``"full"`` returns.
    """

    num_classes: int = 1000
    aux_logits: bool = False
    head: str = "linear"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, stage: str = "full", base_train: bool | None = None):
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        base_train = train if base_train is None else base_train
        aux_head = InceptionAux(self.num_classes, dtype=self.dtype, name="AuxLogits") if self.aux_logits else None
        if stage == "head":
            features, aux_features = x if self.aux_logits else (x, None)
        else:
            features, aux_features = self._base(x, base_train, aux_head, aux=train or stage == "features")
            if stage == "features":
                return (features, aux_features) if self.aux_logits else features

        aux = None
        if aux_features is not None and (train or self.is_initializing()):
            aux = _at_least_float32(aux_head(aux_features, train=base_train, stage="head"))
        features = features.astype(self.dtype)
        if self.head == "linear":
            features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
            logits = nn.Dense(
                self.num_classes,
                kernel_init=nn.initializers.normal(_DEFAULT_STDDEV),
                bias_init=_bias_init(FEATURES),
                dtype=self.dtype,
                name="fc",
            )(features)
        else:
            keras_init = nn.initializers.xavier_uniform()  # Keras Dense default (glorot_uniform, zero bias)
            hidden = nn.relu(nn.Dense(1024, kernel_init=keras_init, dtype=self.dtype, name="head_hidden")(features))
            logits = nn.Dense(self.num_classes, kernel_init=keras_init, dtype=self.dtype, name="head_out")(hidden)
        logits = _at_least_float32(logits)
        return (logits, aux) if train and aux is not None else logits

    def _base(self, x, train: bool, aux_head: InceptionAux | None, aux: bool):
        """Images -> (pooled features, ``aux_head``'s pooled features when ``aux``, else None)."""
        height, width = x.shape[-3:-1]
        if min(height, width) < MIN_INPUT_SIZE:
            raise ValueError(
                f"Inception-v3 needs input of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {height}x{width}"
            )

        def conv(name, *args, **kwargs):
            return BasicConv2d(*args, dtype=self.dtype, name=name, **kwargs)

        x = x.astype(self.dtype)
        x = conv("Conv2d_1a_3x3", 32, 3, strides=2)(x, train)  # 149x149 at 299 input
        x = conv("Conv2d_2a_3x3", 32, 3)(x, train)  # 147
        x = conv("Conv2d_2b_3x3", 64, 3, padding=1)(x, train)  # 147
        x = _max_pool_3x3_s2(x)  # Pool1: 73
        x = conv("Conv2d_3b_1x1", 80, 1)(x, train)  # 73
        x = conv("Conv2d_4a_3x3", 192, 3)(x, train)  # 71
        x = _max_pool_3x3_s2(x)  # Pool2: 35
        x = InceptionA(32, dtype=self.dtype, name="Mixed_5b")(x, train)  # 256 channels
        x = InceptionA(64, dtype=self.dtype, name="Mixed_5c")(x, train)  # 288
        x = InceptionA(64, dtype=self.dtype, name="Mixed_5d")(x, train)  # 288
        x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x, train)  # 768 x 17x17
        x = InceptionC(128, dtype=self.dtype, name="Mixed_6b")(x, train)
        x = InceptionC(160, dtype=self.dtype, name="Mixed_6c")(x, train)
        x = InceptionC(160, dtype=self.dtype, name="Mixed_6d")(x, train)
        x = InceptionC(192, dtype=self.dtype, name="Mixed_6e")(x, train)

        aux_features = None
        if aux_head is not None:
            if aux:
                aux_features = aux_head(x, train=train, stage="features")
            elif self.is_initializing():
                # Create the aux variables even when init runs in eval mode or on a small input;
                # param shapes depend only on the channel count.
                aux_head(jnp.zeros((1, 17, 17, x.shape[-1]), x.dtype), train=False)

        x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x, train)  # 1280 x 8x8
        x = InceptionE(dtype=self.dtype, name="Mixed_7b")(x, train)  # 2048
        x = InceptionE(dtype=self.dtype, name="Mixed_7c")(x, train)  # 2048
        return jnp.mean(x, axis=(-3, -2)), aux_features


def _path_names(path) -> tuple[str, ...]:
    """Key names of a path given as strings or jax tree-path entries (DictKey, GetAttrKey)."""
    names = []
    for entry in path:
        for attr in ("key", "name"):
            if hasattr(entry, attr):
                entry = getattr(entry, attr)
                break
        names.append(str(entry))
    return tuple(names)


def is_head_param(path) -> bool:
    """True for a parameter of the classifier head: ``fc``, ``head_hidden``, ``head_out`` and
    ``AuxLogits/fc``. ``path`` is a tuple of names (a leading ``"params"`` is allowed) or a jax
    key path from ``jax.tree_util.tree_map_with_path``."""
    names = _path_names(path)
    if names and names[0] == "params":
        names = names[1:]
    if not names:
        return False
    return names[0] in HEAD_MODULES or names[:2] == ("AuxLogits", "fc")


def head_mask(params) -> Any:
    """Pytree of bools shaped like ``params``: True on head parameters (see :func:`is_head_param`).
    Use with ``optax.masked`` / ``optax.multi_transform`` to train only the head."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_head_param(path), params)
