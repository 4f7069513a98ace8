"""Frozen-base Inception-v3 sweeps: epsweep against the loops a user would otherwise write.

Workload (the classic fine-tuning recipe): Inception-v3 base with stand-in pretrained weights
(:func:`epsweep.models.inception_weights.random_state`, no download), frozen in inference mode,
under the head GAP -> Dense(1024, ReLU) -> Dense(classes); RMSProp lr 1e-3, decay 0.9, batch
32, eps log-spaced from 1e-10 to 1; --images synthetic images of --image-size (a class-coloured
pattern plus noise), 80/20 split (data seed 0), one seed. Every contender runs in its own
process and is timed from process start to its final numbers (training loss, validation loss
and accuracy of every setting):

  epsweep G=16      ``epsweep inception --freeze-base --head mlp`` through the CLI, --epochs,
                    empty compilation and feature caches: one forward pass of the base over
                    every image, then the head swept over the cached features
  epsweep G=2       the same command at --small-grid settings and --small-epochs (target:
                    G=16 within 1.5x of it: the cost is the one forward pass)
  epsweep warm      the G=16 command again, both caches filled (a second sweep)
  keras loop        Keras 3 ``keras.applications.InceptionV3(weights=None, include_top=False,
                    pooling="avg")``, ``trainable = False``, the same head, ``model.fit`` per
                    setting (a fresh model each time), on the backend given by --keras-backend
  torch loop        PyTorch + timm ``inception_v3`` (the same weights file), base in eval mode
                    under ``torch.no_grad``, the same head, ``torch.optim.RMSprop`` per setting

The loops run the base forward for every batch of every epoch of every setting, as the Keras
and timm fine-tuning recipes write them (Keras's guide also shows the feature-extraction recipe,
features computed once and the head trained on them, which is what epsweep does: a Keras user
following it would pay the forward pass once too; the loops here are the plain recipe the
benchmark was specified with). Loops over more than --subset-above settings are timed on
--subset settings and extrapolated linearly (each setting builds its model and trains all
epochs alike), so the one-off costs of the measured setting (imports done, first calls) are
counted once per setting: a few seconds against several minutes a setting; such rows are
marked "extrapolated". The machine (CPU model name as lscpu
shows it, cores, GPUs) is recorded with the figures.

    python benchmarks/bench_frozen.py                              # table on stdout
    python benchmarks/bench_frozen.py --output benchmarks/results/frozen-cpu.json
    python benchmarks/bench_frozen.py --images 40 --image-size 75 --epochs 1 --grid 4   # smoke run

A contender whose framework is not installed is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import _check, _installed, _last_json, _log, eps_token, eps_values, machine, run_process  # noqa: E402

LR, DECAY, BATCH, HIDDEN, VAL_SPLIT = 1e-3, 0.9, 32, 1024, 0.2
HERE = Path(__file__).resolve()


def synthetic_images(n: int, size: int, classes: int, seed: int = 0):
    """uint8 (n, size, size, 3) images and labels: class c is a diagonal stripe pattern of its
    own colour and frequency, plus noise, so that a head on good features could learn it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    grid = np.add.outer(np.arange(size), np.arange(size)) / size
    colours = rng.uniform(40, 215, (classes, 3))
    images = np.empty((n, size, size, 3), np.uint8)
    for i, c in enumerate(labels):
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (2 + c) * grid + rng.uniform(0, 2 * np.pi))
        pixels = colours[c] * stripes[..., None] + rng.normal(0, 20, (size, size, 3))
        images[i] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)


# --- workers: each runs in its own process ------------------------------------------------


def _done(started: float, loop_s: float, settings: int, results: list, **extra) -> None:
    print(json.dumps({"loop_s": loop_s, "settings_timed": settings, "in_process_s": time.perf_counter() - started,
                      "results": results, **extra}))


def worker_keras(args) -> None:
    started = time.perf_counter()
    import keras
    import numpy as np

    data = np.load(args.data)
    size, classes = data["x_train"].shape[1], int(data["classes"])
    results = []
    loop_start = time.perf_counter()
    for eps in eps_values(args.grid)[: args.settings]:
        keras.utils.set_random_seed(0)
        base = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(size, size, 3),
                                              pooling="avg")
        base.trainable = False  # Keras: a frozen layer runs in inference mode
        inputs = keras.Input((size, size, 3))
        x = keras.layers.Rescaling(2.0 / 255.0, offset=-1.0)(inputs)
        x = base(x, training=False)
        x = keras.layers.Dense(HIDDEN, activation="relu")(x)
        model = keras.Model(inputs, keras.layers.Dense(classes)(x))
        model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=LR, rho=DECAY, epsilon=eps),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        history = model.fit(data["x_train"], data["y_train"], batch_size=BATCH, epochs=args.epochs, verbose=0)
        val_loss, accuracy = model.evaluate(data["x_val"], data["y_val"], batch_size=BATCH, verbose=0)
        results.append([float(history.history["loss"][-1]), float(val_loss), float(accuracy)])
    _done(started, time.perf_counter() - loop_start, len(results), results, backend=keras.backend.backend())


def worker_torch(args) -> None:
    started = time.perf_counter()
    import numpy as np
    import safetensors.torch
    import torch
    from torch import nn

    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from reference import import_timm  # timm next to the CPU build of torch

    timm = import_timm()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = np.load(args.data)
    classes = int(data["classes"])
    base = timm.create_model("inception_v3", num_classes=0)  # global average pool, no classifier
    state = {k: v for k, v in safetensors.torch.load_file(str(args.weights)).items() if not k.startswith("fc.")}
    base.load_state_dict(state, strict=False)
    base = base.to(device).eval()  # frozen in inference mode (Keras semantics)
    for p in base.parameters():
        p.requires_grad_(False)

    def batches(x, y, shuffle: bool, generator=None):
        order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
        for start in range(0, len(x), BATCH):
            index = order[start:start + BATCH].numpy()
            images = torch.from_numpy(x[index]).to(device).permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0
            yield images, torch.from_numpy(y[index].astype(np.int64)).to(device)

    x_train, y_train, x_val, y_val = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
    results = []
    loop_start = time.perf_counter()
    for eps in eps_values(args.grid)[: args.settings]:
        torch.manual_seed(0)
        head = nn.Sequential(nn.Linear(2048, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, classes)).to(device)
        optimizer = torch.optim.RMSprop(head.parameters(), lr=LR, alpha=DECAY, eps=eps)
        generator = torch.Generator().manual_seed(0)
        for _ in range(args.epochs):
            for images, labels in batches(x_train, y_train, True, generator):
                with torch.no_grad():
                    features = base(images)
                loss = nn.functional.cross_entropy(head(features), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            losses, correct = [], 0
            for images, labels in batches(x_val, y_val, False):
                logits = head(base(images))
                losses.append(nn.functional.cross_entropy(logits, labels, reduction="sum").item())
                correct += int((logits.argmax(-1) == labels).sum())
        results.append([loss.item(), sum(losses) / len(x_val), correct / len(x_val)])
    _done(started, time.perf_counter() - loop_start, len(results), results, threads=torch.get_num_threads(),
          device=device)


WORKERS = {"keras": worker_keras, "torch": worker_torch}


# --- the parent: prepares the data, runs every contender, reports ------------------------------


def _prepare(args, work: Path) -> tuple[Path, Path, Path, int]:
    """Images (.npz for epsweep, and the same split for the loops) and a weights file."""
    import numpy as np
    from safetensors.numpy import save_file

    from epsweep.data import split
    from epsweep.models.inception import InceptionV3
    from epsweep.models.inception_weights import random_state

    x, y = synthetic_images(args.images, args.image_size, args.classes)
    images = work / "images.npz"
    np.savez(images, x=x, y=y)
    data = split("synthetic", x, y, VAL_SPLIT, 0)  # what epsweep makes of images.npz
    loops = work / "split.npz"
    np.savez(loops, x_train=data.x_train, y_train=data.y_train, x_val=data.x_val, y_val=data.y_val,
             classes=data.num_classes)
    import jax

    model = InceptionV3(num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 75, 75, 3), np.float32), train=False))
    weights = work / "inception_v3.safetensors"
    save_file(random_state(shapes), str(weights))
    return images, loops, weights, len(data.x_train)


def _epsweep_row(label: str, cmd: list[str], env: dict, grid: int, epochs: int) -> dict:
    r = run_process(cmd, env)
    _check(r, label)
    out = json.loads(r["stdout"])
    meta = out["meta"]
    features = meta.get("features") or {}
    row = {"contender": label, "grid": grid, "epochs": epochs, "wall_s": r["wall_s"], "peak_rss_mib": r["peak_rss_mib"],
           "settings_timed": grid, "extrapolated": False, "compilations": meta["compilations"],
           "compile_s": meta.get("compile_time_s"), "train_s": meta.get("wall_time_s"),
           "features_s": features.get("seconds"), "features_source": features.get("source"),
           "settings_per_device": (meta.get("layout") or {}).get("settings_per_device"),
           "results": [[rec["final_loss"], rec["val_loss"], rec["val_accuracy"]] for rec in out["results"]],
           "command": " ".join(cmd[1:])}
    _log(f"{label}: {r['wall_s']:.1f} s (features {features.get('source')} in {features.get('seconds')} s, "
         f"{meta['compilations']} compilations)")
    return row


def measure(args) -> dict:
    exe = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")
    if exe is None:
        sys.exit("bench_frozen: the epsweep executable is not installed (pip install -e .)")
    work = Path(tempfile.mkdtemp(prefix="epsweep-bench-frozen-"))
    images, loops, weights, n_train = _prepare(args, work)
    report: dict = {
        "workload": {"images": args.images, "train": n_train, "image_size": args.image_size, "classes": args.classes,
                     "epochs": args.epochs, "grid": args.grid, "small_grid": args.small_grid,
                     "small_epochs": args.small_epochs, "batch": BATCH, "lr": LR, "decay": DECAY,
                     "head": f"GAP -> Dense({HIDDEN}, ReLU) -> Dense(classes)", "base": "frozen, inference mode"},
        "load_before": os.getloadavg(), "machine": machine(), "rows": []}  # the load before machine() times imports
    _log(f"machine: {report['machine']['cpu']}; {args.images} images of {args.image_size}x{args.image_size}")
    env = {"EPSWEEP_COMPILE_CACHE": str(work / "jax"), "EPSWEEP_FEATURE_CACHE": str(work / "features")}

    def command(grid: int, epochs: int) -> list[str]:
        return [exe, "inception", "--dataset", str(images), "--image-size", str(args.image_size), "--weights",
                str(weights), "--freeze-base", "--head", "mlp", "--eps", eps_token(grid), "--lr", str(LR), "--decay",
                str(DECAY), "--epochs", str(epochs), "--batch-size", str(BATCH), "--val-split", str(VAL_SPLIT),
                "-f", "json", "-q"]

    rows = report["rows"]
    small_env = {"EPSWEEP_COMPILE_CACHE": str(work / "jax-small"),  # cold too: caches of its own
                 "EPSWEEP_FEATURE_CACHE": str(work / "features-small")}
    rows.append(_epsweep_row(f"epsweep G={args.small_grid}", command(args.small_grid, args.small_epochs), small_env,
                             args.small_grid, args.small_epochs))
    rows.append(_epsweep_row(f"epsweep G={args.grid}", command(args.grid, args.epochs), env, args.grid, args.epochs))
    rows.append(_epsweep_row("epsweep warm", command(args.grid, args.epochs), env, args.grid, args.epochs))
    skip = set(args.skip)
    for name, module in (("torch", "timm"), ("keras", "keras")):
        if name not in skip and not _installed(module):
            _log(f"skipping the {name} loop: {module} is not installed")
            skip.add(name)
    for name in ("keras", "torch"):
        if name in skip:
            continue
        settings = args.grid if args.grid <= args.subset_above else min(args.subset, args.grid)
        cmd = [sys.executable, str(HERE), "--worker", name, "--grid", str(args.grid), "--settings", str(settings),
               "--epochs", str(args.epochs), "--data", str(loops), "--weights", str(weights)]
        r = run_process(cmd, {"KERAS_BACKEND": args.keras_backend} if name == "keras" else None)
        _check(r, f"{name} loop")
        w = _last_json(r["stdout"])
        startup = r["wall_s"] - w["loop_s"]
        row = {"contender": f"{name} loop", "grid": args.grid, "epochs": args.epochs,
               "wall_s": startup + w["loop_s"] * args.grid / settings, "peak_rss_mib": r["peak_rss_mib"],
               "settings_timed": settings, "extrapolated": settings < args.grid, "measured_wall_s": r["wall_s"],
               "startup_s": startup, "results": w["results"],
               **{k: w[k] for k in ("backend", "threads", "device") if k in w}}
        rows.append(row)
        note = f" (measured {settings} settings in {r['wall_s']:.1f} s, extrapolated)" if row["extrapolated"] else ""
        _log(f"{name} loop: {row['wall_s']:.1f} s{note}")
    report["load_after"] = os.getloadavg()
    shutil.rmtree(work, ignore_errors=True)
    return report


def summarize(report: dict) -> dict:
    """Ratios to the G=16 epsweep sweep, and the targets."""
    by = {r["contender"]: r for r in report["rows"]}
    w = report["workload"]
    main_row, small = by[f"epsweep G={w['grid']}"], by[f"epsweep G={w['small_grid']}"]
    for row in report["rows"]:
        row["vs_epsweep"] = row["wall_s"] / main_row["wall_s"]
        row["setting_epochs_per_s"] = row["grid"] * row["epochs"] / row["wall_s"]
    targets = [{"target": f"G={w['grid']}, {w['epochs']} epochs within 1.5x of G={w['small_grid']}, "
                          f"{w['small_epochs']} epoch(s) (value: the ratio)",
                "value": main_row["wall_s"] / small["wall_s"], "goal": 1.5,
                "met": main_row["wall_s"] / small["wall_s"] <= 1.5}]
    if "keras loop" in by:
        value = by["keras loop"]["wall_s"] / main_row["wall_s"]
        targets.append({"target": f"G={w['grid']}: epsweep vs keras loop", "value": value, "goal": 50,
                        "met": value >= 50})
    report["targets"] = targets
    return report


def table(report: dict) -> str:
    m, w = report["machine"], report["workload"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB" + (f", {m['gpus']}" if m["gpus"] else "")
             + f"; load {report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after",
             f"workload: Inception-v3, frozen base (inference mode), head {w['head']}; {w['images']} images of "
             f"{w['image_size']}x{w['image_size']} ({w['train']} train), {w['classes']} classes, batch {w['batch']}",
             "", "end to end (process start to final numbers)"]
    header = (f"{'contender':<14} {'G':>4} {'epochs':>6} {'wall s':>9} {'x epsweep':>9} {'set*ep/s':>9} "
              f"{'features s':>10} {'compile s':>9} {'peak MiB':>9}  note")
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        note = []
        if r["extrapolated"]:
            note.append(f"extrapolated from {r['settings_timed']} settings ({r['measured_wall_s']:.1f} s measured)")
        if r.get("features_source"):
            note.append(f"features {r['features_source']}")
        for key in ("backend", "device"):
            if r.get(key):
                note.append(f"{key} {r[key]}")
        features = "-" if r.get("features_s") is None else f"{r['features_s']:.1f}"
        compile_s = "-" if r.get("compile_s") is None else f"{r['compile_s']:.1f}"
        lines.append(f"{r['contender']:<14} {r['grid']:>4} {r['epochs']:>6} {r['wall_s']:>9.1f} "
                     f"{r['vs_epsweep']:>9.2f} {r['setting_epochs_per_s']:>9.3f} {features:>10} {compile_s:>9} "
                     f"{r['peak_rss_mib']:>9.0f}  " + "; ".join(note))
    lines += ["", "targets"]
    for t in report["targets"]:
        lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']:.2f} (goal {t['goal']:g})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="synthetic images (80%% train)")
    parser.add_argument("--image-size", type=int, default=299, help="pixels per side (>= 75)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the main sweep and of the loops")
    parser.add_argument("--grid", type=int, default=16, help="settings of the main sweep and of the loops")
    parser.add_argument("--small-grid", type=int, default=2, help="settings of the comparison sweep")
    parser.add_argument("--small-epochs", type=int, default=1, help="epochs of the comparison sweep")
    parser.add_argument("--skip", nargs="*", default=[], choices=["torch", "keras"], help="contenders to leave out")
    parser.add_argument("--keras-backend", default="jax", choices=["jax", "torch"], help="Keras 3 backend")
    parser.add_argument("--subset-above", type=int, default=2,
                        help="loops over more settings than this are timed on --subset and extrapolated")
    parser.add_argument("--subset", type=int, default=1, help="settings timed when extrapolating")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--output", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.subset < 1:
        parser.error("--subset must be at least 1")
    if args.worker:
        WORKERS[args.worker](args)
        return
    if args.image_size < 75 or args.images < 5:
        parser.error("--image-size must be at least 75 and --images at least 5")
    report = summarize(measure(args))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else table(report))


if __name__ == "__main__":
    main()
