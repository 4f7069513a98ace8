"""JAX's LAPACK set-up, left out for programs that call no LAPACK kernel (epsweep.engine.lapack).

The set-up happens once per process, so each case runs in a fresh Python: a sweep there must
not import SciPy's BLAS (the set-up's cost), and a module that does call LAPACK, read back
from its serialized bytes as a warm start reads a program, must still run, lowered inside the
context or outside it."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from epsweep.engine import lapack, replicas

SHAPE = jax.ShapeDtypeStruct((3, 3), np.float32)

CHILD = r"""
import sys
import numpy as np
import epsweep
devices, where, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
epsweep.setup(cpu_devices=devices)
import jax
from jax import export
from epsweep.engine import compiled, lapack
task = epsweep.build_task("mlp", "digits", 0.2)
result = epsweep.sweep(task, epsweep.Grid(eps=(1e-8, 1.0)), epsweep.RunConfig(steps=2, batch_size=8))
kind = sorted({type(p).__name__ for p in compiled._programs[next(iter(compiled._programs))][:4]})
print("sweep", len(result.records), kind, "scipy.linalg" in sys.modules)
solve = export.deserialize(bytearray(open(path, "rb").read()))
a = np.array([[4, 1, 0], [1, 3, 1], [0, 1, 2]], np.float32)
if where == "inside":
    with lapack.lowering(solve):
        inverse = jax.jit(solve.call).lower(a).compile()(a)
else:
    inverse = jax.jit(solve.call)(a)
print("solve", float(np.abs(np.asarray(inverse) @ a - np.eye(3)).max()), "scipy.linalg" in sys.modules)
"""


def test_targets_are_found_in_serialized_modules():
    plain = export.export(jax.jit(lambda a: jnp.tanh(a @ a)))(SHAPE)
    solve = export.export(jax.jit(jnp.linalg.inv))(SHAPE)
    tridiagonal = export.export(jax.jit(lambda d: jax.lax.linalg.tridiagonal_solve(d[0], d[1], d[2], d.T)))(SHAPE)
    assert not lapack.calls_lapack(plain.mlir_module_serialized)
    assert lapack.calls_lapack(solve.mlir_module_serialized)
    assert lapack.calls_lapack(tridiagonal.mlir_module_serialized)  # a target not named lapack_*
    assert lapack._targets() and all(name.endswith(b"_ffi") for name in lapack._targets())


@pytest.mark.skipif(not replicas.tested_jax(), reason="another JAX sets LAPACK up as it always does")
@pytest.mark.parametrize(("devices", "where", "kind"), [(2, "inside", "Replicated"), (1, "outside", "CompiledAhead")])
def test_a_sweep_leaves_lapack_out_and_a_lapack_module_still_runs(tmp_path, devices, where, kind):
    path = tmp_path / "solve.bin"
    path.write_bytes(export.export(jax.jit(jnp.linalg.inv))(SHAPE).serialize())
    run = subprocess.run([sys.executable, "-c", CHILD, str(devices), where, str(path)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines["sweep"] == f"2 ['{kind}'] False"  # the sweep's programs never imported SciPy's BLAS
    error, imported = lines["solve"].split()
    assert float(error) < 1e-5 and imported == "True"  # LAPACK was set up, and the inverse is right
