"""Pictures of a saved sweep: loss curves coloured by eps (one panel per lr/decay/...), and a
heatmap of the validation metric over eps x lr.

matplotlib is an optional extra (``pip install 'epsweep[plot]'``); only this module needs it,
through its object-oriented API (no pyplot, no global state, no display).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from epsweep.errors import UserError, param
from epsweep.results.analysis import AXES, OTHER_AXES, metric_of
from epsweep.results.files import check_writable, write_atomic
from epsweep.views.titles import run_title
from epsweep.vocabulary import HIGHER_IS_BETTER, label

MAX_PANELS = 24
MISSING_MESSAGE = "plotting needs matplotlib, an optional extra: pip install 'epsweep[plot]'"


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib import colors
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(MISSING_MESSAGE) from None
    return Figure, FigureCanvasAgg, colors, ScalarMappable


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _panels(records: Sequence[dict]) -> tuple[list[str], dict[tuple, list[dict]]]:
    varying = [a for a in OTHER_AXES if len({r.get(a) for r in records}) > 1]
    held = [a for a in ("lr", "decay") if a not in varying] + varying
    held = [a for a in OTHER_AXES if a in held]
    panels: dict[tuple, list[dict]] = {}
    for record in records:
        panels.setdefault(tuple(record.get(a) for a in held), []).append(record)
    return held, panels


def _use_log(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 50


def make_figure(meta: dict, records: Sequence[dict]):
    """The figure (a matplotlib ``Figure``): curve panels when the records carry loss curves,
    then the heatmap."""
    Figure, _, colors, ScalarMappable = _matplotlib()
    if not records:
        raise UserError("nothing to plot: no records")
    metric = metric_of(records)
    held, panels = _panels(records)
    with_curves = any(r.get("loss_curve") for r in records)
    if with_curves and len(panels) > MAX_PANELS:
        raise UserError(f"{len(panels)} panels (one per {'/'.join(held)}) is too many; "
                        f"narrow it with {param('where')}, e.g. lr=0.01")
    n_curve = len(panels) if with_curves else 0
    total = n_curve + 1
    ncols = min(3, total)
    nrows = math.ceil(total / ncols)
    fig = Figure(figsize=(4.3 * ncols + 0.8, 3.4 * nrows + 0.4), layout="constrained")
    # panel titles name what differs between panels; what all share goes under the title
    differs = [i for i, _ in enumerate(held) if len({k[i] for k in panels}) > 1] or list(range(len(held)))
    shared = [f"{held[i]} {_fmt(next(iter(panels))[i])}" for i in range(len(held)) if i not in differs]
    fig.suptitle(run_title(meta) + (f"\n{', '.join(shared)}" if shared and with_curves else ""))
    grid = fig.add_gridspec(nrows, ncols)
    eps_values = sorted({r["eps"] for r in records})
    cmap = colors.ListedColormap(_viridis(len(eps_values)))
    norm = colors.BoundaryNorm(np.arange(len(eps_values) + 1) - 0.5, len(eps_values))
    steps = meta.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        steps = None  # unknown (or malformed): the x axis counts curve points
    curve_axes = []
    every_point = [v for r in records for v in (r.get("loss_curve") or []) if v is not None]
    log_y = _use_log(np.array(every_point, float))  # one scale, shared by every panel
    for i, (key, group) in enumerate(sorted(panels.items(), key=lambda kv: [_order(v) for v in kv[0]])):
        if not with_curves:
            break
        ax = fig.add_subplot(grid[i // ncols, i % ncols], sharey=curve_axes[0] if curve_axes else None)
        curve_axes.append(ax)
        for record in sorted(group, key=lambda r: r["eps"]):
            curve = np.array([np.nan if v is None else v for v in (record.get("loss_curve") or [])], float)
            if curve.size == 0:
                continue
            x = (np.arange(curve.size) + 1) * (steps / curve.size if steps else 1)
            color = cmap(norm(eps_values.index(record["eps"])))
            ax.plot(x, curve, color=color, linewidth=1.3)
            finite = np.flatnonzero(np.isfinite(curve))
            if record.get("diverged") and finite.size:
                ax.plot(x[finite[-1]], curve[finite[-1]], "x", color=color, markersize=7)
        if log_y and len(curve_axes) == 1:
            ax.set_yscale("log")
        ax.set_title(", ".join(f"{held[j]} {_fmt(key[j])}" for j in differs), fontsize=10)
        ax.set_xlabel("step" if steps else "curve point")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    if curve_axes:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=curve_axes, shrink=0.9)
        ticks = list(range(len(eps_values)))
        if len(ticks) > 12:
            ticks = ticks[:: math.ceil(len(ticks) / 12)]
        bar.set_ticks(ticks, labels=[f"{eps_values[t]:g}" for t in ticks])
        bar.set_label("eps")
    heat_ax = fig.add_subplot(grid[n_curve // ncols, n_curve % ncols])
    _heatmap(fig, heat_ax, records, metric, colors)
    return fig


def _order(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _viridis(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](x) for x in (np.linspace(0, 0.85, n) if n > 1 else [0.4])]


def _heatmap(fig, ax, records: Sequence[dict], metric: str, colors) -> None:
    """metric over eps (x) x lr (y): the best value over any other axis; grey where every
    setting diverged."""
    eps_values = sorted({r["eps"] for r in records})
    lr_values = sorted({r["lr"] for r in records})
    higher = metric in HIGHER_IS_BETTER
    grid = np.full((len(lr_values), len(eps_values)), np.nan)
    for record in records:
        value = record.get(metric)
        if record.get("diverged") or value is None:
            continue
        i, j = lr_values.index(record["lr"]), eps_values.index(record["eps"])
        old = grid[i, j]
        if math.isnan(old) or (value > old if higher else value < old):
            grid[i, j] = value
    others = [a for a in AXES if a not in ("eps", "lr") and len({r.get(a) for r in records}) > 1]
    log = not higher and _use_log(grid)
    norm = colors.LogNorm() if log else None
    from matplotlib import colormaps

    cmap = colormaps["viridis" if higher else "viridis_r"].with_extremes(bad="#cccccc")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", origin="lower")
    ax.set_xticks(range(len(eps_values)), [f"{e:g}" for e in eps_values], rotation=45 if len(eps_values) > 4 else 0)
    ax.set_yticks(range(len(lr_values)), [f"{v:g}" for v in lr_values])
    ax.set_xlabel("eps")
    ax.set_ylabel("lr")
    title = f"{label(metric)} over eps × lr"
    if others:
        title += f"\n(best over {', '.join(others)})"
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=label(metric), shrink=0.9)
    if grid.size <= 120:
        finite = grid[np.isfinite(grid)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0, 1)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                value = grid[i, j]
                if math.isnan(value):
                    ax.text(j, i, "×", ha="center", va="center", color="#555555", fontsize=9)
                    continue
                text = f"{value:.2f}" if higher else f"{value:.2g}"
                share = 0.5 if hi == lo else (value - lo) / (hi - lo)
                light = share > 0.6 if higher else share < 0.4
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if light else "white")


def save_plot(meta: dict, records: Sequence[dict], path: Path | str, *, dpi: int = 110) -> int:
    """Draw :func:`make_figure` into ``path`` (its suffix picks the format: png, svg, pdf...),
    atomically. Returns the number of loss-curve panels."""
    path = Path(path)
    Figure, FigureCanvasAgg, _, _ = _matplotlib()
    check_writable(path)
    fmt = path.suffix.lower().lstrip(".")
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise UserError(f"{param('output')}: cannot tell the image format of {path} (use .png, .svg or .pdf)")
    fig = make_figure(meta, records)
    FigureCanvasAgg(fig)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    except OSError as e:
        raise UserError(f"{param('output')}: cannot write {path}: {e.strerror or e}") from None
    return sum(1 for ax in fig.axes if ax.get_ylabel() == "training loss")

