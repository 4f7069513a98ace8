"""Named training recipes. A preset fills in values the user did not give; any explicit flag wins.

``szegedy2016`` — the Inception-v3 paper (Szegedy et al. 2016, arXiv:1512.00567, section 8):
RMSProp with decay 0.9, eps 1.0, momentum 0.9 and TF1 semantics (eps inside the root, second
moment starting at 1, lr inside the momentum buffer); learning rate 0.045 decayed by 0.94 every
2 epochs; gradient clipping at global norm 2.0; label smoothing 0.1. Run it with
``epsweep inception`` with preset ``szegedy2016``; compare with eps 1e-8.
"""

from __future__ import annotations

from epsweep.errors import UserError, param

PRESETS: dict[str, dict] = {
    "szegedy2016": {
        "eps": (1.0,),
        "decay": (0.9,),
        "momentum": (0.9,),
        "lr": (0.045,),
        "convention": ("tf1",),
        "lr_decay_rate": 0.94,
        "lr_decay_epochs": 2.0,
        "clip_norm": 2.0,
        "label_smoothing": 0.1,
    },
}


def apply_preset(name: str | None, given: dict) -> dict:
    """``given`` with every ``None`` value filled from preset ``name`` (when it has one)."""
    if name is None:
        return dict(given)
    if name not in PRESETS:
        raise UserError(f"{param('preset')}: unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return {key: preset.get(key) if value is None else value for key, value in given.items()}
