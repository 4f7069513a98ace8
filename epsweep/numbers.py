"""How numbers are shown, everywhere: tables, summary lines, plot ticks and error messages.

One rule: 4 significant digits; plain decimals from 0.001 up to 100000, scientific notation
(``7.197e-8``, exponent without padding) outside that; and values shown together (a table
column, the two ends of a range) share one notation, scientific for all when any one needs it.
Settings (eps, lr, ...) drop trailing zeros (``0.001``); measurements keep them (``0.9500``),
so a column's digits line up. A standard deviation shows 2 significant digits; a share (0 to 1,
such as eps-dom) 3 decimals.

:func:`matches` is the other direction: a number copied from any of these places (``0.2683``
for 0.268347...) selects the value it was shown for, within half a unit of its last digit.
Nothing here imports from epsweep.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

DIGITS = 4
"""Significant digits of every value shown."""

STD_DIGITS = 2
"""Significant digits of a standard deviation."""

SHARE_DECIMALS = 3
"""Decimals of a share from 0 to 1 (eps-dom)."""

PLAIN_RANGE = (1e-3, 1e5)
"""Magnitudes shown as plain decimals; smaller or larger ones in scientific notation."""

_NUMBER = re.compile(r"^[+-]?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$")


def needs_scientific(value: float, digits: int = DIGITS) -> bool:
    """Whether ``value`` alone would be shown in scientific notation: whether it lies outside
    the plain range once rounded to ``digits`` significant digits (99999.6 shows as 1.000e5).

    Example:
        >>> needs_scientific(1e-8), needs_scientific(0.001), needs_scientific(0.0), needs_scientific(99999.6)
        (True, False, False, True)
    """
    if not math.isfinite(value) or value == 0:
        return False
    return not PLAIN_RANGE[0] <= abs(float(f"{value:.{digits - 1}e}")) < PLAIN_RANGE[1]


def show(value: float | None, *, digits: int = DIGITS, zeros: bool = False, scientific: bool | None = None) -> str:
    """``value`` with ``digits`` significant digits, by the rule of this module.

    Args:
        value: a number; ``None`` shows as ``—``.
        digits: significant digits.
        zeros: keep trailing zeros (measurements) instead of dropping them (settings).
        scientific: force one notation (for a column); ``None`` picks by magnitude.

    Returns:
        The text, e.g. ``7.197e-8``, ``0.2683``, ``1e-4``, ``74440``.

    Example:
        >>> show(7.19686e-08), show(0.268347), show(1e-4), show(0.95, zeros=True), show(660000.0)
        ('7.197e-8', '0.2683', '1e-4', '0.9500', '6.6e5')
        >>> show(99999.6), show(99999.6, zeros=True)  # rounded up into the next decade: its notation
        ('1e5', '1.000e5')
    """
    if value is None:
        return "—"
    value = float(value)
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value == 0:
        return "0" if not zeros else "0." + "0" * (digits - 1)
    if scientific is None:
        scientific = needs_scientific(value, digits)
    if scientific:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        if not zeros and "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    if decimals and abs(float(text)) >= 10 ** (digits - decimals):
        text = f"{value:.{decimals - 1}f}"  # 9.99996 rounded up to 10.000: one digit too many
    if not zeros and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def column(values: Iterable[float | None], *, digits: int = DIGITS, zeros: bool = False) -> list[str]:
    """Values shown together in one notation: scientific for all when any needs it.

    Example:
        >>> column([1e-8, 1e-4, 1.0])
        ['1e-8', '1e-4', '1e0']
        >>> column([0.001, 0.01, 0.1]), column([660000.0, 74440.1875], zeros=True)
        (['0.001', '0.01', '0.1'], ['6.600e5', '7.444e4'])
    """
    values = list(values)
    scientific = any(v is not None and needs_scientific(float(v)) for v in values)
    return [show(v, digits=digits, zeros=zeros, scientific=scientific) for v in values]


def notation(values: Iterable[float | None]) -> bool:
    """Whether a column of ``values`` is shown in scientific notation."""
    return any(v is not None and needs_scientific(float(v)) for v in values)


def show_std(std: float | None, scientific: bool | None = None) -> str:
    """``±0.011``: a standard deviation, 2 significant digits (in the notation of its mean's
    column, when given), empty when there is none.

    Example:
        >>> show_std(0.0003, scientific=False), show_std(0.0003), show_std(0.0)
        ('±0.00030', '±3.0e-4', '±0')
    """
    if std is None:
        return ""
    return "±0" if std == 0 else "±" + show(std, digits=STD_DIGITS, zeros=True, scientific=scientific)


def show_share(value: float | None) -> str:
    """A share from 0 to 1 with 3 decimals (``0.020``, ``1.000``).

    Example:
        >>> show_share(0.01971), show_share(3.9e-5), show_share(1.0)
        ('0.020', '0.000', '1.000')
    """
    return "—" if value is None else f"{value:.{SHARE_DECIMALS}f}"


def span(low: float, high: float) -> str:
    """``1e-8..1e0``: a range, its ends in one notation."""
    a, b = column([low, high])
    return f"{a}..{b}"


def listing(values: Sequence[float], limit: int = 8) -> str:
    """Up to ``limit`` values in one notation, comma-separated (``, ...`` when cut)."""
    shown = column(values[:limit])
    return ", ".join(shown) + (", ..." if len(values) > limit else "")


def resolution(text: str, digits: int = DIGITS, decimals: int | None = None) -> float | None:
    """Half a unit in the last digit ``text`` shows, counting at least ``digits`` significant
    digits (a table shows ``1e-8`` for 1.000e-8), or with ``decimals``, at least that many
    decimals (a share: ``1`` is 1.000); None when ``text`` is no plain number (``inf``,
    ``0x10``) or is zero.

    Example:
        >>> resolution("0.2683"), resolution("1e-8"), resolution("0.26834"), resolution("1", decimals=3)
        (5e-05, 5e-12, 5e-06, 0.0005)
    """
    match = _NUMBER.match(text.strip())
    if not match or not (match.group(1) or match.group(2)):
        return None
    whole, fraction, exponent = match.group(1) or "", match.group(2) or "", int(match.group(3) or 0)
    if not (whole + fraction).strip("0"):
        return None
    value = abs(float(text))
    leading = math.floor(math.log10(value))  # place of the first significant digit
    last = -len(fraction) + exponent  # place of the last digit written
    last = min(last, -decimals if decimals is not None else leading - (digits - 1))
    return float(f"5e{last - 1}")


def matches(text: str, value: float, *, share: bool = False) -> bool:
    """Whether a number typed as ``text`` (copied from a table, a summary, a message)
    selects ``value``: equal, or within half a unit of the last digit shown, of ``text`` and of
    ``value`` (0.9996 shows as ``0.9996``, not ``1``; ``share``: a share shown with 3
    decimals, where ``0.020`` stands for 0.0195 to 0.0205 and ``1`` for 0.9995 to 1).

    Example:
        >>> matches("0.2683", 0.26834712), matches("0.2683", 0.2684), matches("1", 0.9996), matches("1", 0.99996)
        (True, False, False, True)
    """
    want = float(text)
    if want == value:
        return True
    tolerance = resolution(text, decimals=SHARE_DECIMALS) if share else resolution(text)
    if tolerance is None or not math.isfinite(value):
        return False
    if not share and value != 0:  # below a power of ten a value shows one decimal more
        tolerance = min(tolerance, 0.5 * 10.0 ** (math.floor(math.log10(abs(value))) - (DIGITS - 1)))
    return abs(value - want) <= tolerance * (1 + 1e-9)
