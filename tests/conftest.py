"""Shared fixtures. Compiled programs are cached per (task, settings) inside epsweep, so tests
that build the same task with the same settings share one compilation."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the persistent compilation cache of this test session only (never the user's), shared with
# the CLI subprocesses the tests start
_CACHE = tempfile.mkdtemp(prefix="epsweep-test-cache-")
os.environ["EPSWEEP_COMPILE_CACHE"] = _CACHE
os.environ["EPSWEEP_FEATURE_CACHE"] = "off"  # frozen-base features: never the user's cache; tests set their own
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # noqa: E402

import epsweep  # noqa: E402
from epsweep.engine.exports import exports_beside  # noqa: E402
from epsweep.tasks import build_task  # noqa: E402

atexit.register(shutil.rmtree, exports_beside(Path(_CACHE)), ignore_errors=True)  # the exported programs

# as a user's script would, before anything starts JAX: some tests call jax.jit themselves, and
# JAX started by them would keep one CPU device for the whole session, whichever test runs first
epsweep.setup()


@pytest.fixture(scope="session")
def mlp_task():
    return build_task("mlp", "digits", 0.2)


@pytest.fixture(scope="session")
def quadratic_task():
    return build_task("quadratic")
