"""Docs that cannot drift: the generated options reference matches the commands' --help, and
every public name of the library is documented with an example that runs."""

import doctest
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

import epsweep

ROOT = Path(__file__).resolve().parents[1]


def test_options_reference_matches_the_commands():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    current = reference.USAGE.read_text()
    assert "<!-- generated: epsweep grid --help -->" in current
    assert reference.render(current) == current, "docs/usage.md is out of date: run python scripts/cli_reference.py"


CALLABLES = sorted(name for name in epsweep.__all__ if callable(getattr(epsweep, name)))


@pytest.mark.parametrize("name", CALLABLES)
def test_public_names_have_a_docstring_with_an_example_that_runs(name):
    obj = getattr(epsweep, name)
    doc = inspect.getdoc(obj) or ""
    assert "Example" in doc and ">>>" in doc, f"{name}: no example in its docstring"
    if inspect.isfunction(obj):
        assert "Args:" in doc and "Returns:" in doc, f"{name}: its docstring needs Args: and Returns:"
        for parameter in inspect.signature(obj).parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD:
                continue
            assert f"{parameter.name}:" in doc, f"{name}: Args: does not describe {parameter.name}"
    globs = dict(vars(sys.modules[obj.__module__]))
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs=globs)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0, f"{name}: its example failed (see the output above)"
