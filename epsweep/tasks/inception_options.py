"""The choices of the Inception-v3 task (:class:`InceptionOptions`) and the image sizes it
takes, checked when made. No JAX here: the command line checks them, and reads the images,
before it imports JAX, so that an argument error comes at once."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

from epsweep.errors import UserError, looked_up, param
from epsweep.models.inception_sizes import AUX_MIN_INPUT_SIZE, MIN_INPUT_SIZE

DTYPE_NAMES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class InceptionOptions:
    """Model choices for :func:`epsweep.tasks.inception.inception_task`."""

    head: str = "linear"
    aux_logits: bool = False
    dropout_rate: float = 0.5
    dtype: str = "float32"
    label_smoothing: float = 0.0
    weights: Path | None = None
    freeze_base: bool = False
    preset: str | None = None  # recorded in the results; the preset's values arrive as the others

    def __post_init__(self) -> None:
        if self.head not in ("linear", "mlp"):
            raise UserError(f"{param('head')}: unknown head {self.head!r}; choose linear or mlp")
        if self.dtype not in DTYPE_NAMES:
            raise UserError(f"{param('dtype')}: unknown dtype {self.dtype!r}; choose {' or '.join(DTYPE_NAMES)}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"{param('label_smoothing')}: {self.label_smoothing:g} must lie in [0, 1)")
        if not 0 <= self.dropout_rate < 1:
            raise UserError(f"{param('dropout')}: {self.dropout_rate:g} must lie in [0, 1)")
        if self.freeze_base and self.weights is None:
            raise UserError(f"{param('freeze_base')} needs {param('weights')} (a frozen random base learns nothing)")
        if self.weights is not None:
            status = looked_up(self.weights, f"{param('weights')}: {self.weights}")
            if status is not None and stat.S_ISDIR(status.st_mode):
                raise UserError(f"{param('weights')}: {self.weights} is a directory, not a .safetensors file")
            if status is None or not stat.S_ISREG(status.st_mode):
                raise UserError(f"{param('weights')}: {self.weights}: no such file")


def check_image_size(size: int, options: InceptionOptions) -> None:
    """Refuse an image size the model cannot take (before any image is decoded)."""
    if size < MIN_INPUT_SIZE:
        raise UserError(f"{param('image_size')}: Inception-v3 needs at least {MIN_INPUT_SIZE}; got {size}")
    if options.aux_logits and size < AUX_MIN_INPUT_SIZE:
        raise UserError(f"{param('aux')}: the auxiliary classifier needs {param('image_size')} >= "
                        f"{AUX_MIN_INPUT_SIZE}; got {size}")
