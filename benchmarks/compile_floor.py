"""How long XLA takes to compile the least a sweep of the MLP could be: the floor under any
cold start, for the Keras target of issue 13 (docs/performance.md, twenty-second stop).

The program is the default task's training loop as a JAX user would write it: Dense
64->128 ReLU, Dense 10 on the digits' 64 inputs, ``optax.rmsprop`` (lr and eps traced),
random minibatches of 32, a ``lax.scan`` of 500 steps, ``jax.vmap``-ped over 64
settings (epsweep's call width on a 2-core CPU) and jitted: no loss curve, no divergence, no
eps diagnostics, no evaluation. It prints the seconds spent tracing and compiling it.

    python benchmarks/compile_floor.py   # run it in a fresh process each time: nothing is cached
"""

import time

import jax
import jax.numpy as jnp
import optax

SETTINGS, BATCH, STEPS, EXAMPLES = 64, 32, 500, 1438


def init(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (64, 128)) * 0.1, "b1": jnp.zeros(128),
            "w2": jax.random.normal(k2, (128, 10)) * 0.1, "b2": jnp.zeros(10)}


def loss(params, x, y):
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    return optax.softmax_cross_entropy_with_integer_labels(hidden @ params["w2"] + params["b2"], y).mean()


def train(eps, lr, x, y, key):
    """One setting: 500 RMSProp steps from the seed's weights; its last training loss."""
    params = init(key)
    optimizer = optax.rmsprop(lr, decay=0.9, eps=eps)

    def step(carry, t):
        params, state = carry
        batch = jax.random.randint(jax.random.fold_in(key, t), (BATCH,), 0, x.shape[0])
        value, grads = jax.value_and_grad(loss)(params, x[batch], y[batch])
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), value

    (_, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(STEPS))
    return losses[-1]


def main() -> None:
    program = jax.jit(jax.vmap(train, in_axes=(0, 0, None, None, None)))
    args = (jnp.ones(SETTINGS), jnp.ones(SETTINGS), jnp.zeros((EXAMPLES, 64)), jnp.zeros(EXAMPLES, jnp.int32),
            jax.random.key(0))
    start = time.perf_counter()
    lowered = program.lower(*args)
    traced = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    print(f"traced in {traced - start:.2f} s, compiled in {done - traced:.2f} s")


if __name__ == "__main__":
    main()
