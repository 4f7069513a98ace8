"""The layering of docs/architecture.md, and the traps it rules out: imports that go upward,
JAX started by building a task, a module shadowed by a function, a stale compiled program."""

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "epsweep"

# layer -> what it may import (besides itself), as in docs/architecture.md
ALLOWED = {
    "errors": set(),
    "collector": set(),
    "lazy": set(),
    "numbers": set(),
    "vocabulary": {"errors"},
    "grid": {"vocabulary", "numbers", "errors"},
    "config": {"vocabulary", "numbers", "errors"},
    "presets": {"vocabulary", "numbers", "errors"},
    "optim": {"vocabulary", "errors"},
    "data": {"errors"},
    "models": {"lazy", "errors"},
    "tasks": {"data", "models", "optim", "vocabulary", "lazy", "collector", "errors"},
    "results": {"vocabulary", "numbers", "errors"},
    "engine": {"tasks", "data", "optim", "config", "vocabulary", "numbers", "collector", "errors"},
    "provenance": {"results", "vocabulary", "numbers", "errors"},
    "runner": {"outcome", "provenance", "engine", "results", "tasks", "data", "models", "optim", "grid", "config",
               "presets", "vocabulary", "numbers", "collector", "errors"},
    "outcome": {"results", "vocabulary", "numbers", "errors"},
    "views": {"results", "vocabulary", "numbers", "errors"},
}
UI_LIBRARIES = {"rich": {"views", "cli"}, "matplotlib": {"views"}, "typer": {"cli"}, "click": {"cli"}}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """Every module an epsweep source file imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "epsweep":
            found.update(f"epsweep.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_EXPORTS"]
              and isinstance(node.value, ast.Dict)):  # a lazy package's names: imported on first use
            found.update(value.value for value in node.value.values if isinstance(value, ast.Constant))
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path


def test_lower_layers_import_only_what_lies_below():
    upward = []
    for name, path in modules():
        layer = layer_of(name)
        if layer in ("cli", "__init__", "__main__"):
            continue
        for target in imports_of(path):
            root = target.split(".")[0]
            if root == "epsweep":
                other = layer_of(target)
                if other != layer and other not in ALLOWED[layer]:
                    upward.append(f"{name} imports {target}")
            elif root in UI_LIBRARIES and layer not in UI_LIBRARIES[root]:
                upward.append(f"{name} imports {target}")
    assert not upward, upward


def docstring_positions(tree) -> set[tuple[int, int]]:
    """Where the docstrings of a module, its classes and functions start."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {(n.body[0].value.lineno, n.body[0].value.col_offset) for n in ast.walk(tree)
            if isinstance(n, kinds) and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


@pytest.mark.parametrize("package", ["epsweep", "epsweep.tasks", "epsweep.models"])
def test_lazy_packages_export_what_they_list_and_their_submodules(package):
    """Each name of ``__all__`` is the object of the module ``_EXPORTS`` names, a submodule is
    an attribute once asked for (as when the package imported it eagerly), and anything else
    is an AttributeError."""
    import importlib

    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(module._EXPORTS)
    for name, source in module._EXPORTS.items():
        assert getattr(module, name) is getattr(importlib.import_module(source), name)
    submodule = {"epsweep": "data", "epsweep.tasks": "builtin", "epsweep.models": "small"}[package]
    assert getattr(module, submodule) is importlib.import_module(f"{package}.{submodule}")
    assert not hasattr(module, "no_such_name") and not hasattr(module, "__wrapped__")


def test_no_flag_spelling_outside_the_cli():
    """Library errors name parameters; only epsweep/cli knows flags (``--steps``)."""
    offenders = []
    for name, path in modules():
        if layer_of(name) == "cli":
            continue
        tree = ast.parse(path.read_text())
        docstrings = docstring_positions(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and (node.lineno, node.col_offset) not in docstrings
                    and any(word.startswith("--") and word[2:3].isalpha() for word in node.value.split())):
                offenders.append(f"{name}: {node.value!r}")
    assert not offenders, offenders


def test_no_module_over_about_400_lines():
    long = [f"{name} ({n})" for name, path in modules() if (n := len(path.read_text().splitlines())) > 420]
    assert not long, long


def test_no_function_body_over_about_80_lines():
    """Bodies only: a command's signature of options and a docstring do not count."""
    long = []
    for name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                if body and (n := node.end_lineno - body[0].lineno + 1) > 80:
                    long.append(f"{name}.{node.name} ({n})")
    assert not long, long


def test_public_names_never_shadow_modules():
    """``import epsweep.X`` gives a module, ``epsweep.X`` a function, never both for one X."""
    import epsweep

    for name in epsweep.__all__:
        assert importlib.util.find_spec(f"epsweep.{name}") is None, name
    assert callable(epsweep.sweep) and callable(epsweep.run) and callable(epsweep.setup)


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu",
                                            "EPSWEEP_COMPILE_CACHE": "off", "HOME": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_building_tasks_starts_no_jax_backend_so_setup_order_does_not_matter():
    """Tasks and datasets are built with NumPy only: a sweep afterwards still gets one CPU
    device per core (JAX fixes its device count when its backends start)."""
    out = run_python("""
        import numpy as np
        import epsweep
        from jax._src import xla_bridge
        from epsweep.data import Dataset
        from epsweep.engine.runtime import available_cores
        from epsweep.tasks.inception import InceptionOptions, inception_task
        tasks = [epsweep.build_task(name) for name in ("mlp", "cnn", "toy", "quadratic")]
        images = np.zeros((4, 75, 75, 3), np.uint8)
        tasks.append(inception_task(Dataset("x", images, np.arange(4) % 2, images[:2], np.arange(2), 2),
                                    InceptionOptions()))
        import flax.linen as nn
        from flax import nnx
        own = Dataset.from_arrays(np.random.rand(20, 3), np.arange(20) % 2)
        tasks += [epsweep.flax_task(nn.Dense(2), own), epsweep.flax_task(lambda rngs: nnx.Linear(3, 2, rngs=rngs), own)]
        assert not xla_bridge.backends_are_initialized()
        result = epsweep.sweep(tasks[3], epsweep.Grid(eps=(1e-8,)), epsweep.RunConfig(steps=2))
        print(len(result.meta["devices"]), available_cores())
    """)
    devices, cores = out.split()
    assert devices == cores


def test_importing_starts_nothing_heavy_and_listeners_come_with_setup():
    out = run_python("""
        import sys
        import epsweep
        from epsweep.cli import main
        assert "jax" not in sys.modules, "import epsweep imported jax"
        try:
            main(["--help"])
        except SystemExit:
            pass
        assert "jax" not in sys.modules, "epsweep --help imported jax"
        for argv in (["inception", "--dropout", "nan"], ["inception", "--image-size", "64"],
                     ["inception", "--dataset", "/no/such/dir"], ["inception", "--image-size", "100000"]):
            assert main(argv) == 2  # the options, then the images: checked before JAX
        assert "jax" not in sys.modules and "flax" not in sys.modules, "an inception argument error imported jax"
        from epsweep.engine import compiled
        listening = compiled._listening
        epsweep.setup()
        print(listening, compiled._listening)
    """)
    assert out == "False True"


def width_task(width: int, data):
    """A task built by hand, as a user would, with no identity: an MLP of ``width`` units."""
    import flax.linen as nn
    import optax

    from epsweep.tasks import Task

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(data.num_classes)(nn.relu(nn.Dense(width)(x.reshape(len(x), -1))))

    model = Net()

    def init(key):
        return model.init(key, np.zeros((1, *data.input_shape), np.float32))["params"], {}

    def loss(params, state, x, y, key):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": params}, x), y).mean(), state

    def evaluate(params, state, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y), (logits.argmax(-1) == y).astype(float)

    return Task("same-name", init, loss, evaluate, data)


@pytest.mark.parametrize("build", ["by hand", "classifier_task"])
def test_a_different_model_never_reuses_a_compiled_program(mlp_task, build):
    """Two tasks alike in name and data but not in model width train different programs."""
    from epsweep import engine
    from epsweep.config import RunConfig
    from epsweep.grid import Grid
    from epsweep.models.small import MLP
    from epsweep.runner import sweep
    from epsweep.tasks import classifier_task

    def make(width):
        if build == "by hand":
            return width_task(width, mlp_task.data)
        return classifier_task("same-name", MLP(mlp_task.data.num_classes, hidden=width), mlp_task.data)

    grid, config = Grid(eps=(1e-8,), lr=(1e-2,)), RunConfig(steps=5, batch_size=8)
    narrow, wide = make(4), make(256)
    one = jax.devices()[:1]
    assert engine.program_key(narrow, _spec(narrow), one) != engine.program_key(wide, _spec(wide), one)
    first = sweep(narrow, grid, config)
    second = sweep(wide, grid, config)
    assert second.meta["compilations"] + second.meta["compile_cache_loads"] > 0
    assert first.records[0]["final_loss"] != second.records[0]["final_loss"]
    again = sweep(make(4) if build == "classifier_task" else narrow, grid, config)
    assert again.meta["compilations"] == 0 and again.records[0]["final_loss"] == first.records[0]["final_loss"]


def test_a_cached_program_keeps_alive_the_functions_its_key_names(mlp_task):
    """A hand-built task's programs are keyed by the ids of its functions: while the programs
    are cached, those functions stay alive, so no other model's functions can take their ids
    (and with them a stale program) after the task is gone."""
    import gc
    import weakref

    from epsweep.config import RunConfig
    from epsweep.grid import Grid
    from epsweep.runner import sweep

    task = width_task(4, mlp_task.data)
    sweep(task, Grid(eps=(1e-8,), lr=(1e-2,)), RunConfig(steps=5, batch_size=8))
    refs = [weakref.ref(f) for f in (task.init, task.loss, task.evaluate)]
    del task
    gc.collect()
    assert all(ref() is not None for ref in refs)


def _spec(task):
    from epsweep.config import RunConfig
    from epsweep.runner import resolve_spec
    from epsweep.vocabulary import UpdateRule

    return resolve_spec(task, RunConfig(steps=5), UpdateRule("rmsprop", "optax"))


def test_the_program_cache_is_bounded_least_recently_used_first_out(quadratic_task, monkeypatch):
    """At most MAX_CACHED program sets (2 here, so that the test compiles only three); a set used
    again moves to the back of the queue, and the one used longest ago leaves first."""
    from epsweep.engine import compiled
    from epsweep.engine.spec import TrainSpec

    monkeypatch.setattr(compiled, "MAX_CACHED", 2)
    a, b, c = (TrainSpec(steps=steps, batch_size=4) for steps in (11, 12, 13))  # jitted, never called
    first_a = compiled.compiled_programs(quadratic_task, a)
    first_b = compiled.compiled_programs(quadratic_task, b)
    assert compiled.compiled_programs(quadratic_task, a) is first_a  # kept, and now the most recent
    compiled.compiled_programs(quadratic_task, c)
    assert compiled.cached_program_sets() == 2
    assert compiled.compiled_programs(quadratic_task, a) is first_a  # still there
    assert compiled.compiled_programs(quadratic_task, b) is not first_b  # b left when c came: built again
    assert compiled.cached_program_sets() == 2
