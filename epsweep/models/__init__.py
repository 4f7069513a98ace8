"""Flax models: the small built-in networks here, Inception-v3 in :mod:`epsweep.models.inception`."""

from epsweep.models.small import CNN, MLP, ToyNet

__all__ = ["CNN", "MLP", "ToyNet"]
