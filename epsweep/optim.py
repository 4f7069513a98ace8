"""RMSProp as each framework implements it, built from optax pieces.

Notation: g gradient, v second moment, m momentum buffer, lr learning rate, rho decay,
mu momentum. Every numeric hyperparameter is injected with ``optax.inject_hyperparams``,
so it lives in the optimizer state as a traced array: one compiled program serves every
value, and ``jax.vmap`` can give each configuration its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
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


# --- baselines: the grid's eps, decay, lr and momentum mapped onto other optimizers ----------

ADAM_B1 = 0.9  # Adam's first-moment decay, fixed: the grid's decay is Adam's b2
ADAGRAD_INITIAL_ACCUMULATOR = 0.1  # optax.adagrad's default starting value of the sum of squares


def _adam_rule(learning_rate, decay, eps, momentum, centered):
    """optax.adam and torch.optim.Adam (amsgrad off, no weight decay), b2 = decay, b1 = 0.9:
    m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2 (m0 = v0 = 0); m^ = m/(1-b1^t);
    v^ = v/(1-b2^t); p -= lr*m^/(sqrt(v^) + eps).  Eps outside the root, added after the bias
    correction.  ``momentum`` and ``centered`` do not apply."""
    del momentum, centered
    return optax.chain(optax.scale_by_adam(b1=ADAM_B1, b2=decay, eps=eps), optax.scale_by_learning_rate(learning_rate))


def _adagrad_rule(learning_rate, decay, eps, momentum, centered):
    """optax.adagrad: s0 = 0.1; s = s + g^2; p -= lr*g/sqrt(s + eps).  Eps inside the root;
    no decay: the step size only shrinks as s grows.  (torch.optim.Adagrad differs: s0 = 0 by
    default and eps outside the root, lr*g/(sqrt(s) + eps); the two agree at eps = 0 with
    torch's initial_accumulator_value=0.1.)  ``decay``, ``momentum``, ``centered`` do not apply."""
    del decay, momentum, centered
    return optax.chain(
        optax.scale_by_rss(initial_accumulator_value=ADAGRAD_INITIAL_ACCUMULATOR, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def _sgd_rule(learning_rate, decay, eps, momentum, centered):
    """optax.sgd and torch.optim.SGD (dampening 0, no Nesterov, no weight decay):
    m = mu*m + g (m0 = 0); p -= lr*m.  No denominator: ``eps`` and ``decay`` do not apply."""
    del decay, eps, centered
    return optax.chain(optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate))


BASELINES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": _adam_rule,
    "adagrad": _adagrad_rule,
    "sgd": _sgd_rule,
}
OPTIMIZERS = ("rmsprop", *BASELINES)


def check_optimizer(name: str) -> str:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return name


def make_optimizer(
    name: str,
    learning_rate: float | jnp.ndarray | Schedule,
    decay: float | jnp.ndarray,
    eps: float | jnp.ndarray,
    *,
    momentum: float | jnp.ndarray = 0.0,
    convention: str = "optax",
    centered: bool = False,
) -> optax.GradientTransformation:
    """The optimizer ``name`` ("rmsprop", "adam", "adagrad", "sgd") with the grid's axes mapped
    onto it: rmsprop as :func:`rmsprop`; adam: b2 = decay, b1 = 0.9; adagrad: decay unused;
    sgd: momentum, eps and decay unused.  ``convention`` and ``centered`` apply to rmsprop
    only.  Every optimizer carries the same traced hyperparameters (``learning_rate``,
    ``decay``, ``eps``, ``momentum``), so one engine serves them all."""
    if check_optimizer(name) == "rmsprop":
        return rmsprop(learning_rate, decay, eps, convention=convention, momentum=momentum, centered=centered)
    return optax.inject_hyperparams(BASELINES[name])(
        learning_rate=learning_rate, decay=decay, eps=eps, momentum=momentum, centered=False
    )


# --- what epsilon did: the denominator's two terms ------------------------------------------


class DenominatorTerms(NamedTuple):
    """Per-parameter pieces of an adaptive optimizer's denominator (pytrees like the params).

    ``stat`` is the gradient-statistics term that ``eps`` is added to, ``eps`` the scalar
    eps, ``denominator`` what the gradient (or first moment) is divided by:

    - eps inside the root (rmsprop optax/tf1/keras, adagrad): stat = v (centered: v - gbar^2;
      adagrad: the sum of squares, starting at 0.1), denominator = sqrt(stat + eps);
    - eps outside the root (rmsprop pytorch, adam): stat = sqrt(v) (centered:
      sqrt(v - gbar^2); adam: sqrt(v^) with v^ = v/(1 - b2^t)), denominator = stat + eps.
    """

    stat: Any
    eps: jax.Array
    denominator: Any


def _find_state(tree: Any, types: tuple[type, ...]) -> Any:
    """The first node of one of ``types`` in a nested optimizer state (inject_hyperparams
    state -> inner_state -> chain tuple -> ...), depth first; None if there is none."""
    if isinstance(tree, types):
        return tree
    children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (tuple, list)) else ()
    for child in children:
        found = _find_state(child, types)
        if found is not None:
            return found
    return None


def _hyperparams(opt_state: Any) -> dict:
    state = _find_state(opt_state, (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState))
    if state is None:
        raise ValueError("no injected hyperparameters in this optimizer state; build it with make_optimizer")
    return state.hyperparams


def _missing(kind: str) -> ValueError:
    return ValueError(f"no {kind} in this optimizer state")


def denominator_terms(opt_state: Any, optimizer: str = "rmsprop", convention: str = "optax") -> DenominatorTerms | None:
    """The denominator's terms in ``opt_state`` of :func:`make_optimizer` (``optimizer``,
    ``convention``) after an update: what the next step divides by, except that adam's
    bias correction uses the count of steps taken so far.  ``None`` for sgd (no denominator).
    """
    check_optimizer(optimizer)
    if optimizer == "sgd":
        return None
    hp = _hyperparams(opt_state)
    eps = hp["eps"]
    if optimizer == "rmsprop":
        check_convention(convention)
        state = _find_state(opt_state, (optax.ScaleByRStdDevState, optax.ScaleByRmsState))
        if state is None:
            raise _missing("RMSProp second moment")
        if isinstance(state, optax.ScaleByRStdDevState):
            var = jax.tree.map(lambda v, m: v - m * m, state.nu, state.mu)
        else:
            var = state.nu
        if convention == "pytorch":
            stat = jax.tree.map(jnp.sqrt, var)
            return DenominatorTerms(stat, eps, jax.tree.map(lambda s: s + eps, stat))
        return DenominatorTerms(var, eps, jax.tree.map(lambda s: jnp.sqrt(s + eps), var))
    if optimizer == "adam":
        state = _find_state(opt_state, (optax.ScaleByAdamState,))
        if state is None:
            raise _missing("Adam second moment")
        correction = 1 - hp["decay"] ** state.count
        correction = jnp.where(state.count > 0, correction, 1.0)  # before any step v = 0
        stat = jax.tree.map(lambda v: jnp.sqrt(v / correction.astype(v.dtype)), state.nu)
        return DenominatorTerms(stat, eps, jax.tree.map(lambda s: s + eps, stat))
    state = _find_state(opt_state, (optax.ScaleByRssState,))
    if state is None:
        raise _missing("Adagrad sum of squares")
    stat = state.sum_of_squares
    return DenominatorTerms(stat, eps, jax.tree.map(lambda s: jnp.sqrt(s + eps), stat))


def _selected(tree: Any, where: Any) -> tuple[list[jax.Array], list[jax.Array]]:
    """The leaves of ``tree`` and, for each, a bool array of the same shape: which of its
    parameters count (``where`` is None for all, or a pytree like the params of bool arrays
    or Python bools)."""
    leaves = jax.tree.leaves(tree)
    if where is None:
        return leaves, [jnp.ones(leaf.shape, bool) for leaf in leaves]
    masks = jax.tree.leaves(where)
    if len(masks) != len(leaves):
        raise ValueError(f"where has {len(masks)} leaves for {len(leaves)} parameter arrays")
    return leaves, [jnp.broadcast_to(jnp.asarray(m, bool), leaf.shape) for leaf, m in zip(leaves, masks)]


def moving_parameters(grads: Any, trainable: Any = None) -> Any:
    """Which parameters a gradient moves: g != 0 (and, with ``trainable``, a pytree of Python
    bools per array, only trainable arrays).  The diagnostics count only these: a parameter
    whose gradient is exactly zero (a dead ReLU unit, an input pixel that is always blank) does
    not move whatever eps is."""
    if trainable is None:
        return jax.tree.map(lambda g: g != 0, grads)
    return jax.tree.map(lambda g, t: (g != 0) & t, grads, trainable)


def eps_dominated_share(terms: DenominatorTerms, where: Any = None) -> jax.Array:
    """Share of the parameters selected by ``where`` (all by default) whose eps term exceeds
    their gradient-statistics term, eps > stat; NaN when none is selected."""
    stats, masks = _selected(terms.stat, where)
    count = sum(jnp.sum((terms.eps > s) & m) for s, m in zip(stats, masks))
    total = sum(jnp.sum(m) for m in masks)
    return (count / total).astype(jnp.float32)


def effective_lr_median(terms: DenominatorTerms, learning_rate: jax.Array, where: Any = None) -> jax.Array:
    """Median of the effective step size lr / denominator over the parameters selected by
    ``where`` (all by default); NaN when none is selected."""
    denominators, masks = _selected(terms.denominator, where)
    values = jnp.concatenate([jnp.ravel(learning_rate / d) for d in denominators])
    selected = jnp.concatenate([jnp.ravel(m) for m in masks])
    return jnp.nanmedian(jnp.where(selected, values, jnp.nan))


def eps_diagnostics(
    opt_state: Any, optimizer: str = "rmsprop", convention: str = "optax", where: Any = None
) -> dict | None:
    """``{"eps_dominated": share, "effective_lr": median lr/denominator}`` for ``opt_state``
    over the parameters selected by ``where`` (see :func:`moving_parameters`), using the
    learning rate stored in the state (the one its last update used); None for sgd."""
    terms = denominator_terms(opt_state, optimizer, convention)
    if terms is None:
        return None
    lr = _hyperparams(opt_state)["learning_rate"]
    return {"eps_dominated": eps_dominated_share(terms, where), "effective_lr": effective_lr_median(terms, lr, where)}
