"""Flax models: the small built-in networks here, Inception-v3 in :mod:`epsweep.models.inception`.

Names are imported on first use: :mod:`epsweep.models.inception_sizes` imports no Flax."""

from __future__ import annotations

from typing import TYPE_CHECKING

from epsweep.lazy import lazy_exports

if TYPE_CHECKING:  # what type checkers and editors see: the names as their modules define them
    from epsweep.models.small import CNN, MLP, ToyNet  # noqa: F401 - in __all__

_EXPORTS = {"CNN": "epsweep.models.small", "MLP": "epsweep.models.small", "ToyNet": "epsweep.models.small"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
