"""Flax models: the small built-in networks here, Inception-v3 in :mod:`epsweep.models.inception`.

Names are imported on first use: :mod:`epsweep.models.inception_sizes` imports no Flax."""

from __future__ import annotations

from epsweep.lazy import lazy_exports

_EXPORTS = {"CNN": "epsweep.models.small", "MLP": "epsweep.models.small", "ToyNet": "epsweep.models.small"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
