"""The small built-in networks (flax.linen)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Flatten -> Dense(hidden, ReLU) -> Dense(classes): the Keras MNIST walkthrough model.
    Returns logits (softmax is folded into the loss)."""

    num_classes: int
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


class ToyNet(nn.Module):
    """Dense(10, ReLU) -> Dense(1): the classic small binary example. Returns one logit
    (the sigmoid is folded into the binary cross-entropy)."""

    hidden: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(1)(x)[..., 0]


class CNN(nn.Module):
    """Conv(16, 3x3, ReLU) -> avg-pool 2 -> Conv(32, 3x3, ReLU) -> global average -> Dense(classes)."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        if min(x.shape[1:3]) >= 2:
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(x)
