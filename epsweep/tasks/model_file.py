"""Finding a model of the user's by name, as uvicorn and gunicorn find an app: ``FILE.py:NAME``
or ``package.module:NAME`` (NAME may be dotted: ``models:zoo.small``), and the task that trains
it on a dataset in any format the tool reads."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import stat
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from epsweep.data.images import load_any_dataset
from epsweep.errors import UserError, looked_up, param
from epsweep.tasks.own import flax_task
from epsweep.tasks.scoring import CLASSIFICATION_LOSSES
from epsweep.tasks.task import Features, Task

log = logging.getLogger(__name__)


def _last_line(error: BaseException, file: Path | None = None) -> str:
    """The last line Python prints for ``error`` (``ZeroDivisionError: division by zero``); for
    a syntax error, where it is first (``net.py:3: SyntaxError: invalid syntax``; ``file``, the
    model file as the user named it, stands for its resolved path)."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        where = error.filename
        if file is not None and Path(where) == file.resolve():
            where = str(file)
        return f"{where}:{error.lineno}: {type(error).__name__}: {error.msg}"
    lines = [line.strip() for line in traceback.format_exception_only(type(error), error) if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _import_file(path: Path, option: str) -> ModuleType:
    status = looked_up(path, f"{param(option)}: {path}")
    if status is None:
        raise UserError(f"{param(option)}: {path}: no such file")
    if not stat.S_ISREG(status.st_mode):
        raise UserError(f"{param(option)}: {path} is not a file")
    if path.suffix != ".py":  # refused before anything runs
        raise UserError(f"{param(option)}: {path} is not a Python file (.py)")
    resolved = path.resolve()
    name = "epsweep_model_" + hashlib.blake2b(str(resolved).encode(), digest_size=6).hexdigest()
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UserError(f"{param(option)}: {path} is not a Python file (.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (linen modules) look their module up while the file runs
    sys.path.insert(0, str(resolved.parent))  # its sibling modules import, as when run as a script
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        sys.modules.pop(name, None)
        raise UserError(f"{param(option)}: cannot import {path}: {_last_line(error, path)}") from None
    finally:
        sys.path.remove(str(resolved.parent))
    return module


def _import_module(name: str, option: str) -> ModuleType:
    here = str(Path.cwd())  # once: the module may change directory as it is imported
    added = "" not in sys.path and here not in sys.path
    if added:  # package.module from the current directory, as uvicorn does
        sys.path.insert(0, here)
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as error:
        raise UserError(f"{param(option)}: cannot import {name}: {_last_line(error)}") from None
    finally:
        if added:
            sys.path.remove(here)


def _in_this_directory(where: str, load: Callable[[], ModuleType], option: str) -> ModuleType:
    """``load()``, then the working directory put back if importing ``where`` changed it (an
    ``os.chdir`` at import time), with a warning: the paths the caller was given (the dataset,
    the output, ...) keep the meaning they had when the command was typed."""
    try:
        before = os.getcwd()
    except OSError:  # a working directory deleted under us: nothing to put back
        return load()
    try:
        module = load()
    finally:
        try:
            now = os.getcwd()
        except OSError:
            now = "a directory since deleted"
        if now != before:
            try:
                os.chdir(before)
            except OSError as e:
                raise UserError(f"{param(option)}: importing {where} changed the working directory to {now}, "
                                f"and it cannot be changed back to {before} ({e.strerror or e})") from None
    if now != before:
        log.warning("importing %s changed the working directory to %s; it is changed back to %s, so that relative "
                    "paths mean what they meant before", where, now, before)
    return module


def _kind(value: Any) -> str:
    """What ``value`` is, for a message: a class, a function, a module, or an object of its type."""
    if isinstance(value, type):
        return "a class"
    if isinstance(value, ModuleType):
        return "a module"
    return "a function" if inspect.isroutine(value) else f"an object of type {type(value).__name__}"


IMPORTED: list[str] = []  # the users' files and modules this process imported (their code ran here)


def load_model(model_spec: str, option: str = "model_spec",
               imported: dict[str, ModuleType] | None = None) -> tuple[Any, str]:
    """The object ``model_spec`` names, and NAME: ``FILE.py:NAME`` imports the file (its
    directory first on ``sys.path`` while it runs), ``package.module:NAME`` the module (from
    the current directory too). A working directory the import changes is changed back, with a
    warning.

    Args:
        model_spec: ``FILE.py:NAME`` or ``package.module:NAME``.
        option: the parameter the errors name (``model_spec``: ``--model``).
        imported: files (by resolved path) and modules (by name) this caller imported already:
            one named again, however its path is written, is not run again; one imported here is added.

    Returns:
        (the object, its NAME).
    """
    where, colon, name = model_spec.rpartition(":")
    if not colon or not where or not name or ".py:" in where:  # FILE.py:NAME:MORE names no file
        raise UserError(f"{param(option)}: {model_spec!r} must look like FILE.py:NAME or package.module:NAME")
    # a file that is there (good.txt, noext) is the file, not a module: good.txt would import good.py
    is_file = where.endswith(".py") or "/" in where or "\\" in where or os.path.isfile(where)
    known = where
    if is_file:  # ./net.py and net.py: one file, run once
        with contextlib.suppress(OSError, RuntimeError):  # a deleted working directory, a link loop
            known = str(Path(where).resolve())
    module = (imported or {}).get(known)
    if module is None:
        IMPORTED.append(where)
        module = _in_this_directory(where, lambda: _import_file(Path(where), option) if is_file
                                    else _import_module(where, option), option)
        if imported is not None:
            imported[known] = module
    found: Any = module
    for part in name.split("."):
        if not hasattr(found, part):
            raise UserError(f"{param(option)}: {where} has no {name!r}")
        found = getattr(found, part)
    return found, name


def model_task(model_spec: str, dataset: str = "digits", *, loss: str = "cross_entropy",
               metric: str | None = "accuracy", val_split: float = 0.2, data_seed: int = 0,
               image_size: int | None = None, warn: Callable[[str], None] | None = None,
               features_spec: str | None = None) -> Task:
    """:func:`~epsweep.tasks.own.flax_task` of the model ``model_spec`` names on ``dataset``
    (``digits``, ``synthetic``, .npz, MNIST IDX, or an ImageFolder tree resized to
    ``image_size``); regression targets are read when ``loss`` is not a classification loss, and
    float targets in [0, 1] (probabilities) as well as 0/1 labels for ``binary_cross_entropy``.

    Args:
        model_spec: ``FILE.py:NAME`` or ``package.module:NAME`` (see :func:`load_model`).
        dataset: the data, as the ``grid`` command reads it.
        loss: ``cross_entropy``, ``binary_cross_entropy`` or ``mse``.
        metric: ``accuracy`` or None.
        val_split: the fraction held out for validation.
        data_seed: the seed of the train/validation split.
        image_size: for an ImageFolder tree: the square its images are resized to.
        warn: called with a line for each unreadable image skipped.
        features_spec: ``FILE.py:NAME`` or ``package.module:NAME`` of an
            :class:`~epsweep.tasks.Features`, a frozen extractor in front of the model.

    Returns:
        The :class:`~epsweep.tasks.Task`.
    """
    imported: dict[str, ModuleType] = {}  # a file that holds both the model and the extractor runs once
    model, name = load_model(model_spec, imported=imported)
    features = None
    if features_spec is not None:
        features = load_model(features_spec, "features_spec", imported)[0]
        if not isinstance(features, Features):
            raise UserError(f"{param('features_spec')}: {features_spec} is {_kind(features)}, not an "
                            f"epsweep.Features(apply, constants)")
    data = load_any_dataset(dataset, val_split, data_seed, targets=loss not in CLASSIFICATION_LOSSES,
                            probabilities=loss == "binary_cross_entropy", image_size=image_size, warn=warn)
    return flax_task(model, data, loss=loss, metric=metric, name=name, features=features)
