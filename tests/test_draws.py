"""engine.draws: a function's keys and random draws computed together give the very bits
the function gives alone (JAX's own sampling is the reference), and gather what they can."""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from epsweep.engine import xla_options
from epsweep.engine.compiled import LARGE_INIT_BYTES, _init_compiler_options
from epsweep.engine.draws import batched_draws


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        x = nn.Dense(8, kernel_init=nn.initializers.truncated_normal(0.1))(x.reshape(len(x), -1))
        return nn.Dense(3, kernel_init=nn.initializers.orthogonal(), bias_init=nn.initializers.uniform())(x)


def _flax(key):
    return _Net().init(key, np.zeros((2, 5, 5, 1), np.float32))


def _tainted(key):  # a key that depends on another draw's bits, and a draw from it
    k = jax.random.fold_in(key, jax.random.randint(key, (), 0, 1000))
    return jax.random.normal(k, (3,)), jax.random.normal(jax.random.fold_in(k, 2), (2,))


def _split_and_vmap(key):  # non-scalar keys: a batch of keys folded and drawn from under vmap
    keys = jax.random.split(key, 4)
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 5), (3,)))(keys), jax.random.normal(keys[1])


def _widths(key):
    return (jax.random.bits(key, (7,), jnp.uint8), jax.random.bits(jax.random.fold_in(key, 1), (5,), jnp.uint16),
            jax.random.bernoulli(jax.random.fold_in(key, 2), 0.3, (9,)), jax.random.permutation(key, 11))


def _in_a_loop(key):  # draws inside a scan are drawn there; the keys they use are gathered outside
    def body(carry, i):
        return carry + jax.random.normal(jax.random.fold_in(key, i), (2,)), None
    return jax.lax.scan(body, jnp.zeros(2), jnp.arange(3))[0], jax.random.normal(jax.random.fold_in(key, 9), (4,))


def _raw_keys(key):  # old-style uint32 keys, made from a typed one
    raw = jax.random.key_data(jax.random.fold_in(key, 3))
    return jax.random.normal(raw, (3,)), jax.random.split(raw)


def _rbg(key):  # another generator: drawn as it is
    k = jax.random.key(jax.random.bits(key, (), jnp.uint32), impl="rbg")
    return jax.random.normal(jax.random.fold_in(k, 1), (4,)), jax.random.normal(key, (2,))


def _not_partitionable(key):  # the older Threefry scheme, chosen inside the function
    with jax.threefry_partitionable(False):
        return jax.random.normal(jax.random.fold_in(key, 1), (5,)), jax.jit(lambda k: jax.random.uniform(k, (2,)))(key)


def _many_sizes(key):  # segments of every size, empty ones too, in a count that is not a power of two
    return [jax.random.uniform(jax.random.fold_in(key, n), (n,)) for n in (0, 1, 2, 0, 3, 5, 8, 1, 13, 0, 21)]


def _nothing_random(key):
    return jnp.arange(3.0) * 2, key


CASES = {"flax conv net (BatchNorm, Dropout)": _flax, "key from a draw": _tainted, "split, vmap": _split_and_vmap,
         "8, 16 bits, bernoulli, permutation": _widths, "draws in a scan": _in_a_loop, "raw uint32 keys": _raw_keys,
         "rbg keys": _rbg, "not partitionable": _not_partitionable, "sizes 0 to 21": _many_sizes,
         "no draws": _nothing_random}


def _run(function, options, seed=3):
    key = jax.random.fold_in(jax.random.key(seed), 0)
    out = jax.jit(function, compiler_options=options)(key)
    return jax.tree.leaves(jax.tree.map(lambda a: jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
                                        else a, out))


@pytest.mark.parametrize(("name", "options"), [(name, "init's options") for name in CASES]
                         + [("flax conv net (BatchNorm, Dropout)", "XLA's defaults")])
def test_batched_draws_give_the_same_bits(name, options):
    options = _init_compiler_options(jax.devices(), 0) if options == "init's options" else None
    alone, together = _run(CASES[name], options), _run(batched_draws(CASES[name]), options)
    assert len(alone) == len(together)
    for a, b in zip(alone, together, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", CASES)
def test_a_large_states_init_options_draw_the_bits_of_xlas_defaults(name):
    """The older fusion emitters (a large state's init, compiled faster) give the same weights."""
    large = _init_compiler_options(jax.devices(), LARGE_INIT_BYTES * len(jax.devices()))
    assert large == {xla_options.EMITTERS_OPTION: False}
    by_default, older = _run(batched_draws(CASES[name]), None), _run(batched_draws(CASES[name]), large)
    for a, b in zip(by_default, older, strict=True):
        np.testing.assert_array_equal(a, b)


def _primitives(function):
    jaxpr = jax.make_jaxpr(function)(jax.random.key(0))
    counts = collections.Counter()

    def walk(j):
        for eqn in j.eqns:
            counts[eqn.primitive.name] += 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return counts


def test_a_models_keys_and_draws_take_one_hash_per_depth_and_one_for_the_draws():
    alone, together = _primitives(_flax), _primitives(batched_draws(_flax))
    assert alone["random_bits"] == 4 and alone["random_fold_in"] == 8  # 3 kernels and a bias; a key per parameter
    assert together["random_bits"] == together["random_fold_in"] == 0
    # flax folds each parameter's name into the init key (one depth), then the draws: 2 hashes
    assert together["threefry2x32"] == 2


def test_draws_hashed_in_several_groups_give_the_same_bits(monkeypatch):
    from epsweep.engine import draws
    monkeypatch.setattr(draws, "GROUP_ELEMENTS", 40)  # the net's kernels hold 36, 800 and 24 elements
    options = _init_compiler_options(jax.devices(), 0)
    for a, b in zip(_run(_flax, options), _run(batched_draws(_flax), options), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _primitives(batched_draws(_flax))["threefry2x32"] == 4  # the keys, then 3 groups of draws


def test_a_function_with_side_effects_runs_once_as_it_is(capfd):
    traced = []

    def noisy(key):
        traced.append(1)
        jax.debug.print("drawing")
        return jax.random.normal(key, (3,))

    key = jax.random.key(1)
    np.testing.assert_array_equal(jax.jit(batched_draws(noisy))(key), jax.random.normal(key, (3,)))
    jax.effects_barrier()
    assert capfd.readouterr().out.count("drawing") == 1 and len(traced) == 1  # run once, traced once


def test_a_custom_derivative_rule_around_a_draw_is_kept():
    @jax.custom_vjp
    def clipped(x):
        return x * 2

    clipped.defvjp(lambda x: (x * 2, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))

    def scaled_draw(key, scale):
        return clipped(scale * jax.random.normal(jax.random.fold_in(key, 1), (3,))).sum()

    key = jax.random.key(4)
    alone, together = (jax.jit(jax.grad(f, argnums=1))(key, 1.0) for f in (scaled_draw, batched_draws(scaled_draw)))
    np.testing.assert_array_equal(alone, together)
