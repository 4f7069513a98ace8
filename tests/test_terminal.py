"""A terminal and pipeline citizen (issue 12) and "say what a run did" (issue 14, part 4), through
the installed ``epsweep`` executable: tables at 60, 80 and 120 columns, one number format that
--where reads back, titles, markdown, compare, random values, progress in a terminal, start-up
without JAX, help texts, literal user text, collapsed and chance-level settings.

Most tests read results files written here (no training): each takes a fraction of a second.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
AXIS_TEXT = {  # how the tables write these values (numbers.py's rule, worked out by hand)
    "eps": {7.19686e-08: "7.197e-8", 1e-4: "1e-4", 1.0: "1e0"},
    "decay": {0.9: "0.9", 0.999: "0.999"},
    "lr": {0.268347: "0.2683", 0.01: "0.01"},
    "momentum": {0.0: "0", 0.9: "0.9"},
}
RULES = [("rmsprop", "optax"), ("rmsprop", "tf1"), ("adam", "optax")]
META = {"format": "epsweep-stream/1", "task": "mlp", "steps": 440, "batch_size": 32, "seeds": [0, 1, 2],
        "data": {"name": "digits", "train": 1438, "val": 359},
        "chance": {"accuracy": 0.1003, "threshold": 0.132, "examples": 359}}


def run(*args, columns=80, stdin=None, env=None):
    assert EXE, "the epsweep executable is not installed"
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": str(columns), **(env or {})}
    return subprocess.run([EXE, *map(str, args)], input=stdin, capture_output=True, text=True, env=environment,
                          timeout=300)


def record(eps=1e-4, decay=0.9, lr=0.01, momentum=0.0, optimizer="rmsprop", convention="optax", acc=0.9, **extra):
    base = {"eps": eps, "decay": decay, "lr": lr, "momentum": momentum, "optimizer": optimizer,
            "convention": convention, "final_loss": 0.5 * (1 - acc) + 0.01, "final_loss_std": 0.0123,
            "val_loss": 0.6 * (1 - acc) + 0.02, "val_loss_std": 0.0211, "val_accuracy": acc,
            "val_accuracy_std": 0.0003, "eps_dominated": 1.0, "eps_dominated_mean": 0.25, "diverged": False,
            "diverged_seeds": 0, "diverged_step": None, "collapsed": False, "collapsed_seeds": 0,
            "at_chance": False, "seeds": 3, "loss_curve": [2.3 - 0.04 * i for i in range(50)]}
    return {**base, **extra}


def write(path, records, meta=META):
    path.write_text("\n".join([json.dumps({"meta": meta}), *map(json.dumps, records)]) + "\n")
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """72 settings: every axis varies, two optimizers, two conventions, long values."""
    records, i = [], 0
    for eps in AXIS_TEXT["eps"]:
        for decay in AXIS_TEXT["decay"]:
            for lr in AXIS_TEXT["lr"]:
                for momentum in AXIS_TEXT["momentum"]:
                    for optimizer, convention in RULES:
                        i += 1
                        records.append(record(eps, decay, lr, momentum, optimizer, convention,
                                              acc=0.5 + 0.4 * ((i * 37) % 72) / 72))
    return write(tmp_path_factory.mktemp("wide") / "wide.jsonl", records)


def table_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("│", "┃"))]


def cells(out: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first table in ``out``: boxed (cells between │), or compact
    (no borders, cells separated by spaces: only for names without spaces but the update rule)."""
    lines = out.splitlines()
    if any(line.startswith("┃") for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("┃"))
        rows = []
        for line in lines[start + 2:]:
            if not line.startswith("│"):
                break
            rows.append([c.strip() for c in line.strip("│").split("│")])
        return [c.strip() for c in lines[start].strip("┃").split("┃")], rows
    rule = next(i for i, line in enumerate(lines) if set(line) == {"─"})
    body = []
    for line in lines[rule + 1:]:
        if not line.strip() or line.startswith("Left out"):
            break
        tokens = line.replace("★ ", "★").split()
        if len(tokens) > 5 and tokens[4] == "rmsprop":
            tokens[4:6] = [f"{tokens[4]} {tokens[5]}"]
        body.append([t.replace("★", "★ ") for t in tokens])
    return lines[rule - 1].split(), body


@pytest.mark.parametrize("width", [60, 80, 120])
def test_axis_values_are_never_cut_and_lines_fit(wide, width):
    out = run("report", wide, columns=width)
    assert out.returncode == 0, out.stderr
    first_table = out.stdout.split("Best setting for each axis value")[0]
    assert all(len(line) <= width for line in out.stdout.splitlines()), out.stdout
    assert "…" not in out.stdout
    header, rows = cells(first_table)
    assert len(rows) == 72
    assert header[:5] == ["eps", "decay/b2", "lr", "momentum", "optimizer"]
    for axis, column in zip(("eps", "decay", "lr", "momentum"), range(4), strict=True):
        shown = {row[column].removeprefix("★ ") for row in rows}
        # Adam has no momentum: its rows say so
        expected = set(AXIS_TEXT[axis].values()) | ({"n/a"} if axis == "momentum" else set())
        assert shown == expected, (axis, shown)
    assert {row[4] for row in rows} == {"rmsprop optax", "rmsprop tf1", "adam"}
    if width < 120:
        note = re.search(r"Left out at (\d+) columns: (.*?) \(", " ".join(first_table.split()))
        assert note and int(note.group(1)) == width
        for column in ("loss curve", "eps-dom", "val loss"):
            assert (column in note.group(2)) == (column not in header), column


def test_constant_axes_move_into_the_title_which_wraps_between_phrases(tmp_path):
    meta = {**META, "seeds": [0], "data": {"name": "a_rather_long_dataset_name.npz", "train": 100, "val": 20}}
    path = write(tmp_path / "one.jsonl", [record(eps=e, lr=0.001, acc=a) for e, a in ((1e-8, 0.9), (1.0, 0.8))],
                 meta)
    out = run("report", path, columns=60)
    assert out.returncode == 0, out.stderr
    title = out.stdout.split("┏")[0].strip().splitlines()
    assert title[0].startswith("RMSProp (optax) sweep: task mlp,")
    joined = " ".join(title)
    assert "1 seed;" in joined and "seeds" not in joined
    assert joined.endswith("decay 0.9, lr 0.001")  # constant axes: in the title, not in columns
    assert all(line.endswith((",", ";")) for line in title[:-1])  # broken only between phrases
    header = cells(out.stdout)[0]
    assert "decay" not in header and "lr" not in header and "eps" in header


def test_titles_and_columns_name_the_optimizer_and_what_an_axis_means(tmp_path):
    adam = write(tmp_path / "adam.jsonl", [record(decay=d, optimizer="adam", acc=a) for d, a in ((0.9, 0.9),
                                                                                                 (0.999, 0.8))])
    out = run("report", adam)
    assert out.stdout.startswith("Adam sweep: ") and cells(out.stdout)[0][0] == "b2"
    sgd = write(tmp_path / "sgd.jsonl", [record(eps=e, optimizer=o, acc=0.9 - e / 10)
                                         for o in ("rmsprop", "sgd") for e in (1e-8, 1.0)])
    out = run("report", sgd)
    assert out.stdout.startswith("RMSProp (optax) and SGD sweep: ")
    assert [row[0] for row in cells(out.stdout)[1]].count("n/a") == 2  # sgd has no eps
    # as the runner writes them: an axis an optimizer does not use is null, each takes its own default
    mixed = [record(eps=e, decay=0.9, optimizer="rmsprop", acc=0.9 - e / 10) for e in (1e-8, 1.0)] + \
            [record(eps=e, decay=0.999, momentum=None, optimizer="adam", acc=0.8 - e / 10) for e in (1e-8, 1.0)] + \
            [record(eps=None, decay=None, optimizer="sgd", acc=0.85)]
    path = write(tmp_path / "mixed.jsonl", mixed)
    out = run("report", path, columns=120)
    assert out.returncode == 0, out.stderr
    assert " ".join(out.stdout.split()).startswith("RMSProp (optax), Adam and SGD sweep: task mlp, data digits "
                                                   "(1438 train / 359 val), 440 steps, batch 32, 3 seeds; "
                                                   "decay 0.9 (RMSProp), b2 0.999 (Adam), lr 0.01")
    header, rows = cells(out.stdout)
    assert header[:2] == ["eps", "optimizer"] and [row[0] for row in rows][-1] == "n/a"
    assert "None" not in out.stdout
    pytest.importorskip("matplotlib")
    plot = run("plot", path, "-o", tmp_path / "mixed.png")
    assert plot.returncode == 0 and "3 heatmaps (one per update rule)" in plot.stderr, plot.stderr


def test_one_number_format_everywhere_and_where_reads_it_back(wide):
    out = run("report", wide, "--where", "lr=0.2683", "--where", "eps=7.197e-8", columns=200)
    assert out.returncode == 0, out.stderr
    assert "lr 0.2683" in out.stdout and "eps 7.197e-8" in out.stdout  # copied from the table: it matches
    assert "showing 12 of 72" in out.stdout
    assert "±0.00030 " in out.stdout  # std: 2 significant digits in the column's notation, never ±0.000
    assert "±0.000 " not in out.stdout
    missing = run("report", wide, "--where", "lr=0.5")
    assert missing.returncode == 2
    assert missing.stderr == "epsweep: error: --where: no settings match (lr in the file: 0.01, 0.2683)\n"
    # the shown precision, no more: 0.268 is not 0.268347
    assert run("report", wide, "--where", "lr=0.268").returncode == 2
    assert run("report", wide, "--where", "eps_dominated_mean=0.250", "-f", "csv").returncode == 0


def test_one_format_per_column(tmp_path):
    rows = [record(eps=1e-8, final_loss=6.597e5), record(eps=1.0, final_loss=74440.1875)]
    out = run("report", write(tmp_path / "big.jsonl", rows))
    assert [row[1].split("±")[0] for row in cells(out.stdout)[1]] == ["6.597e5", "7.444e4"]


def test_markdown_is_a_github_table_with_every_column_and_literal_text(tmp_path):
    rows = [record(eps=1e-8, convention="a|b [/x] *c*", acc=0.9), record(eps=1.0, convention="optax", acc=0.8)]
    out = run("report", write(tmp_path / "md.jsonl", rows), "-f", "markdown", columns=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("**RMSProp sweep: task mlp, data digits")
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| eps | convention | final loss | val loss | val acc | eps-dom |"
    assert table[1] == "|---:|:---|---:|---:|---:|---:|"
    assert r"a\|b \[/x\] \*c\*" in table[2] and table[2].startswith("| ★ 1e-8 |")
    assert all(line.count("|") - line.count(r"\|") == 7 for line in table[:4])  # the records table
    grid = run("grid", "--task", "quadratic", "--steps", "5", "-f", "markdown", "-q")
    assert grid.returncode == 0 and grid.stdout.splitlines()[2] == "| eps | final loss | eps-dom |"


def test_compare_two_sweeps(tmp_path):
    a = write(tmp_path / "a.jsonl", [record(eps=e, lr=lr, acc=0.9) for e in (1e-8, 1e-4) for lr in (0.01, 0.1)])
    b = write(tmp_path / "b.jsonl", [record(eps=e, lr=lr, acc=0.95 if e == 1e-8 else 0.85)
                                     for e in (1e-8, 1e-4, 1.0) for lr in (0.1,)])
    out = run("compare", a, b, columns=120)
    assert out.returncode == 0, out.stderr
    assert " ".join(out.stdout.split()).startswith(f"2 settings in both: A = {a} (RMSProp (optax) sweep), B = {b}")
    rows = {row[0]: row[1:] for row in cells(out.stdout)[1]}
    assert rows["1e-8"][:3] == ["0.9000", "0.9500", "+0.05000"] and rows["1e-4"][2] == "-0.05000"
    assert "2 settings only in A, 1 only in B" in " ".join(out.stdout.split())
    assert "Only in A: decay 0.9, lr 0.01" in out.stdout and "Only in B: decay 0.9, lr 0.1" in out.stdout
    assert cells(out.stdout.split("Only in B")[1])[1] == [["1e0", "0.8500"]]  # eps as in both sweeps
    document = json.loads(run("compare", a, b, "-f", "json").stdout)
    assert len(document["shared"]) == 2 and len(document["only_a"]) == 2 and len(document["only_b"]) == 1
    shared = {row["eps"]: row for row in document["shared"]}
    assert shared[1e-8]["diff_val_accuracy"] == pytest.approx(0.95 - 0.9)
    assert run("compare", a, b, "--where", "lr=0.1", "-f", "csv").stdout.count("\n") == 3  # header + 2
    assert run("compare", a, tmp_path / "none.jsonl").returncode == 2


def test_compare_says_every_difference_the_data_first_or_how_many_more():
    from epsweep.results.compare import by_weight
    from epsweep.results.guard import differences
    from epsweep.views.summaries import differences_note

    task = {"task": "Net", "model": "Net", "parameters": 10, "model_fingerprint": "0e94d6", "loss": "mse"}
    a = {"task": task, "data_fingerprint": "1", "train": {"steps": 3}, "seeds": [0]}
    b = {"task": {**task, "task": "Bin", "model": "Bin", "parameters": 5, "model_fingerprint": "8e11df",
                  "loss": "cross_entropy"}, "data_fingerprint": "2", "train": {"steps": 4}, "seeds": [0, 1]}
    phrases = by_weight(differences(a, b, sides=("in A", "in B")))
    assert [p.split()[0] for p in phrases] == ["the", "loss", "steps", "seeds", "task", "model", "parameters",
                                               "model_fingerprint"]
    assert differences_note(phrases).count(";") == 7  # markdown, or no width: all of them
    note = differences_note(phrases, width=80)
    assert note.startswith("The runs differ: the data's contents differ; loss") and len(note) <= 240
    assert note.endswith("more (the json format lists all).") and "model_fingerprint" not in note
    from epsweep.results.guard import in_brief  # one error line (resume, a file not replaced): the first two

    assert in_brief(a, b) == 'the data\'s contents differ; loss "mse" in the file, "cross_entropy" now; and 6 more'


def test_random_values_are_seeded_sorted_and_documented():
    from epsweep.grid import parse_values

    out = run("grid", "--task", "quadratic", "--steps", "5", "--eps", "rand:log:1e-10:1:6", "-f", "jsonl", "-q")
    assert out.returncode == 0, out.stderr
    eps = [json.loads(line)["eps"] for line in out.stdout.splitlines()]
    assert eps == sorted(eps) and len(set(eps)) == 6 and all(1e-10 <= e <= 1 for e in eps)
    rng = np.random.Generator(np.random.PCG64(0))  # the documented stream: seed 0, log-uniform
    assert eps == pytest.approx(sorted(10 ** (-10 + 10 * rng.random(6))), rel=1e-12)
    assert parse_values(["rand:lin:0.8:0.99:3:7"], "decay") != parse_values(["rand:lin:0.8:0.99:3"], "decay")
    bad = run("grid", "--eps", "rand:exp:1:2:3")
    assert bad.returncode == 2 and "rand:log:START:STOP:COUNT[:SEED]" in bad.stderr
    docs = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    assert "rand:log:1e-10:1:64" in docs


def test_progress_in_a_terminal_ticks_while_compiling():
    """stderr on a pseudo-terminal: a compiling phase, run-steps, finished settings, eta, in 80
    columns."""
    import pty

    leader, follower = pty.openpty()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "80", "TERM": "xterm"}
    process = subprocess.Popen([EXE, "grid", "--task", "quadratic", "--steps", "7", "--eps", "1e-8", "1",
                                "--decay", "0.8", "--no-compile-cache"], stdout=subprocess.PIPE, stderr=follower,
                               env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    process.wait(timeout=300)
    os.close(leader)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert process.returncode == 0
    assert "optax (compiling)" in screen and "/14 run-steps 0/2 finished eta -:--:--" in screen
    assert re.search(r"finished eta 0:00:0\d", screen) and "…" not in screen  # nothing cut at 80 columns
    assert "trained 2 settings x 1 seed x 7 steps" in screen


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["grid", "--help"], ["grid", "--eps", "abc"],
                                  ["report", "{file}"], ["compare", "{file}", "{file}"], ["report", "{file}",
                                                                                         "-f", "markdown"]])
def test_commands_that_train_nothing_never_import_jax(args, tmp_path):
    path = write(tmp_path / "r.jsonl", [record(eps=1e-8), record(eps=1.0, acc=0.5)])
    args = [a.format(file=path) for a in args]
    out = subprocess.run([sys.executable, "-X", "importtime", EXE, *args], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"}, timeout=60)
    modules = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()
               if line.startswith("import time:")}
    assert "epsweep" in modules and "jax" not in modules and "jaxlib" not in modules, args
    assert out.returncode == (2 if "abc" in args else 0), out.stderr[-500:]


def test_version_and_shell_completion():
    from importlib.metadata import version

    assert run("--version").stdout == f"epsweep {version('epsweep')}\n"
    # Typer detects the shell from the process tree (a flag), unless told to take its name
    completion = run("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert completion.returncode == 0 and "_epsweep_completion" in completion.stdout, completion.stderr
    assert "--install-completion" in run("--help").stdout


def test_every_option_has_help_and_a_plain_metavar():
    import typer.main

    from epsweep.cli import main  # noqa: F401  (registers the commands)
    from epsweep.cli.app import app

    group = typer.main.get_command(app)
    assert "..." not in run("--help", columns=80).stdout.split("Commands:")[1]
    for name, command in group.commands.items():
        for param in command.params:
            if param.name == "help":
                continue
            assert (param.help or "").strip(), f"{name} {param.opts}: no help"
            metavar = param.metavar or ""
            assert not re.search(r"[<>{}\[\]]|list", metavar), f"{name} {param.opts}: metavar {metavar!r}"
        text = run(name, "--help", columns=100).stdout
        assert "<" not in text.split("Options:")[0].split("Arguments:")[-1] and "{" not in text.splitlines()[0]


def test_user_text_is_shown_literally(tmp_path):
    title = "[v2] $x^2$ [/x] :smile: $\\nope{$"  # mathtext would fail to parse this, Rich markup to close [/x]
    meta = {**META, "title": title}
    rows = [record(eps=1e-8, convention="[/]", acc=0.9), record(eps=1.0, convention="$a_b$", acc=0.8)]
    path = write(tmp_path / "[odd] name.jsonl", rows, meta)
    out = run("report", path, columns=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(title) and "[/]" in out.stdout and "$a_b$" in out.stdout
    markdown = run("report", path, "-f", "markdown").stdout
    assert markdown.startswith("**\\[v2\\] \\$x^2\\$ \\[/x\\] :smile: \\$\\\\nope{\\$: decay 0.9")
    pytest.importorskip("matplotlib")
    plot = run("plot", path, "-o", tmp_path / "p.png")
    assert plot.returncode == 0 and plot.stderr.startswith("wrote "), plot.stderr
    (tmp_path / "[").mkdir()
    npz = tmp_path / "[" / "x] v[2].npz"  # a path holding [/x]
    named = write(tmp_path / "named.jsonl", rows, {**META, "data": {"name": "[bold]z[/]", "train": 9, "val": 3}})
    assert "data [bold]z[/] (9 train / 3 val)" in " ".join(run("report", named, columns=200).stdout.split())
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.random((40, 8, 8, 1), dtype=np.float32), y=np.arange(40) % 4)
    grid = run("grid", "--dataset", npz, "--steps", "3", "--batch-size", "8", "--eps", "1e-8", columns=150)
    assert grid.returncode == 0, grid.stderr
    assert f"data {npz} (32 train / 8 val)" in " ".join(grid.stdout.split())


def test_collapsed_and_chance_settings_are_flagged_and_never_starred(tmp_path):
    rows = [record(eps=1e-8, acc=0.99, collapsed=True, collapsed_seeds=2),
            record(eps=1e-4, acc=0.12, at_chance=True),
            record(eps=1.0, acc=0.95)]
    out = run("report", write(tmp_path / "mixed.jsonl", rows), columns=140)
    status = {row[0]: row[-1] for row in cells(out.stdout)[1]}
    assert status == {"1e-8": "collapsed (2/3 seeds)", "1e-4": "at chance", "★ 1e0": ""}
    none = [record(eps=e, acc=0.11, at_chance=True) for e in (1e-8, 1.0)]
    out = run("report", write(tmp_path / "chance.jsonl", none), columns=100)
    assert "★" not in out.stdout
    assert "No setting beats chance (guessing the most common class scores 0.1003); nothing is starred." in \
        " ".join(out.stdout.split())
    assert "all 1 diverged, collapsed or at chance" in out.stdout  # best per axis value: none usable
    beaten = [record(eps=1e-8, acc=0.8, collapsed=True, collapsed_seeds=1), none[1]]  # a collapsed one beats it
    out = run("report", write(tmp_path / "beaten.jsonl", beaten), columns=100)
    assert "No setting trained without diverging, collapsing or ending at chance; nothing is starred." in \
        " ".join(out.stdout.split())


def test_collapse_and_chance_rules():
    from epsweep.results.records import chance_level, fold_seeds

    labels = np.array([0] * 60 + [1] * 20 + [2] * 20)
    chance = chance_level(labels)
    assert chance["accuracy"] == 0.6 and chance["threshold"] == pytest.approx(0.6 + 2 * (0.6 * 0.4 / 100) ** 0.5)
    metrics = {name: np.array([0.5, 0.5]) for name in
               ("final_loss", "val_loss", "val_accuracy", "eps_dominated", "eps_dominated_mean", "effective_lr")}
    down = np.array([[2.3, 1.0, 0.5], [2.3, 1.2, 0.6]])
    up = np.array([[2.3, 1.0, 2.6], [2.3, 1.2, 0.6]])  # seed 0 ended 13 % above where it started
    flat = np.array([[2.3, 2.3, 2.35], [2.3, 2.3, 2.3]])  # 2 %: noise, not a collapse
    alive = np.array([-1, -1])
    assert not fold_seeds({}, metrics, alive, down, chance=0.2)["collapsed"]
    folded = fold_seeds({}, metrics, alive, up, chance=0.2)
    assert folded["collapsed"] and folded["collapsed_seeds"] == 1 and not folded["at_chance"]
    assert not fold_seeds({}, metrics, alive, flat)["collapsed"]
    assert fold_seeds({}, metrics, alive, down, chance=chance["threshold"])["at_chance"]  # 0.5 <= 0.698


def test_eps_dom_is_the_share_averaged_over_training_in_the_records_unit(tmp_path):
    rows = [record(eps=1e-8, eps_dominated=1.0, eps_dominated_mean=0.0197), record(eps=1.0, eps_dominated_mean=1.0)]
    out = run("report", write(tmp_path / "dom.jsonl", rows), columns=120)
    header, rows = cells(out.stdout)
    assert header[-1] == "eps-dom" and [row[-1] for row in rows] == ["0.020", "1.000"]
    assert "averaged over training" in run("grid", "--help").stdout
