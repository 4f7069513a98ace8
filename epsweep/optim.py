"""RMSProp as each framework implements it, built from optax pieces.

Notation: g gradient, v second moment, m momentum buffer, lr learning rate, rho decay,
mu momentum. Every numeric hyperparameter is injected with ``optax.inject_hyperparams``,
so it lives in the optimizer state as a traced array: one compiled program serves every
value, and ``jax.vmap`` can give each configuration its own.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax

from epsweep.errors import UserError

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _optax_rule(learning_rate, decay, eps, momentum, centered):
    """optax.rmsprop: v0 = 0; v = rho*v + (1-rho)*g^2; u = lr*g/sqrt(v + eps);
    m = mu*m + u; p -= m.  Eps inside the root; momentum accumulates lr-scaled steps."""
    scale = (optax.scale_by_stddev if centered else optax.scale_by_rms)(decay=decay, eps=eps, initial_scale=0.0)
    return optax.chain(scale, optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum))


def _pytorch_rule(learning_rate, decay, eps, momentum, centered):
    """torch.optim.RMSprop: v0 = 0; v = rho*v + (1-rho)*g^2; m = mu*m + g/(sqrt(v) + eps);
    p -= lr*m.  Eps outside the root; lr applied outside the momentum buffer.
    Centered: sqrt(v - gbar^2) + eps with gbar = rho*gbar + (1-rho)*g."""
    scale = (optax.scale_by_stddev if centered else optax.scale_by_rms)(
        decay=decay, eps=eps, initial_scale=0.0, eps_in_sqrt=False
    )
    return optax.chain(scale, optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate))


def _tf1_rule(learning_rate, decay, eps, momentum, centered):
    """tf.train.RMSPropOptimizer (kernel ApplyRMSProp) and timm's RMSpropTF: v0 = 1;
    v = rho*v + (1-rho)*g^2; m = mu*m + lr*g/sqrt(v + eps); p -= m.  Eps inside the root,
    lr inside the momentum buffer. Centered: sqrt(v - gbar^2 + eps), gbar0 = 0. The Inception-v3
    paper's optimizer."""
    scale = (optax.scale_by_stddev if centered else optax.scale_by_rms)(decay=decay, eps=eps, initial_scale=1.0)
    return optax.chain(scale, optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum))


def _keras_rule(learning_rate, decay, eps, momentum, centered):
    """keras.optimizers.RMSprop (Keras 3): v0 = 0; v = rho*v + (1-rho)*g^2;
    inc = lr*g/sqrt(v + eps); m = mu*m + inc; p -= m (p -= inc when mu = 0).
    Centered: sqrt(v - gbar^2 + eps).  The same rule as optax's; Keras differs only in its
    default eps (1e-7), which callers pass explicitly here."""
    return _optax_rule(learning_rate, decay, eps, momentum, centered)


CONVENTIONS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "optax": _optax_rule,
    "pytorch": _pytorch_rule,
    "tf1": _tf1_rule,
    "keras": _keras_rule,
}

# Each framework's own defaults (lr, decay, eps, momentum), for documentation and presets.
FRAMEWORK_DEFAULTS: dict[str, dict[str, float | None]] = {
    "optax": {"lr": None, "decay": 0.9, "eps": 1e-8, "momentum": 0.0},
    "pytorch": {"lr": 1e-2, "decay": 0.99, "eps": 1e-8, "momentum": 0.0},
    "tf1": {"lr": None, "decay": 0.9, "eps": 1e-10, "momentum": 0.0},
    "keras": {"lr": 1e-3, "decay": 0.9, "eps": 1e-7, "momentum": 0.0},
}


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise UserError(f"unknown convention {convention!r}; choose from {', '.join(CONVENTIONS)}")
    return convention


def rmsprop(
    learning_rate: float | jnp.ndarray | Schedule,
    decay: float | jnp.ndarray,
    eps: float | jnp.ndarray,
    *,
    convention: str = "optax",
    momentum: float | jnp.ndarray = 0.0,
    centered: bool = False,
) -> optax.GradientTransformation:
    """RMSProp with the update rule of ``convention`` ("optax", "pytorch", "tf1", "keras").

    ``learning_rate``, ``decay``, ``eps`` and ``momentum`` become traced hyperparameters in
    the optimizer state (``state.hyperparams``); ``learning_rate`` may be a schedule of the
    step count. See each ``_<convention>_rule`` for the exact update.
    """
    rule = CONVENTIONS[check_convention(convention)]
    return optax.inject_hyperparams(rule)(
        learning_rate=learning_rate, decay=decay, eps=eps, momentum=momentum, centered=centered
    )
