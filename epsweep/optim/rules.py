"""RMSProp as each framework implements it, built from optax pieces.

Notation: g gradient, v second moment, m momentum buffer, lr learning rate, rho decay,
mu momentum. Every numeric hyperparameter is injected with ``optax.inject_hyperparams``,
so it lives in the optimizer state as a traced array: one compiled program serves every
value, and ``jax.vmap`` can give each configuration its own.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from epsweep.errors import UserError, param
from epsweep.vocabulary import AXIS_ROLES, CONVENTION_NAMES, OPTIMIZER_NAMES, check_convention, check_optimizer

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _momentum(momentum) -> optax.GradientTransformation:
    """m = mu*m + u, or nothing at all when ``momentum`` is None: a grid whose momenta are all
    0 needs no buffer (m = 0*m + u is u exactly, so the numbers are the same)."""
    return optax.identity() if momentum is None else optax.trace(decay=momentum)


def _scale_by_moments(decay, one_minus_decay, eps, eps_in_sqrt: bool, centered: bool) -> optax.GradientTransformation:
    """optax.scale_by_rms (centered: optax.scale_by_stddev), the same operations in the same
    order and the same states, v0 = 0, with 1 - rho given apart: v = rho*v + (1-rho)*g^2,
    gbar = rho*gbar + (1-rho)*g; u = g/sqrt(v - gbar^2 + eps) or g/(sqrt(v - gbar^2) + eps).

    optax, PyTorch and Keras, given rho as a Python float, take 1 - rho in double precision
    and round it to float32. Taken in the program from float32 rho, it is 1 - float32(rho):
    1.3e-5 off at rho = 0.999, 1.4e-3 at 0.99999, 19% at 0.9999999."""

    def moment(g, t, order):
        return one_minus_decay * g**order + decay * t

    def init(params):
        nu = optax.tree.zeros_like(params)
        return optax.ScaleByRStdDevState(mu=optax.tree.zeros_like(params), nu=nu) if centered else (
            optax.ScaleByRmsState(nu=nu))

    def update(updates, state, params=None):
        del params
        nu = jax.tree.map(lambda g, t: moment(g, t, 2), updates, state.nu)
        mu = jax.tree.map(lambda g, t: moment(g, t, 1), updates, state.mu) if centered else None
        var = nu if mu is None else jax.tree.map(lambda m, n: n - m * m, mu, nu)
        if eps_in_sqrt:
            scaling = jax.tree.map(lambda n: jax.lax.rsqrt(n + eps), var)
        else:
            scaling = jax.tree.map(lambda n: 1 / (jnp.sqrt(n) + eps), var)
        updates = jax.tree.map(lambda s, g: s * g, scaling, updates)
        return updates, optax.ScaleByRStdDevState(mu=mu, nu=nu) if centered else optax.ScaleByRmsState(nu=nu)

    return optax.GradientTransformation(init, update)


def _optax_rule(learning_rate, decay, eps, momentum, centered, one_minus_decay):
    """optax.rmsprop: v0 = 0; v = rho*v + (1-rho)*g^2; u = lr*g/sqrt(v + eps);
    m = mu*m + u; p -= m.  Eps inside the root; momentum accumulates lr-scaled steps."""
    scale = _scale_by_moments(decay, one_minus_decay, eps, eps_in_sqrt=True, centered=centered)
    return optax.chain(scale, optax.scale_by_learning_rate(learning_rate), _momentum(momentum))


def _pytorch_rule(learning_rate, decay, eps, momentum, centered, one_minus_decay):
    """torch.optim.RMSprop: v0 = 0; v = rho*v + (1-rho)*g^2; m = mu*m + g/(sqrt(v) + eps);
    p -= lr*m.  Eps outside the root; lr applied outside the momentum buffer.
    Centered: sqrt(v - gbar^2) + eps with gbar = rho*gbar + (1-rho)*g."""
    scale = _scale_by_moments(decay, one_minus_decay, eps, eps_in_sqrt=False, centered=centered)
    return optax.chain(scale, _momentum(momentum), optax.scale_by_learning_rate(learning_rate))


def _tf1_rule(learning_rate, decay, eps, momentum, centered, one_minus_decay):
    """tf.train.RMSPropOptimizer (kernel ApplyRMSProp) and timm's RMSpropTF: v0 = 1;
    v = rho*v + (1-rho)*g^2; m = mu*m + lr*g/sqrt(v + eps); p -= m.  Eps inside the root,
    lr inside the momentum buffer. Centered: sqrt(v - gbar^2 + eps), gbar0 = 0. The Inception-v3
    paper's optimizer. 1 - rho is taken from float32 rho, as TF's kernel does (timm's
    RMSpropTF takes it in double: the two differ from rho = 0.9999 on)."""
    del one_minus_decay
    scale = (optax.scale_by_stddev if centered else optax.scale_by_rms)(decay=decay, eps=eps, initial_scale=1.0)
    return optax.chain(scale, optax.scale_by_learning_rate(learning_rate), _momentum(momentum))


def _keras_rule(learning_rate, decay, eps, momentum, centered, one_minus_decay):
    """keras.optimizers.RMSprop (Keras 3): v0 = 0; v = rho*v + (1-rho)*g^2;
    inc = lr*g/sqrt(v + eps); m = mu*m + inc; p -= m (p -= inc when mu = 0).
    Centered: sqrt(v - gbar^2 + eps).  The same rule as optax's; Keras differs only in its
    default eps (1e-7), which callers pass explicitly here."""
    return _optax_rule(learning_rate, decay, eps, momentum, centered, one_minus_decay)


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


def _stored_in_own_dtypes(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` with every state array stored back in the dtype it was created with.

    optax and PyTorch create the statistics (v, m, gbar) in the parameters' dtype. The injected
    hyperparameters are float32 arrays, so rho*v + (1-rho)*g^2 comes out float32 for bfloat16
    parameters: each step here computes in float32 from the stored values and stores the new
    statistics rounded to their own dtype (as optax's ``mu_dtype`` does for Adam), so the state
    keeps one type from step to step. Where the dtypes agree (float32 models) nothing changes."""

    def stored(new, old):
        dtype = getattr(old, "dtype", None)
        return new if dtype is None or new.dtype == dtype else new.astype(dtype)

    def update(updates, state, params=None, **extra_args):
        updates, new_state = inner.update(updates, state, params, **extra_args)
        # the statistics only: hyperparameters stay as inject_hyperparams gives them (float32)
        return updates, new_state._replace(inner_state=jax.tree.map(stored, new_state.inner_state,
                                                                    state.inner_state))

    return optax.GradientTransformationExtraArgs(inner.init, update)


def _injected(rule: Callable[..., optax.GradientTransformation]) -> Callable[..., optax.GradientTransformation]:
    """``rule`` with its numeric hyperparameters injected as float32 arrays (exact grid values,
    whatever the parameters' dtype) and its statistics stored in their own dtype."""
    return lambda **hyperparams: _stored_in_own_dtypes(
        optax.inject_hyperparams(rule, hyperparam_dtype=jnp.float32)(**hyperparams))


def rmsprop(
    learning_rate: float | jnp.ndarray | Schedule,
    decay: float | jnp.ndarray,
    eps: float | jnp.ndarray,
    *,
    convention: str = "optax",
    momentum: float | jnp.ndarray = 0.0,
    centered: bool = False,
    one_minus_decay: float | jnp.ndarray | None = None,
) -> optax.GradientTransformation:
    """RMSProp with the update rule of ``convention`` ("optax", "pytorch", "tf1", "keras").

    ``learning_rate``, ``decay``, ``eps``, ``momentum`` and ``one_minus_decay`` become traced
    hyperparameters in the optimizer state (``state.hyperparams``); ``learning_rate`` may be a
    schedule of the step count. See each ``_<convention>_rule`` for the exact update. The
    statistics keep the parameters' dtype: for bfloat16 parameters each step computes in
    float32 and stores them rounded back to bfloat16.

    Args:
        learning_rate: lr, or a schedule of the step count.
        decay: rho, the second moment's decay.
        eps: epsilon, where the convention puts it.
        convention: whose update rule: "optax", "pytorch", "tf1" (also timm's RMSpropTF) or "keras".
        momentum: mu (0: none; None: no momentum buffer at all).
        centered: divide by the running standard deviation instead.
        one_minus_decay: 1 - rho (default: ``1 - decay``, in double precision for a Python
            float, as the frameworks take it; tf1 takes it from float32 rho, as TF does).

    Returns:
        An ``optax.GradientTransformation``.

    Example:
        >>> import jax.numpy as jnp
        >>> opt = rmsprop(0.1, 0.9, 1.0, convention="tf1")  # v starts at 1, eps inside the root
        >>> updates, _ = opt.update({"w": jnp.array([2.0])}, opt.init({"w": jnp.array([0.0])}))
        >>> round(float(updates["w"][0]), 4)  # -0.1 * 2 / sqrt(0.9 * 1 + 0.1 * 4 + 1)
        -0.1319
    """
    rule = CONVENTIONS[check_convention(convention)]
    one_minus_decay = 1 - decay if one_minus_decay is None else one_minus_decay
    return _injected(rule)(learning_rate=learning_rate, decay=decay, eps=eps, momentum=momentum, centered=centered,
                           one_minus_decay=one_minus_decay)


# --- baselines: the grid's eps, decay, lr and momentum mapped onto other optimizers ----------

ADAM_B1 = 0.9  # Adam's first-moment decay, fixed: the grid's decay is Adam's b2
ADAGRAD_INITIAL_ACCUMULATOR = 0.1  # optax.adagrad's default starting value of the sum of squares


def _adam_rule(learning_rate, decay, eps, momentum, centered, one_minus_decay):
    """optax.adam and torch.optim.Adam (amsgrad off, no weight decay), b2 = decay, b1 = 0.9:
    m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2 (m0 = v0 = 0); m^ = m/(1-b1^t);
    v^ = v/(1-b2^t); p -= lr*m^/(sqrt(v^) + eps).  Eps outside the root, added after the bias
    correction.  ``momentum`` and ``centered`` do not apply."""
    del momentum, centered, one_minus_decay  # torch's, and ours: 1 - b2 and 1 - b2^t both from b2
    return optax.chain(optax.scale_by_adam(b1=ADAM_B1, b2=decay, eps=eps), optax.scale_by_learning_rate(learning_rate))


def _adagrad_rule(learning_rate, decay, eps, momentum, centered, one_minus_decay):
    """optax.adagrad: s0 = 0.1; s = s + g^2; p -= lr*g/sqrt(s + eps).  Eps inside the root;
    no decay: the step size only shrinks as s grows.  (torch.optim.Adagrad differs: s0 = 0 by
    default and eps outside the root, lr*g/(sqrt(s) + eps); the two agree at eps = 0 with
    torch's initial_accumulator_value=0.1.)  ``decay``, ``momentum``, ``centered`` do not apply."""
    del decay, momentum, centered, one_minus_decay
    return optax.chain(
        optax.scale_by_rss(initial_accumulator_value=ADAGRAD_INITIAL_ACCUMULATOR, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def _sgd_rule(learning_rate, decay, eps, momentum, centered, one_minus_decay):
    """optax.sgd and torch.optim.SGD (dampening 0, no Nesterov, no weight decay):
    m = mu*m + g (m0 = 0); p -= lr*m.  No denominator: ``eps`` and ``decay`` do not apply."""
    del decay, eps, centered, one_minus_decay
    return optax.chain(_momentum(momentum), optax.scale_by_learning_rate(learning_rate))


BASELINES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": _adam_rule,
    "adagrad": _adagrad_rule,
    "sgd": _sgd_rule,
}
OPTIMIZERS = ("rmsprop", *BASELINES)
assert OPTIMIZERS == OPTIMIZER_NAMES and tuple(CONVENTIONS) == CONVENTION_NAMES




def make_optimizer(
    name: str,
    learning_rate: float | jnp.ndarray | Schedule,
    decay: float | jnp.ndarray,
    eps: float | jnp.ndarray,
    *,
    momentum: float | jnp.ndarray | None = 0.0,
    convention: str = "optax",
    centered: bool = False,
    one_minus_decay: float | jnp.ndarray | None = None,
) -> optax.GradientTransformation:
    """The optimizer ``name`` ("rmsprop", "adam", "adagrad", "sgd") with the grid's axes mapped
    onto it: rmsprop as :func:`rmsprop`; adam: b2 = decay, b1 = 0.9; adagrad: decay unused;
    sgd: momentum, eps and decay unused.  ``convention`` and ``centered`` apply to rmsprop
    only.  Every optimizer carries the same traced hyperparameters (``learning_rate``,
    ``decay``, ``eps``, ``momentum``, ``one_minus_decay``), so one engine serves them all.

    Args:
        name: "rmsprop", "adam", "adagrad" or "sgd".
        learning_rate: lr, or a schedule of the step count.
        decay: rmsprop's rho; adam's b2; unused by adagrad and sgd (None there is fine).
        eps: epsilon (unused by sgd: None there is fine).
        momentum: rmsprop's and sgd's momentum; None keeps no momentum buffer at all.
        convention: rmsprop's framework convention.
        centered: centered rmsprop.
        one_minus_decay: 1 - decay, as :func:`rmsprop` takes it (unused by the others).

    Returns:
        An ``optax.GradientTransformation`` with injected hyperparameters.

    Example:
        >>> opt = make_optimizer("adam", 1e-3, 0.999, 1e-8)
        >>> sorted(opt.init({"w": 0.0}).hyperparams)
        ['decay', 'eps', 'learning_rate', 'momentum', 'one_minus_decay']
    """
    check_optimizer(name)
    for axis, value in (("decay", decay), ("eps", eps)):
        if value is None and axis in AXIS_ROLES[name]:
            raise UserError(f"{param(axis)}: {name} needs a value, not None")
    decay = 0.0 if decay is None else decay  # unused by this optimizer: a placeholder for its traced slot
    eps = 0.0 if eps is None else eps
    one_minus_decay = 1 - decay if one_minus_decay is None else one_minus_decay
    if name == "rmsprop":
        return rmsprop(learning_rate, decay, eps, convention=convention, momentum=momentum, centered=centered,
                       one_minus_decay=one_minus_decay)
    return _injected(BASELINES[name])(learning_rate=learning_rate, decay=decay, eps=eps, momentum=momentum,
                                      centered=False, one_minus_decay=one_minus_decay)
