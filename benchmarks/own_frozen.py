"""A model of your own behind a frozen base: ``flax_task(head, data, features=Features(...))``
against one model holding the same frozen base (its weights closed over, ``stop_gradient`` on
its output), the same grid, in one process (docs/own-model.md, docs/performance.md).

The base: ``--convs`` 3x3 convolutions of 64 channels (ReLU), 2x2 max-pooled and flattened;
the head: Dense(64), ReLU, Dense(10); the embedded 8x8 digits; 6 settings (eps 1e-8, 1e-3, 1 x
lr 1e-3, 1e-2) for ``--epochs``. Each sweep gets a new task object, so the features are computed
in every sweep (the feature store is off), as a first sweep over new data computes them. The
first sweep of each compiles (or reads the compilation cache); the others reuse its programs.

    python benchmarks/own_frozen.py                  # about 1 minute on a 2-core CPU
    python benchmarks/own_frozen.py --epochs 5 --convs 1
"""

import argparse
import os
import time

os.environ["EPSWEEP_FEATURE_CACHE"] = "off"  # before epsweep reads it: features computed in every sweep

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import epsweep  # noqa: E402
from epsweep.data import digits  # noqa: E402


class Base(nn.Module):
    convs: int

    @nn.compact
    def __call__(self, x):
        for _ in range(self.convs):
            x = nn.relu(nn.Conv(64, (3, 3))(x))
        return nn.max_pool(x, (2, 2), strides=(2, 2)).reshape(len(x), -1)


class Head(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, f):
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(64)(f)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--convs", type=int, default=3, help="convolutions in the frozen base")
    parser.add_argument("--repeat", type=int, default=2, help="sweeps after the first, for each way")
    args = parser.parse_args()
    epsweep.setup()  # before anything asks JAX for its devices: one CPU device per core, as a sweep sets up
    base = Base(args.convs)
    weights = base.init(jax.random.key(42), np.zeros((1, 8, 8, 1), np.float32))  # stands in for pretrained ones

    class Whole(nn.Module):  # the frozen base inside the model
        @nn.compact
        def __call__(self, x):
            return Head(name="head")(jax.lax.stop_gradient(base.apply(weights, x)))

    x, y = digits()
    data = epsweep.Dataset.from_arrays(x, y, val_split=0.2, seed=0, name="digits")
    ways = {
        "features=": lambda: epsweep.flax_task(Head, data, features=epsweep.Features(base.apply, weights)),
        "whole model": lambda: epsweep.flax_task(Whole, data),
    }
    grid, config = epsweep.Grid(eps=(1e-8, 1e-3, 1.0), lr=(1e-3, 1e-2)), epsweep.RunConfig(epochs=args.epochs)
    print(f"{args.convs} frozen convolution(s), {len(grid.settings())} settings x {args.epochs} epochs, "
          f"{jax.device_count()} device(s) ({jax.devices()[0].device_kind})")
    for name, make in ways.items():
        seconds = []
        for _ in range(1 + args.repeat):
            task = make()  # a new task object: its features are computed again
            start = time.perf_counter()
            result = epsweep.sweep(task, grid, config)
            seconds.append(time.perf_counter() - start)
        accuracy = ", ".join(f"{r['val_accuracy']:.3f}" for r in result.records)
        print(f"{name:12s} first {seconds[0]:6.2f} s, then {', '.join(f'{s:.2f}' for s in seconds[1:])} s; "
              f"{task.details['parameters']} parameters trained; val acc {accuracy}")


if __name__ == "__main__":
    main()
