"""Pictures of a saved sweep: loss curves coloured by eps (one panel per lr/decay/... and update
rule), and a heatmap of the validation metric over eps x lr, one per update rule when they vary.

Numbers on ticks and in cells are shown as in the tables (:mod:`epsweep.numbers`). Accuracy is
coloured by its error rate (1 - acc) on a log scale, so 0.90, 0.99 and 0.999 are equally far
apart; losses spanning more than 50x on a log scale. Text from a results file (titles,
convention names) is drawn literally, never as mathtext.

matplotlib is an optional extra (``pip install 'epsweep[plot]'``); only this module needs it,
through its object-oriented API (no pyplot, no global state, no display).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from epsweep.errors import UserError, param
from epsweep.numbers import column, show
from epsweep.results.analysis import metric_of
from epsweep.results.files import check_writable, write_atomic
from epsweep.results.records import axis_notation, rank_key
from epsweep.views.sheet import visible
from epsweep.views.table import rule_name, varying_axes
from epsweep.views.titles import held_axes, run_title
from epsweep.vocabulary import HIGHER_IS_BETTER, OPTIMIZER_NAMES, axis_title, label

log = logging.getLogger(__name__)

MAX_PANELS = 24
MAX_TICKS = 12  # labels on an axis or a colour bar; more are thinned out
CELL_INCHES = 0.55  # a heatmap cell wide enough for "0.9677" at 7 points
MISSING_MESSAGE = "plotting needs matplotlib, an optional extra: pip install 'epsweep[plot]'"
TITLE_POINTS = 12.0  # the figure's title (matplotlib's "large")
LITERAL = {"parse_math": False}  # user text: no mathtext ($...$), no TeX


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


def _order(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _thin(count: int, limit: int = MAX_TICKS) -> list[int]:
    """At most ``limit`` nearly evenly spaced indices of ``count``, first and last included."""
    if count <= limit:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, limit)})


class _Layout:
    """Which panels the records make: curve panels keyed by the non-eps axes that vary (and
    the update rule), heatmaps keyed by update rule."""

    def __init__(self, meta: dict, records: Sequence[dict]):
        self.records = records
        self.notation = axis_notation(records, meta)
        rank = {name: i for i, name in enumerate(OPTIMIZER_NAMES)}
        rules = {rule_name(r, True) for r in records}
        self.rules = sorted(rules, key=lambda rule: (rank.get(rule.split()[0], 9), rule))
        self.varying = [a for a in varying_axes(records) if a != "eps"]
        self.panels: dict[tuple, list[dict]] = {}
        for record in records:
            key = (*(record.get(a) for a in self.varying), rule_name(record, True))
            self.panels.setdefault(key, []).append(record)
        used = sorted({r["eps"] for r in records if r.get("eps") is not None})
        self.eps_values = used + ([None] if any(r.get("eps") is None for r in records) else [])  # None: sgd
        self.lr_values = sorted({r["lr"] for r in records})

    def panel_title(self, key: tuple) -> str:
        words = [f"{axis_title(a, [r.get('optimizer') for r in self.records])} "
                 f"{show(v, scientific=self.notation[a])}" for a, v in zip(self.varying, key, strict=False)]
        if len(self.rules) > 1:
            words.append(key[-1])
        return ", ".join(words) or key[-1]

    def eps_labels(self, indices: Sequence[int]) -> list[str]:
        return ["n/a" if self.eps_values[i] is None else show(self.eps_values[i], scientific=self.notation["eps"])
                for i in indices]


def make_figure(meta: dict, records: Sequence[dict]):
    """The figure (a matplotlib ``Figure``): curve panels when the records carry loss curves,
    then the heatmaps."""
    Figure, _, colors, ScalarMappable = _matplotlib()
    if not records:
        raise UserError("nothing to plot: no records")
    layout = _Layout(meta, records)
    with_curves = any(r.get("loss_curve") for r in records)
    n_curve = len(layout.panels) if with_curves else 0
    if n_curve > MAX_PANELS:
        names = "/".join([*layout.varying, "update rule"] if len(layout.rules) > 1 else layout.varying)
        raise UserError(f"{n_curve} panels (one per {names}) is too many; narrow it with {param('where')}, "
                        f"e.g. lr=0.01")
    ncols = min(3, max(n_curve, 1))
    curve_rows = math.ceil(n_curve / ncols) if n_curve else 0
    heat_cols = min(len(layout.rules), 3)
    heat_rows = math.ceil(len(layout.rules) / heat_cols)
    heat_width = heat_cols * (len(layout.eps_values) * CELL_INCHES + 1.4) + 1.0
    width = min(30.0, max(4.3 * ncols + 1.2, heat_width))
    heat_height = max(2.6, 0.32 * len(layout.lr_values) + 1.6)
    height = 3.4 * curve_rows + heat_height * heat_rows + 0.9
    fig = Figure(figsize=(width, height), layout="constrained")
    held = held_axes(records, [*layout.varying, "eps"] + (["lr"] if len(layout.lr_values) > 1 else []), meta)
    title = visible(run_title(meta, records) + (f"\n{', '.join(held)}" if held else ""))
    lines = _fitted(fig, title, TITLE_POINTS)
    fig.set_size_inches(width, height + TITLE_POINTS / 72 * 1.2 * (len(lines) - len(title.split("\n"))))
    fig.suptitle("\n".join(lines), fontsize=TITLE_POINTS, **LITERAL)
    if n_curve:
        top, bottom = fig.subfigures(2, 1, height_ratios=[3.4 * curve_rows, heat_height * heat_rows])
        _curves(top, layout, meta, colors, ScalarMappable, ncols)
    else:
        bottom = fig
    cell = min(0.9, (width / heat_cols - 2.4) / max(len(layout.eps_values), 1))
    _heatmaps(bottom, layout, metric_of(records), colors, ScalarMappable, heat_cols, cell)
    fig.curve_panels, fig.heatmaps = n_curve, len(layout.rules)
    return fig


def _fitted(fig, text: str, points: float) -> list[str]:
    """The lines of ``text``, each broken (after a space or /, else anywhere) to fit the
    width of ``fig`` when drawn at ``points``: a long title wraps instead of running off both sides."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer, font = RendererAgg(100, 100, 72), FontProperties(size=points)  # 72 dpi: widths in points
    room = fig.get_size_inches()[0] * 72 * 0.96

    def fits(line: str) -> bool:
        with warnings.catch_warnings():  # a missing glyph is said once, when the figure is drawn
            warnings.simplefilter("ignore", UserWarning)
            return renderer.get_text_width_height_descent(line, font, ismath=False)[0] <= room

    out = []
    for line in text.split("\n"):
        current = ""
        for piece in re.findall(r"[^ /]*[ /]?", line):
            for char in piece if not fits(piece) else [piece]:  # a piece wider than the figure: by characters
                if current and not fits(current + char):
                    out.append(current.rstrip())
                    current = char.lstrip(" ")
                else:
                    current += char
        out.append(current.rstrip())
    return out


def _curves(fig, layout: _Layout, meta: dict, colors, ScalarMappable, ncols: int) -> None:
    """A panel of training-loss curves per (other axes, update rule), coloured by eps; one
    y scale for all; an x where a setting diverged."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    n = len(layout.eps_values)
    palette = [colormaps["viridis"](x) for x in (np.linspace(0, 0.9, n) if n > 1 else [0.4])]
    cmap = colors.ListedColormap(palette)
    norm = colors.BoundaryNorm(np.arange(n + 1) - 0.5, n)
    steps = meta.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        steps = None  # unknown (or malformed): the x axis counts curve points
    points = np.array([v for r in layout.records for v in (r.get("loss_curve") or []) if v is not None], float)
    finite = points[np.isfinite(points)]
    log_y = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 50
    axes = []
    rows = math.ceil(len(layout.panels) / ncols)
    order = sorted(layout.panels.items(),
                   key=lambda kv: ([_order(v) for v in kv[0][:-1]], layout.rules.index(kv[0][-1])))
    for i, (key, group) in enumerate(order):
        ax = fig.add_subplot(rows, ncols, i + 1, sharey=axes[0] if axes else None)
        axes.append(ax)
        marks = 0
        for record in sorted(group, key=lambda r: layout.eps_values.index(r.get("eps"))):
            curve = np.array([np.nan if v is None else v for v in (record.get("loss_curve") or [])], float)
            if curve.size == 0:
                continue
            x = (np.arange(curve.size) + 1) * (steps / curve.size if steps else 1)
            color = cmap(norm(layout.eps_values.index(record.get("eps"))))
            ax.plot(x, curve, color=color, linewidth=1.2)
            alive = np.flatnonzero(np.isfinite(curve))
            if record.get("diverged") and alive.size:
                ax.plot(x[alive[-1]], curve[alive[-1]], "x", color=color, markersize=7)
            elif record.get("diverged"):  # no loss to sit on: above the x axis, at the step it diverged
                step = record.get("diverged_step")
                at = step + 1 if steps and isinstance(step, int) and not isinstance(step, bool) else x[0]
                ax.plot(at, 0.04 + 0.06 * marks, "x", color=color, markersize=7, clip_on=False,
                        transform=ax.get_xaxis_transform())  # stacked: one per eps
                marks += 1
        if not any(np.isfinite(v) for r in group for v in (r.get("loss_curve") or []) if v is not None):
            _nothing_drawn(ax, group, steps)
        if log_y and len(axes) == 1:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(_formatter())
        ax.set_title(visible(layout.panel_title(key)), fontsize=10, **LITERAL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and curve points are whole
        ax.set_xlabel("step" if steps else "curve point")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    if finite.size == 0:  # no loss anywhere: a y scale would be made up
        axes[0].set_yticks([])
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9, aspect=30)
    ticks = _thin(n)
    bar.set_ticks(ticks, labels=layout.eps_labels(ticks))
    bar.ax.tick_params(labelsize=8)
    bar.set_label("eps")


def _nothing_drawn(ax, group: Sequence[dict], steps: int | None) -> None:
    """A panel with no finite loss to draw: the steps trained on its x axis, and why it is empty."""
    if steps:
        ax.set_xlim(0, steps + 0.5)
    if all(r.get("diverged") for r in group):
        at = {r.get("diverged_step") for r in group}
        step = at.pop() if len(at) == 1 else None
        why = "every setting diverged before its first recorded loss" if step is None else \
            f"every setting diverged at step {step}" + (" (the first)" if step == 0 else "")
    else:
        why = "no loss recorded"
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=9, color="#555555", transform=ax.transAxes)


def _formatter():
    """Tick labels as the tables write numbers (``1e-8``, not ``$10^{-8}$``)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: show(value))


def _best_grid(records: Sequence[dict], layout: _Layout, metric: str, eps_values: list) -> np.ndarray:
    """``metric`` over lr (rows) x ``eps_values`` (columns): the best-ranked setting of each
    cell (over any other axis); NaN where every setting diverged."""
    cells: dict[tuple, list[dict]] = {}
    for record in records:
        if not record.get("diverged") and record.get(metric) is not None:
            cells.setdefault((record["lr"], record.get("eps")), []).append(record)
    grid = np.full((len(layout.lr_values), len(eps_values)), np.nan)
    for (lr, eps), group in cells.items():
        grid[layout.lr_values.index(lr), eps_values.index(eps)] = min(group, key=rank_key)[metric]
    return grid


def _scale(values: np.ndarray, higher: bool, colors):
    """(norm, shade) of the heatmaps' one colour scale: accuracy as its error rate on a log
    scale (0.9, 0.99, 0.999 equally apart); a loss spanning more than 50x on a log scale."""
    if higher:
        errors = 1 - values
        floor = max(float(errors[errors > 0].min()) / 2, 1e-6) if (errors > 0).any() else 1e-3
        top = max(float(errors.max()) if errors.size else 1.0, floor * 10)
        return colors.LogNorm(vmin=floor, vmax=top), (lambda v: np.clip(1 - v, floor, None))
    if values.size and values.min() > 0 and values.max() / values.min() > 50:
        return colors.LogNorm(values.min(), values.max()), (lambda v: v)
    return colors.Normalize(*((values.min(), values.max()) if values.size else (0, 1))), (lambda v: v)


def _heatmaps(fig, layout: _Layout, metric: str, colors, ScalarMappable, ncols: int, cell: float) -> None:
    """One heatmap per update rule (over the eps values it has), sharing one colour scale and
    one colour bar; ``cell``: a cell's width in inches (values are written in cells wide enough)."""
    from matplotlib import colormaps

    higher = metric in HIGHER_IS_BETTER
    grids = {}
    for rule in layout.rules:
        records = [r for r in layout.records if rule_name(r, True) == rule]
        eps_values = [e for e in layout.eps_values if any(r.get("eps") == e for r in records)]
        grids[rule] = (eps_values, _best_grid(records, layout, metric, eps_values))
    values = np.concatenate([g[np.isfinite(g)] for _, g in grids.values()])
    norm, shade = _scale(values, higher, colors)
    cmap = colormaps["viridis_r"].with_extremes(bad="#cccccc")
    others = [a for a in layout.varying if a != "lr"]
    rows = math.ceil(len(grids) / ncols)
    wanted = max(3.5, len(layout.eps_values) * cell + 1.4)  # a heatmap no wider than its cells need
    spare = max(0.0, fig.get_figure(root=True).get_size_inches()[0] / ncols - 1.2 - wanted) * ncols
    gs = fig.add_gridspec(rows, ncols + 1, width_ratios=[wanted] * ncols + [max(spare, 1e-3)])
    axes = []
    for i, (rule, (eps_values, grid)) in enumerate(grids.items()):
        ax = fig.add_subplot(gs[i // ncols, i % ncols])
        axes.append(ax)
        ax.imshow(np.ma.masked_invalid(shade(grid)), cmap=cmap, norm=norm, aspect="auto", origin="lower")
        ticks = _thin(len(eps_values))
        labels = layout.eps_labels([layout.eps_values.index(eps_values[t]) for t in ticks])
        crowded = max(map(len, labels)) * 0.075 > max(cell, CELL_INCHES) * len(eps_values) / len(ticks) * 0.9
        ax.set_xticks(ticks, labels, fontsize=8, **({"rotation": 45, "ha": "right", "rotation_mode": "anchor"}
                                                     if crowded else {}))
        lr_ticks = _thin(len(layout.lr_values))
        lr_labels = column(layout.lr_values)
        ax.set_yticks(lr_ticks, [lr_labels[j] for j in lr_ticks], fontsize=8)
        ax.set_xlabel("eps")
        ax.set_ylabel("lr")
        title = f"{label(metric)} over eps × lr" + (f", {rule}" if len(grids) > 1 else "")
        if others:
            title += f"\n(best over {', '.join(others)})"
        ax.set_title(visible(title), fontsize=10, **LITERAL)
        if cell >= 0.4 and len(layout.lr_values) <= 16:
            _annotate(ax, grid, shade, norm, cmap)
    if not values.size:
        return  # every cell diverged: no scale to show
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9, aspect=20)
    bar.set_label(f"{label(metric)}" + (" (colour: 1 − acc, log scale)" if higher else ""))
    if isinstance(norm, colors.LogNorm) and not higher:
        bar.ax.yaxis.set_major_formatter(_formatter())
    if higher:
        marks = [m for m in (0.9, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 1e-3, 1e-4, 1e-5) if norm.vmin <= m <= norm.vmax]
        bar.set_ticks(marks, labels=[show(1 - m) for m in marks])
        bar.minorticks_off()
    bar.ax.tick_params(labelsize=8)


def _annotate(ax, grid: np.ndarray, shade, norm, cmap) -> None:
    """The value in each cell (as the tables show it), in black or white by the cell's
    brightness; a grey x where every setting diverged."""
    texts = column(grid[np.isfinite(grid)].tolist(), zeros=True)
    fontsize = 8 if grid.shape[1] <= 10 else 7 if grid.shape[1] <= 16 else 6
    k = 0
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = grid[i, j]
            if math.isnan(value):
                ax.text(j, i, "×", ha="center", va="center", color="#555555", fontsize=9)
                continue
            r, g, b, _ = cmap(norm(shade(value)))
            light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
            ax.text(j, i, texts[k], ha="center", va="center", fontsize=fontsize, color="black" if light else "white")
            k += 1


def save_plot(meta: dict, records: Sequence[dict], path: Path | str, *, dpi: int = 110) -> tuple[int, int]:
    """Draw :func:`make_figure` into ``path`` (its suffix picks the format: png, svg, pdf...),
    atomically. Returns the number of loss-curve panels and of heatmaps."""
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
        with warnings.catch_warnings(record=True) as caught:  # not matplotlib's own lines on stderr
            warnings.simplefilter("always", UserWarning)
            write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    except OSError as e:
        raise UserError(f"{param('output')}: cannot write {path}: {e.strerror or e}") from None
    missing = {str(w.message) for w in caught if "missing from font" in str(w.message)}
    if missing:
        log.warning("%s: the font has no glyph for %d character%s of the names drawn (shown as boxes)", path,
                    len(missing), "s" * (len(missing) != 1))
    for other in (w for w in caught if "missing from font" not in str(w.message)):
        log.warning("%s: %s", path, other.message)
    return fig.curve_panels, fig.heatmaps
