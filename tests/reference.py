"""Import helpers for the reference frameworks used only by tests.

timm imports torchvision, whose PyPI wheel is built against CUDA torch; with the CPU build
of torch its C ops cannot load and ``import torchvision`` fails on an unguarded fake-kernel
registrations for ``torchvision::nms`` and ``::qnms``. timm's optimizers and Inception-v3
are pure PyTorch, so when that happens we declare those two ops' schemas (never called) and
import again.
"""

from __future__ import annotations

import importlib
import importlib.util

_shim_library = None


def import_timm():
    """Return the ``timm`` module, or ``None`` when it is not installed."""
    global _shim_library
    if importlib.util.find_spec("timm") is None or importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.import_module("timm")
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    import sys

    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "timm"))]:
        del sys.modules[name]
    _shim_library = torch.library.Library("torchvision", "DEF")
    _shim_library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _shim_library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return importlib.import_module("timm")
