"""Grid value parsing and argv normalisation (property tests), and grid validation."""

import math

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epsweep.cli import normalize_argv
from epsweep.errors import UserError
from epsweep.grid import Grid, parse_values

finite = st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=20))
def test_numbers_round_trip_through_every_spelling(values):
    expected = list(dict.fromkeys(values))
    tokens = [repr(v) for v in values]
    assert parse_values(tokens, "eps") == expected
    assert parse_values([",".join(tokens)], "eps") == expected
    assert parse_values(["-"], "eps", read_stdin=lambda: "\n".join(tokens)) == expected


@given(positive, positive, st.integers(min_value=1, max_value=50))
def test_log_range_has_count_points_with_exact_ends(start, stop, count):
    values = parse_values([f"log:{start!r}:{stop!r}:{count}"], "eps")
    assert len(values) == len(set(np.geomspace(start, stop, count).tolist()))
    assert math.isclose(values[0], start, rel_tol=1e-12)
    if count > 1 and start != stop:
        assert math.isclose(values[-1], stop, rel_tol=1e-12)
        ratios = np.diff(np.log(values))
        assert np.allclose(ratios, ratios[0], rtol=1e-6, atol=1e-9)


@given(finite, finite, st.integers(min_value=2, max_value=50))
def test_linear_range_is_evenly_spaced(start, stop, count):
    values = parse_values([f"lin:{start!r}:{stop!r}:{count}"], "decay")
    assert values[0] == start
    if start != stop:
        assert math.isclose(values[-1], stop, rel_tol=1e-9, abs_tol=1e-9)


def test_documented_examples():
    assert parse_values(["log:1e-10:1:11"], "eps") == pytest.approx([10.0**k for k in range(-10, 1)])
    assert parse_values(["1e-8", "1"], "eps") == [1e-8, 1.0]
    assert parse_values(["1e-8,1e-4", "1"], "eps") == [1e-8, 1e-4, 1.0]
    assert parse_values(["lin:0.8:0.9:3"], "decay") == pytest.approx([0.8, 0.85, 0.9])


@pytest.mark.parametrize("token, message", [
    ("abc", "is not a number"), ("nan", "not a finite"), ("inf", "not a finite"), ("1,,2", "empty value"),
    ("log:0:1:3", "positive ends"), ("log:1:2", "log:START:STOP:COUNT"), ("lin:0:1:x", "not an integer"),
    ("lin:0:1:0", "between 1 and"), ("log:1e-3:1:10000000", "between 1 and"),
])
def test_malformed_values_are_user_errors(token, message):
    with pytest.raises(UserError, match=message):
        parse_values([token], "eps")


NINES = "9" * 40


@pytest.mark.parametrize("token, message", [
    ("x" * 10**6, f"eps: '{'x' * 40}'… (1,000,000 characters) is not a number"),
    (f"log:1:2:{NINES}{NINES}x", f"eps: count '{NINES}'… (81 characters) in 'log:1:2:{NINES[:32]}'… (89 characters) "
     "is not an integer"),
    ("1," * 5000 + ",", f"eps: empty value in '{'1,' * 20}'… (10,001 characters)"),
])
def test_a_long_value_is_shown_cut_to_a_readable_length(token, message):
    """A whole line of standard input may be one token: the message shows its start and length."""
    with pytest.raises(UserError) as raised:
        parse_values([token], "eps")
    assert str(raised.value) == message
    if "," not in token:  # standard input's commas part values
        with pytest.raises(UserError) as raised:
            parse_values(["-"], "eps", read_stdin=lambda: token + "\n")
        assert str(raised.value) == message


def test_stdin_without_input_is_an_error():
    with pytest.raises(UserError, match="no values"):
        parse_values(["-"], "eps", read_stdin=lambda: "  \n")


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=(-1.0,)), "eps >= 0"), (dict(decay=(1.0,)), "0 <= decay < 1"), (dict(decay=(-0.1,)), "decay"),
    (dict(lr=(0.0,)), "lr > 0"), (dict(momentum=(1.0,)), "momentum"), (dict(eps=()), "empty"),
])
def test_grid_rejects_out_of_range_values(kwargs, message):
    with pytest.raises(UserError, match=message):
        Grid(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(decay=(0.999999999999,)), r"decay: 0.999999999999 rounds to 1 in float32.*use at most 0.99999994"),
    (dict(momentum=(0.99999999,)), "momentum: 0.99999999 rounds to 1 in float32"),
    (dict(eps=(1e-50,)), r"eps: 1e-50 becomes 0 in float32.*use 0 or at least 1.1754944e-38"),
    (dict(eps=(1e-40,)), "eps: 1e-40 is a subnormal float32, which the engine flushes to 0"),
    (dict(lr=(1e300,)), r"lr: 1e\+300 overflows float32.*at most 3.4028235e\+38"),
    (dict(lr=(1e-45,)), "lr: 1e-45 is a subnormal float32, which the engine flushes to 0; use at least 1.17"),
    (dict(eps=(1e39,)), "eps: 1e\\+39 overflows float32"),
])
def test_grid_rejects_values_float32_would_change(kwargs, message):
    with pytest.raises(UserError, match=message):
        Grid(**kwargs)


def test_grid_keeps_values_float32_can_hold_as_given():
    grid = Grid(eps=(0.0, 1.2e-38, 1e30), decay=(0.0, 0.99999994), lr=(3e38,), momentum=(0.99999994,))
    assert grid.eps == (0.0, 1.2e-38, 1e30) and grid.decay == (0.0, 0.99999994) and grid.lr == (3e38,)


def test_grid_settings_are_the_full_product_with_eps_fastest():
    grid = Grid(eps=(1e-8, 1.0), lr=(1e-3, 1e-2), decay=(0.9, 0.99))
    settings = grid.settings()
    assert len(settings) == grid.size() == 8
    assert [s["eps"] for s in settings[:2]] == [1e-8, 1.0]
    assert {(s["eps"], s["lr"], s["decay"]) for s in settings} == {
        (e, lr, d) for e in (1e-8, 1.0) for lr in (1e-3, 1e-2) for d in (0.9, 0.99)
    }


value_tokens = st.lists(st.sampled_from(["1e-8", "1", "0.5", "-", "-1", "-.5", "log:1e-3:1:4", "2,3"]), min_size=1)
other_args = st.lists(st.sampled_from(["--steps", "10", "--quiet", "--task", "mlp", "-f", "csv"]), max_size=6)


@settings(max_examples=200)
@given(st.sampled_from(["--eps", "--decay", "--lr", "--momentum", "--convention"]), value_tokens, other_args)
def test_normalize_argv_spreads_values_over_repeated_flags(flag, values, rest):
    rest = [t for t in rest if t.startswith("-") and t != "-"]  # options only, no stray values
    argv = ["grid", flag, *values, *rest]
    out = normalize_argv(argv)
    expected = ["grid"] + [x for v in values for x in (flag, v)] + normalize_argv(rest)
    assert out == expected


def test_normalize_argv_leaves_single_values_and_equals_forms_alone():
    argv = ["grid", "--eps=1e-8", "--lr", "0.1", "--steps", "5", "--", "--eps", "1", "2"]
    assert normalize_argv(argv) == argv


@pytest.mark.parametrize("eps, kept", [
    ((1e-8, 1.0000000001e-8, 1.0), (1e-8, 1.0)),  # one float32: the first is kept
    ((*parse_values(["log:1e-10:1e-2:9"], "eps"), 1e-5), parse_values(["log:1e-10:1e-2:9"], "eps")),
    ((-0.0, 0.0, 1e-8), (0.0, 1e-8)),
])
def test_values_that_are_one_float32_are_one_setting(eps, kept):
    """The engine trains in float32: values it cannot tell apart are one setting (a range's
    9.999999999999999e-06 and a typed 1e-5 used to train twice, or be refused)."""
    grid = Grid(eps=eps)
    assert grid.eps == tuple(kept) and grid.size() == len(kept)
    assert str(grid.eps[0]) != "-0.0"


@pytest.mark.parametrize("given", [
    lambda: np.array([1e-8, 1e-3, 0.1], np.float32),
    lambda: [np.float32(1e-8), np.float32(1e-3), 0.1],
    lambda: np.array([1e-8, 1e-3, 0.1]).astype(ml_dtypes.bfloat16),
    lambda: np.array([1e-8, 1e-3, 0.1], np.float16)[1:],
    lambda: jnp.asarray([1e-8, 1e-3, 0.1]),
    lambda: [jnp.float32(1e-8), jnp.float32(1e-3), jnp.float32(0.1)],
    lambda: jnp.float32(1e-3),
    lambda: np.array(0.1, np.float32),
])
def test_narrow_float_values_are_the_decimals_they_were_typed_as(given):
    """A float32 (float16, bfloat16) value is the shortest decimal that is the same number in
    its type: np.float32(1e-8) is 1e-08, not 9.99999993922529e-09, so the setting has the name
    a plain 1e-8 has in records, resumes and pandas (a float32 grid resumed by a float one
    trained every setting again); whatever NumPy's print options."""
    values = given()
    typed = [v for v in (1e-8, 1e-3, 0.1) if np.any(np.isclose(np.asarray(values, np.float64), v, rtol=1e-2))]
    with np.printoptions(legacy="1.13", precision=3):
        assert Grid(eps=values).eps == tuple(typed)


def test_a_two_dimensional_float32_array_is_refused_as_any_other():
    with pytest.raises(UserError, match=r"not an array of shape \(2, 2\)"):
        Grid(eps=np.full((2, 2), 1e-3, np.float32))


def test_run_config_takes_numpy_and_jax_scalars_as_plain_floats():
    from epsweep.config import RunConfig

    config = RunConfig(clip_norm=np.float32(0.5), lr_decay_rate=jnp.float32(0.25), lr_decay_epochs=np.int64(2))
    values = (config.clip_norm, config.lr_decay_rate, config.lr_decay_epochs)
    assert values == (0.5, 0.25, 2.0) and all(type(v) is float for v in values)


def test_float32_limits_are_numpys():
    from epsweep.vocabulary import FLOAT32_MAX, FLOAT32_TINY

    assert (FLOAT32_TINY, FLOAT32_MAX) == (float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max))
