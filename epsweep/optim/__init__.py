"""Optimizer update rules (RMSProp per framework, and baselines) and the eps diagnostics."""

from epsweep.optim.diagnostics import (
    DenominatorTerms,
    denominator_terms,
    effective_lr_median,
    eps_diagnostics,
    eps_dominated_share,
    moving_parameters,
)
from epsweep.optim.rules import (
    ADAGRAD_INITIAL_ACCUMULATOR,
    ADAM_B1,
    BASELINES,
    CONVENTIONS,
    FRAMEWORK_DEFAULTS,
    OPTIMIZERS,
    check_convention,
    check_optimizer,
    make_optimizer,
    rmsprop,
)

__all__ = [
    "ADAGRAD_INITIAL_ACCUMULATOR", "ADAM_B1", "BASELINES", "CONVENTIONS", "FRAMEWORK_DEFAULTS", "OPTIMIZERS",
    "DenominatorTerms", "check_convention", "check_optimizer", "denominator_terms", "effective_lr_median",
    "eps_diagnostics", "eps_dominated_share", "make_optimizer", "moving_parameters", "rmsprop",
]
