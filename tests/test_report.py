"""Looking at results: epsweep report (sort, top, filter, best per axis, sensitivity, formats),
epsweep plot, and the sparkline column."""

import csv
import io
import json
import sys

import numpy as np
import pytest

from epsweep.cli import main
from epsweep.errors import UserError
from epsweep.results.analysis import build_report
from epsweep.results.reading import read_results
from epsweep.views.table import SPARK_BLOCKS, curve_scale, sparkline

EPS = (1e-8, 1e-4, 1.0)
LRS = (1e-3, 1e-2, 0.1)
# val accuracy by (lr, eps): eps matters a lot at lr 1e-3, little at lr 0.1; (0.1, 1e-8) diverged
ACC = {
    (1e-3, 1e-8): 0.90, (1e-3, 1e-4): 0.80, (1e-3, 1.0): 0.10,
    (1e-2, 1e-8): 0.93, (1e-2, 1e-4): 0.95, (1e-2, 1.0): 0.50,
    (0.1, 1e-8): None, (0.1, 1e-4): 0.85, (0.1, 1.0): 0.88,
}


def record(lr, eps):
    acc = ACC[(lr, eps)]
    diverged = acc is None
    start = 2.3
    end = 3.0 if diverged else 2.3 * (1 - acc) + 0.05
    curve = [start + (end - start) * i / 9 for i in range(10)]
    if diverged:
        curve[6:] = [None] * 4
    return {"eps": eps, "decay": 0.9, "lr": lr, "momentum": 0.0, "optimizer": "rmsprop", "convention": "optax",
            "final_loss": None if diverged else end, "final_loss_std": None,
            "val_loss": None if diverged else end + 0.02, "val_loss_std": None,
            "val_accuracy": acc, "val_accuracy_std": None, "diverged": diverged,
            "diverged_seeds": int(diverged), "diverged_step": 61 if diverged else None, "seeds": 1,
            "loss_curve": curve}


RECORDS = [record(lr, eps) for lr in LRS for eps in EPS]
META = {"format": "epsweep-stream/1", "task": "mlp", "steps": 100, "batch_size": 16, "seeds": [0],
        "data": {"name": "digits", "train": 1438, "val": 359, "input_shape": [8, 8, 1], "classes": 10},
        "settings": 12}


@pytest.fixture
def saved(tmp_path):
    """A partial stream (9 of 12 settings) whose last line was cut mid-write."""
    path = tmp_path / "sweep.jsonl"
    lines = [json.dumps({"meta": META})] + [json.dumps(r) for r in RECORDS]
    path.write_text("\n".join(lines) + "\n" + json.dumps(RECORDS[0])[:25])
    return path


def test_best_per_axis_and_sensitivity(saved):
    report = build_report(read_results(saved))
    assert report.metric == "val_accuracy" and len(report.records) == 9
    best = {(row["axis"], row["value"]): (row["score"], row["best"]) for row in report.best_per_axis}
    assert best[("eps", 1e-8)][0] == 0.93 and best[("eps", 1e-8)][1]["lr"] == 1e-2
    assert best[("eps", 1.0)][0] == 0.88 and best[("lr", 0.1)][0] == 0.88
    assert best[("lr", 1e-3)][1]["eps"] == 1e-8
    assert {row["axis"] for row in report.best_per_axis} == {"eps", "lr"}  # decay has one value
    by_lr = {row["lr"]: row for row in report.sensitivity}
    assert by_lr[1e-3]["spread"] == pytest.approx(0.80) and by_lr[1e-3]["best_eps"] == 1e-8
    assert by_lr[0.1]["spread"] == pytest.approx(0.03) and by_lr[0.1]["diverged"] == 1
    assert by_lr[1e-2]["best_eps"] == 1e-4
    assert "up to 0.8000 (lr 0.001)" in report.summary and "as little as 0.03000 (lr 0.1)" in report.summary
    assert report.title() == "partial: 9 of 12 settings" and report.notes  # the cut line was noted


def test_sort_top_and_where(saved):
    loaded = read_results(saved)
    top = build_report(loaded, top=3).records
    assert [r["val_accuracy"] for r in top] == [0.95, 0.93, 0.90]
    by_loss = build_report(loaded, sort="val_loss").records
    assert [r["val_accuracy"] for r in by_loss[:2]] == [0.95, 0.93] and by_loss[-1]["diverged"]
    ascending_acc = build_report(loaded, sort="acc", reverse=True, top=2).records
    assert [r["val_accuracy"] for r in ascending_acc] == [0.10, 0.50]
    by_eps = build_report(loaded, sort="eps").records
    assert [r["eps"] for r in by_eps] == sorted(r["eps"] for r in RECORDS)
    small = build_report(loaded, where=["eps<=1e-4", "lr=0.001,0.01"]).records
    assert {(r["lr"], r["eps"]) for r in small} == {(1e-3, 1e-8), (1e-3, 1e-4), (1e-2, 1e-8), (1e-2, 1e-4)}
    assert len(build_report(loaded, where=["diverged=false"]).records) == 8
    assert len(build_report(loaded, where=["convention=optax,tf1", "val_accuracy>0.9"]).records) == 2
    with pytest.raises(UserError, match="no settings match"):
        build_report(loaded, where=["lr=0.5"])


def test_the_star_marks_the_best_of_the_selection_not_of_the_rows_a_top_cut_kept(saved, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "150")
    assert main(["report", str(saved), "--sort", "lr", "--top", "3"]) == 0  # lr 1e-3 only: the best is cut
    out = capsys.readouterr().out
    assert "★" not in out and "nothing is starred" not in out
    assert main(["report", str(saved), "--sort", "lr", "--reverse", "--top", "6"]) == 0
    (starred,) = [line for line in capsys.readouterr().out.splitlines() if "★" in line]
    assert "★ 1e-4" in starred and "0.01" in starred  # the sweep's best, val acc 0.95


def test_report_table_csv_and_json(saved, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # as on a wide terminal; at 80 the curve column is left out
    assert main(["report", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "partial: 9 of 12 settings" in out and "loss curve" in out and "★" in out
    assert "Best setting for each axis value" in out and "Eps sensitivity of val acc (eps 1e-8..1e0)" in out
    assert any(ch in out for ch in SPARK_BLOCKS)

    assert main(["report", str(saved), "--top", "2", "-f", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [float(r["val_accuracy"]) for r in rows] == [0.95, 0.93]

    assert main(["report", str(saved), "--where", "lr=0.01", "-f", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["results"]) == 3 and document["metric"] == "val_accuracy"
    assert document["sensitivity"][0]["spread"] == pytest.approx(0.45)
    assert document["meta"]["task"] == "mlp"

    assert main(["report", str(saved), "--sort", "eps", "-f", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 and all("meta" not in json.loads(line) for line in lines)


def test_report_reads_back_what_grid_wrote(tmp_path, capsys, monkeypatch):
    """`report FILE` shows the same table `grid` printed (json, csv and jsonl files)."""
    monkeypatch.setenv("COLUMNS", "120")
    args = ["grid", "--task", "quadratic", "--steps", "30", "--eps", "1e-8", "1e-2", "1", "--lr", "0.01", "0.1"]
    assert main([*args, "-o", str(tmp_path / "q.json"), "-q"]) == 0
    grid_table = capsys.readouterr().out
    assert "loss curve" in grid_table
    for name in ("q.json", "q.jsonl"):
        if name == "q.jsonl":
            assert main([*args, "-o", str(tmp_path / name), "-q"]) == 0
            capsys.readouterr()
        assert main(["report", str(tmp_path / name)]) == 0
        assert capsys.readouterr().out.startswith(grid_table), name
    assert main([*args, "-f", "csv", "-o", str(tmp_path / "q.csv"), "-q"]) == 0
    assert main(["report", str(tmp_path / "q.csv"), "--sort", "final_loss", "--top", "1", "-f", "csv"]) == 0
    out = capsys.readouterr().out
    assert len(list(csv.DictReader(io.StringIO(out)))) == 1


def test_sparkline():
    scale = curve_scale([[4.0, 3.0, 2.0, 1.0], [4.0, 4.0, 4.0, 4.0]])
    assert sparkline([4.0, 3.0, 2.0, 1.0], scale, width=4) == "█▆▃▁"
    assert sparkline([4.0, 4.0, 4.0, 4.0], scale, width=4) == "████"
    assert sparkline([4.0, None, float("nan"), 1.0], scale, width=4) == "█  ▁"
    assert len(sparkline([float(i) for i in range(50, 0, -1)], curve_scale([[50.0, 1.0]]))) == 10
    assert sparkline(None, scale) == "" and curve_scale([[None, None]]) is None
    log_scale = curve_scale([[1e2, 1e0, 1e-2]])
    assert log_scale[2] is True and sparkline([1e2, 1e0, 1e-2], log_scale, width=3) == "█▅▁"


def test_plot_draws_panels_and_heatmap(saved, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from epsweep.views.plot import make_figure

    loaded = read_results(saved)
    fig = make_figure(loaded.meta, loaded.records)
    titles = [ax.get_title() for ax in fig.axes]
    assert "lr 0.001" in titles and "lr 0.1" in titles  # one panel per lr (decay is the same: in the title)
    assert fig._suptitle.get_text().endswith("\ndecay 0.9")
    assert "val acc over eps × lr" in titles
    assert sum(ax.get_ylabel() == "training loss" for ax in fig.axes) == 3
    heat = next(ax for ax in fig.axes if ax.get_title().startswith("val acc"))
    assert [t.get_text() for t in heat.get_xticklabels()] == ["1e-8", "1e-4", "1e0"]  # as the table writes them
    cells = {t.get_text() for t in heat.texts}
    assert {"0.9500", "0.1000", "×"} <= cells  # the diverged setting is a grey x

    target = tmp_path / "sweep.png"
    assert main(["plot", str(saved), "-o", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 10_000
    assert "3 loss-curve panels and a heatmap" in capsys.readouterr().err
    assert main(["plot", str(saved), "-o", str(tmp_path / "one.svg"), "--where", "lr=0.01", "-q"]) == 0
    assert (tmp_path / "one.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("lrs", [(1e-2,), LRS])
def test_plot_wraps_a_long_title_within_the_figure(lrs):
    """A long dataset name wraps (after a / or a space) instead of running off both sides,
    with one panel as with several."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from epsweep.views.plot import make_figure

    name = "/tmp/a_rather_long_folder_name/another_long_folder/regression_dataset_name.npz"
    fig = make_figure({**META, "data": {**META["data"], "name": name}}, [r for r in RECORDS if r["lr"] in lrs])
    FigureCanvasAgg(fig).draw()
    title = fig._suptitle
    box, page = title.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1
    assert title.get_text().count("\n") >= 2 and name in title.get_text().replace("\n", "")


def test_plot_marks_settings_that_diverged_at_step_0():
    """No loss to draw: each setting's x sits above the x axis at its step, the panel says why,
    and no made-up y scale (or colour scale) is shown."""
    pytest.importorskip("matplotlib")
    from epsweep.views.plot import make_figure

    nan = [{**r, "diverged": True, "diverged_step": 0, "final_loss": None, "val_loss": None, "val_accuracy": None,
            "loss_curve": [None] * 10} for r in RECORDS]
    fig = make_figure(META, nan)
    panels = [ax for ax in fig.axes if ax.get_ylabel() == "training loss"]
    assert len(panels) == 3 and all(ax.get_yticks().size == 0 for ax in panels)
    for ax in panels:
        assert [tuple(line.get_xdata()) for line in ax.lines if line.get_marker() == "x"] == [(1,)] * 3
        assert [t.get_text() for t in ax.texts] == ["every setting diverged at step 0 (the first)"]
    assert len(fig.axes) == 3 + 1 + 1  # the panels, the eps bar and the heatmap: no colour bar without values


def test_plot_names_with_control_characters_and_missing_glyphs(saved, tmp_path, capsys):
    """A name from the file is drawn as typed (``\\x1b`` written out); characters the font lacks
    are one epsweep warning, not matplotlib's own lines (with the raw name) on stderr."""
    pytest.importorskip("matplotlib")
    loaded = read_results(saved)
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"meta": {**loaded.meta, "task": "a\x1b[2J\x07 数据"}, "results": loaded.records}))
    assert main(["plot", str(named), "-o", str(tmp_path / "named.png")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (f"epsweep: warning: {tmp_path / 'named.png'}: the font has no glyph for 2 "
                                   f"characters of the names drawn (shown as boxes)")
    assert "\x1b" not in err and len(err.splitlines()) == 2
    assert main(["plot", str(named), "-o", str(tmp_path / "named.png"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_plot_without_matplotlib_says_how_to_get_it(saved, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["plot", str(saved), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err == "epsweep: error: plotting needs matplotlib, an optional extra: pip install 'epsweep[plot]'\n"
    assert not (tmp_path / "x.png").exists()


def test_titles_leave_out_meta_of_the_wrong_type():
    from epsweep.views.table import records_table
    from epsweep.views.titles import run_title as _title

    assert _title({"task": 5, "data": {}, "steps": "abc", "batch_size": True, "seeds": 5}) == "RMSProp sweep"
    assert _title({"data": {"name": "x.npz"}, "steps": 10}) == "RMSProp sweep: data x.npz, 10 steps"
    title = records_table(RECORDS, {"title": 5, "task": "mlp"}).title_text
    assert title == "RMSProp (optax) sweep: task mlp; decay 0.9"


WHERE_CASES = [  # (condition, the field's values, which are kept): numbers match to the digits shown
    ("eps_dominated_mean=1", [0.699, 0.9996, 1.0], [0.9996, 1.0]),  # a share shows 3 decimals
    ("eps_dominated_mean<1", [0.699, 0.785, 0.9996], [0.699, 0.785]),
    ("eps_dominated_mean<0.8", [0.772, 0.785, 0.8004], [0.772, 0.785]),
    ("val_accuracy<1", [0.9996, 0.9999, 0.99996], [0.9996, 0.9999]),  # shown as 0.9996, 0.9999, 1.000
    ("val_accuracy=1", [0.9996, 0.99996, 1.0004], [0.99996, 1.0004]),
    ("lr=0.1", [0.09996, 0.099996, 0.10004], [0.099996, 0.10004]),
]


@pytest.mark.parametrize("condition, values, kept", WHERE_CASES, ids=[c[0] for c in WHERE_CASES])
def test_where_matches_numbers_to_the_digits_the_tables_show(condition, values, kept, tmp_path):
    field = condition.split("=")[0].split("<")[0]
    path = tmp_path / "w.json"
    path.write_text(json.dumps([{**RECORDS[i], field: v} for i, v in enumerate(values)]))
    assert [r[field] for r in build_report(read_results(path), where=[condition]).records] == kept


def test_compare_where_keeps_a_setting_both_have_when_either_passes():
    """A metric condition tested per file made a setting both hold read as only in one."""
    from epsweep.results.compare import compare
    from epsweep.results.reading import Loaded

    rows = [{**RECORDS[0], "val_accuracy": 0.7}, {**RECORDS[1], "val_accuracy": 0.5}]
    other = [{**RECORDS[i], "val_accuracy": acc} for i, acc in enumerate((0.9, 0.6, 0.95))]
    c = compare(Loaded("a", {}, rows, []), Loaded("b", {}, other, []), where=["val_accuracy>0.8"])
    assert [(r["a_val_accuracy"], r["b_val_accuracy"]) for r in c.rows] == [(0.7, 0.9)]
    assert c.only_a == [] and [r["val_accuracy"] for r in c.only_b] == [0.95]


def test_the_numbers_modules_examples_run():
    """epsweep.numbers is the one number format of every table and message: its examples are
    its specification (99999.6 shows as 1e5, a share's 1 means 0.9995 to 1, ...)."""
    import doctest

    import epsweep.numbers

    failed, tried = doctest.testmod(epsweep.numbers)
    assert failed == 0 and tried >= 9


def test_compare_differences_that_round_to_zero_have_no_sign():
    from epsweep.views.summaries import _signed

    assert _signed(["-0.000", "0.000", "0.001", "-0.011", "—", "0", "-2.5e-3"]) == \
        ["0.000", "0.000", "+0.001", "-0.011", "—", "0", "-2.5e-3"]


def test_seeds_fold_in_float64():
    """A float32 loss above 1.8e19 overflows when squared, two above 1.7e38 when summed."""
    from epsweep.results.records import fold_seeds

    def folded(losses):
        losses = np.array(losses, np.float32)
        return fold_seeds(dict(RECORDS[0]), {"final_loss": losses}, np.full(len(losses), -1),
                          np.ones((len(losses), 2), np.float32))

    assert folded([1e20, 3e20, 2e20])["final_loss_std"] == pytest.approx(1e20, rel=1e-6)
    assert folded([2e38, 3e38])["final_loss"] == pytest.approx(2.5e38, rel=1e-6)


def test_where_orders_only_numbers(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([{**RECORDS[0], "note": 1}, {**RECORDS[1], "note": [1]}, {**RECORDS[2], "note": "a"}]))
    report = build_report(read_results(path), where=["note<2"])
    assert [r["note"] for r in report.records] == [1]


def test_a_csv_saved_by_a_spreadsheet_reads_its_flags(tmp_path):
    """Excel writes TRUE and FALSE; pandas may write flags as 1 and 0."""
    rows = [{**r, "loss_curve": None} for r in RECORDS[:2]]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    lines = text.getvalue().splitlines()
    excel = [lines[0], lines[1].replace("False", "FALSE"), lines[2].replace("False", "0")]
    (tmp_path / "excel.csv").write_text("\r\n".join(excel) + "\r\n")
    assert [r["diverged"] for r in read_results(tmp_path / "excel.csv").records] == [False, False]


def test_a_damaged_stream_meta_is_left_out_with_a_note(tmp_path, capsys):
    """A cut copy of NAME.meta.json: the records still report, untitled, saying why."""
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (tmp_path / "s.meta.json").write_text('{"format": "epsweep-stream/1", "title": "cut')
    loaded = read_results(path)
    assert loaded.meta == {} and len(loaded.records) == len(RECORDS)
    assert loaded.notes == [f"ignored {tmp_path / 's.meta.json'}: not valid JSON (Unterminated string starting "
                            f"at: line 1 column 41 (char 40))"]
    assert main(["report", str(path)]) == 0
    assert "epsweep: warning: ignored" in capsys.readouterr().err


def test_extreme_but_allowed_numbers_report_and_plot(tmp_path, capsys):
    path = tmp_path / "extreme.json"
    extreme = [{**RECORDS[i], "val_accuracy": None, "val_loss": None, "final_loss": v, "diverged": False,
                "loss_curve": [v, -v]} for i, v in enumerate((1e300, -1e300, 1e-300))]
    path.write_text(json.dumps({"results": extreme}))
    assert main(["report", str(path), "-f", "json"]) == 0
    sensitivity = json.loads(capsys.readouterr().out)["sensitivity"]
    assert sensitivity[0]["spread"] == 2e300  # numbers within ±1e300 keep every difference finite
    assert main(["report", str(path)]) == 0 and "Traceback" not in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    assert main(["plot", str(path), "-o", str(tmp_path / "x.png"), "-q"]) == 0


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_a_setting_read_twice_counts_once_as_resume_reads_it(tmp_path, capsys, fmt):
    """A file holding a setting twice (appended to twice, or two files joined): the first
    record of each setting counts, a note says how many later ones were skipped and how many
    of those differ, and the report ranks each setting once."""
    from epsweep.results.formats import render_machine

    changed = {**RECORDS[1], "final_loss": 0.001, "val_accuracy": 0.99}  # would rank first
    path = tmp_path / f"twice.{fmt}"
    path.write_text(render_machine(fmt, META, [*RECORDS, RECORDS[0], changed]))
    loaded = read_results(path)
    assert [(r["lr"], r["eps"], r["final_loss"]) for r in loaded.records] == \
        [(r["lr"], r["eps"], r["final_loss"]) for r in RECORDS]
    assert loaded.notes[-1] == (f"{path}: skipped 2 later records of settings already read (the first of each "
                                "counts, as resuming the sweep would); 1 of them with other results")
    assert main(["report", str(path), "-f", "csv", "--sort", "final_loss"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == len(RECORDS) and float(rows[0]["final_loss"]) > 0.001
    assert "skipped 2 later records" in err


def test_the_sensitivity_sentence_names_only_what_tells_its_rows_apart():
    """RMSProp's momentum 0 and Adam's none are no difference between the rows, and Adam has no
    convention: neither is named."""
    from epsweep.results.analysis import sensitivity_summary

    def row(optimizer, convention, momentum, decay, spread):
        return {"decay": decay, "lr": 1e-3, "momentum": momentum, "optimizer": optimizer, "convention": convention,
                "metric": "final_loss", "eps_min": 1e-8, "eps_max": 1.0, "spread": spread, "diverged": 0}

    rows = [row("rmsprop", "keras", 0.0, 0.9, 0.01), row("adam", "optax", None, 0.999, 0.03)]
    text = sensitivity_summary(rows, ["eps", "decay", "momentum", "optimizer", "convention"])
    assert text == ("Across eps 1e-8..1e0, final loss moves by up to 0.03000 (decay 0.999, optimizer adam) and by as "
                    "little as 0.01000 (decay 0.9, optimizer rmsprop, convention keras).")
