"""The XLA options epsweep compiles with on CPU (epsweep/engine/xla_options.py): convolutions
stay out of YNNPACK, everything else compiles as XLA would by default, the options reach every
program of a sweep and the frozen-feature program, and an XLA that refuses them still trains."""

import dataclasses
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from epsweep.engine import compiled, exports, features, xla_options
from epsweep.engine.driver import train_runs
from epsweep.engine.spec import TrainSpec
from epsweep.tasks.task import Features

CPU = jax.devices("cpu")


def ynnpack_fusions(text: str) -> tuple[int, int]:
    """(YNNPACK fusions holding a convolution, all YNNPACK fusions) in an optimised HLO module."""
    bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%?([\w.]+) \([^\n]*\{\n(.*?)\n\}", text, re.S | re.M)}
    called = re.findall(r"kind=kCustom, calls=%?([\w.]+)[^\n]*__ynn_fusion", text)
    return sum(" convolution(" in bodies.get(name, "") for name in called), len(called)


def optimised(function, *args, options=None) -> str:
    return jax.jit(function, compiler_options=options or None).lower(*args).compile().as_text()


def conv(x, w):  # the first convolution of Inception-v3 at 75 x 75: XLA gives it to YNNPACK by default
    return jax.lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def dense(a, b):
    return jnp.tanh(a @ b).sum(0)


@pytest.fixture
def options_not_refused(monkeypatch):
    """A process in which XLA has not refused the options yet (and is left so afterwards)."""
    monkeypatch.setattr(xla_options, "_refused", threading.Event())
    monkeypatch.setattr(xla_options, "_emitters_refused", threading.Event())
    monkeypatch.delenv("XLA_FLAGS", raising=False)


def test_convolutions_leave_ynnpack_and_a_model_without_them_compiles_as_by_default(options_not_refused):
    options = xla_options.cpu_options(CPU)
    assert options
    x, w = jnp.ones((8, 75, 75, 3)), jnp.ones((3, 3, 3, 32))
    if ynnpack_fusions(optimised(conv, x, w)) != (1, 1):
        pytest.skip("this XLA does not give the convolution to YNNPACK by default: nothing to take away")
    assert ynnpack_fusions(optimised(conv, x, w, options=options)) == (0, 0)
    a, b = jnp.ones((16, 32)), jnp.ones((32, 8))
    assert ynnpack_fusions(optimised(dense, a, b))[1] >= 1  # XLA's own YNNPACK dot: kept
    assert optimised(dense, a, b, options=options) == optimised(dense, a, b)


def test_the_options_are_off_the_cpu_and_when_xla_flags_name_them(monkeypatch, options_not_refused):
    class Accelerator:
        platform = "gpu"

    assert xla_options.cpu_options([Accelerator()]) == {} == xla_options.older_emitters([Accelerator()])
    assert xla_options.older_emitters(CPU) == {xla_options.EMITTERS_OPTION: False}
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_FUSION_OPTION}=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
    assert xla_options.cpu_options(CPU) == {}
    assert xla_options.older_emitters(CPU) == {xla_options.EMITTERS_OPTION: False}  # each option on its own
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.EMITTERS_OPTION}=true")
    assert xla_options.older_emitters(CPU) == {}


def test_the_older_emitters_go_to_a_large_states_init_and_a_small_states_evaluate_and_finish(
        mlp_task, monkeypatch, options_not_refused):
    """The MLP's init (a small state, at low optimisation, where the older emitters would move
    its weights by a float step), train and measure keep XLA's emitters; its evaluate and
    finish (small kernels) take the older ones. A large state's init takes them, its evaluate
    and finish (large kernels) keep XLA's."""
    programs = exports.load_or_export(mlp_task, TrainSpec(steps=3, batch_size=5, curve_points=3), CPU[:1], 1)[0]
    older = {**xla_options.cpu_options(CPU), xla_options.EMITTERS_OPTION: False}

    def with_older_emitters() -> set[str]:
        options = {name: compiled._compile_options(name, program, CPU[:1], False) for name, program in programs.items()}
        assert all(xla_options.EMITTERS_OPTION not in fallback for _, fallback, _ in options.values())
        assert all(o in (older, {**xla_options.cpu_options(CPU), **(compiled._init_compiler_options(CPU[:1], 0) or {})},
                         xla_options.cpu_options(CPU)) for o, _, _ in options.values())
        return {name for name, (o, _, _) in options.items() if xla_options.EMITTERS_OPTION in o}

    assert with_older_emitters() == {"evaluate", "finish"} and {"init", "train"} <= set(programs)
    monkeypatch.setattr(compiled, "LARGE_INIT_BYTES", 1)  # every state is large
    assert with_older_emitters() == {"init"}


def test_evaluate_and_finish_give_the_same_numbers_with_the_older_emitters(mlp_task, monkeypatch, options_not_refused):
    """A small state's evaluate and finish compiled with XLA's older emitters and with its own:
    the same bits in every output (every validation batch, padded or not, and the median of
    the effective step sizes)."""
    h = {"eps": np.array([1e-8, 1e-3, 1.0]), "lr": np.full(3, 1e-2), "decay": np.array([0.9, 0.99, 0.0]),
         "momentum": np.zeros(3)}
    spec = TrainSpec(steps=5, batch_size=6, curve_points=5, eval_batch_size=100)  # programs of its own
    runs, refusals = {}, xla_options.refusals()
    for emitters in ("older", "XLA's"):
        monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())
        if emitters == "XLA's":
            monkeypatch.setattr(xla_options, "older_emitters", lambda devices: {})
        runs[emitters] = train_runs(mlp_task, spec, h, np.array([0, 1]))
    assert xla_options.refusals() == refusals  # compiled with the older emitters, not without them
    for name in runs["older"]._fields:
        np.testing.assert_array_equal(getattr(runs["older"], name), getattr(runs["XLA's"], name), err_msg=name)


def test_every_program_of_a_sweep_compiles_with_the_options(mlp_task, monkeypatch, options_not_refused):
    """YNNPACK off altogether through the options: the MLP's programs, which XLA's defaults give
    a YNNPACK dot, then hold none (a training spec of its own, so that nothing comes from a cache)."""
    monkeypatch.setattr(xla_options, "YNN_FUSION_TYPES", "")
    monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())
    programs = compiled.compiled_programs(mlp_task, TrainSpec(steps=3, batch_size=5, curve_points=3), CPU[:1])
    for name in ("init", "train", "evaluate", "finish"):
        getattr(programs, name).memory_stats()  # waits for the compilation
        assert ynnpack_fusions(getattr(programs, name)._compiled.as_text()) == (0, 0), name


@pytest.mark.parametrize(("option", "value"), [
    (xla_options.YNN_FUSION_OPTION, "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"),  # a value this XLA does not know
    ("xla_cpu_no_such_option", xla_options.YNN_FUSION_TYPES),  # an option it does not know
])
def test_an_xla_that_refuses_the_options_trains_with_its_defaults(mlp_task, monkeypatch, options_not_refused, option,
                                                                  value):
    """Bit for bit as with XLA's defaults, and each program counted as one compilation."""
    h = {"eps": np.array([1e-8, 1.0]), "lr": np.full(2, 1e-2), "decay": np.full(2, 0.9), "momentum": np.zeros(2)}
    # programs of their own (evaluate's depend on the validation batch alone)
    spec = TrainSpec(steps=4, batch_size=6 + len(option) % 5, curve_points=2, eval_batch_size=300 + len(option))
    monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())
    before = compiled.compile_count()
    train_runs(mlp_task, dataclasses.replace(spec, steps=5), h, np.array([0]))
    compilations = compiled.compile_count() - before  # of a sweep whose options XLA takes
    monkeypatch.setattr(xla_options, "YNN_FUSION_OPTION", option)
    monkeypatch.setattr(xla_options, "YNN_FUSION_TYPES", value)
    before = compiled.compile_count()
    refused = train_runs(mlp_task, spec, h, np.array([0]))
    assert compiled.compile_count() - before == compilations
    assert xla_options.cpu_options(CPU) == {}  # later programs go without the options at once
    monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())  # compile again, with XLA's defaults
    monkeypatch.setattr(xla_options, "cpu_options", lambda devices: {})
    plain = train_runs(mlp_task, spec, h, np.array([0]))
    for name in ("final_loss", "val_loss", "val_accuracy", "curve", "effective_lr"):
        np.testing.assert_array_equal(getattr(refused, name), getattr(plain, name), err_msg=name)


def test_stored_features_are_keyed_by_the_kernels_meant_whether_or_not_xla_refused_them(monkeypatch,
                                                                                      options_not_refused):
    class Accelerator:
        platform = "gpu"

    assert xla_options.in_effect([Accelerator()]) is None  # an accelerator's keys are as before
    assert xla_options.in_effect(CPU) == xla_options.YNN_FUSION_TYPES
    xla_options._refused.set()
    assert xla_options.in_effect(CPU) == xla_options.YNN_FUSION_TYPES
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=2 --{xla_options.YNN_FUSION_OPTION}=")
    assert xla_options.in_effect(CPU) == ""


def test_frozen_features_compile_with_the_options_and_without_them_when_refused(monkeypatch, options_not_refused):
    weights = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    extractor = Features(apply=lambda w, x: jnp.tanh(x @ w), constants=weights, batch_size=4)
    x = np.arange(30, dtype=np.float32).reshape(10, 3) / 30
    expected = np.tanh(x @ weights)
    monkeypatch.setattr(xla_options, "YNN_FUSION_TYPES", "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE")
    monkeypatch.setattr(features, "_programs", type(features._programs)())
    (got,) = features.extract(extractor, [x], CPU[:1])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert xla_options.cpu_options(CPU) == {}


def test_an_xla_that_refuses_the_older_emitters_compiles_init_with_its_own(mlp_task, monkeypatch, options_not_refused):
    """A large state's init whose emitters option XLA does not know: the same numbers as XLA's
    own emitters give, the refused compile taken back from the count (as for YNNPACK's option
    above), and the option left out from then on."""
    h = {"eps": np.array([1e-8, 1.0]), "lr": np.full(2, 1e-2), "decay": np.full(2, 0.9), "momentum": np.zeros(2)}
    spec = TrainSpec(steps=4, batch_size=7, curve_points=2, eval_batch_size=333)  # programs of its own
    monkeypatch.setattr(compiled, "LARGE_INIT_BYTES", 1)  # init compiled as a large state's
    monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())
    monkeypatch.setattr(xla_options, "EMITTERS_OPTION", "xla_cpu_no_such_emitters_option")
    refusals = xla_options.refusals()
    refused = train_runs(mlp_task, spec, h, np.array([0]))
    assert xla_options.refusals() == refusals + 1  # init's first compile, alone
    assert xla_options.older_emitters(CPU) == {} and xla_options.cpu_options(CPU)  # YNNPACK's option stays
    monkeypatch.setattr(compiled, "_programs", type(compiled._programs)())
    monkeypatch.setattr(xla_options, "older_emitters", lambda devices: {})
    plain = train_runs(mlp_task, spec, h, np.array([0]))
    for name in ("final_loss", "val_loss", "val_accuracy", "curve", "effective_lr"):
        np.testing.assert_array_equal(getattr(refused, name), getattr(plain, name), err_msg=name)
