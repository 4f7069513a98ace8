"""`epsweep inception`: a real sweep through the installed executable on an ImageFolder tree
written with Pillow (corrupt file included), image loading, presets, and clean failures."""

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from epsweep.cli import main
from epsweep.data.images import load_image_dataset, load_image_folder
from epsweep.errors import UserError
from epsweep.presets import PRESETS, apply_preset

EXE = shutil.which("epsweep", path=str(Path(sys.executable).parent)) or shutil.which("epsweep")


def write_image_folder(root: Path, per_class: int = 5, corrupt: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(("ants", "bees")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.uniform(0, 1, (60 + 10 * i, 80, 3)) * (120 + 120 * c)).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / (f"{i}.png" if i % 2 else f"{i}.jpg"))
    if corrupt:
        (root / "bees" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return root


def test_image_folder_decodes_resizes_and_skips_corrupt(tmp_path):
    warnings = []
    x, y, classes = load_image_folder(write_image_folder(tmp_path / "imgs"), 75, warn=warnings.append)
    assert classes == ["ants", "bees"] and x.shape == (10, 75, 75, 3) and x.dtype == np.uint8
    assert y.tolist() == [0] * 5 + [1] * 5
    assert len(warnings) == 1 and "broken.jpg" in warnings[0]


def test_nothing_readable_is_a_user_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 1 images could be read"):
        load_image_folder(tmp_path, 75)
    assert main(["inception", "--dataset", str(tmp_path), "--image-size", "75", "--steps", "1"]) == 2


def test_builtin_digits_become_rgb_images():
    data = load_image_dataset("digits", 75, 0.2)
    assert data.x_train.shape == (1438, 75, 75, 3) and data.x_train.dtype == np.uint8 and data.num_classes == 10


def test_preset_fills_only_what_is_not_given():
    given = {k: None for k in PRESETS["szegedy2016"]}
    assert apply_preset("szegedy2016", given) == PRESETS["szegedy2016"]
    assert apply_preset("szegedy2016", {**given, "eps": (1e-8,)})["eps"] == (1e-8,)
    assert apply_preset(None, {"eps": None}) == {"eps": None}
    with pytest.raises(UserError, match="unknown preset"):
        apply_preset("hinton2012", given)


@pytest.mark.parametrize("args, message", [
    (["--image-size", "64"], "needs at least 75"),
    (["--image-size", "75", "--aux"], "needs --image-size >= 299"),
    (["--image-size", "75", "--freeze-base"], "--freeze-base needs --weights"),
    (["--image-size", "75", "--weights", "/no/such.safetensors"], "no such file"),
    (["--image-size", "75", "--weights", "/"], "--weights: / is a directory, not a .safetensors file"),
    (["--image-size", "75", "--head", "conv"], "unknown head"),
    (["--image-size", "75", "--dtype", "float16"], "unknown dtype"),
    (["--image-size", "75", "--preset", "nope"], "unknown preset"),
    (["--image-size", "75", "--lr-decay-epochs", "2"], "needs --lr-decay-rate"),
    (["--dataset", "/no/such/dir"], "no such file or directory"),
])
def test_bad_inception_input_exits_2(args, message, capsys):
    assert main(["inception", "--dataset", "synthetic", "--steps", "1", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_frozen_parameters_never_move(mlp_task):
    """The engine's trainable mask (``Task.trainable``) on a small task."""
    import dataclasses

    from epsweep.engine.driver import train_runs
    from epsweep.engine.spec import TrainSpec

    frozen = dataclasses.replace(mlp_task, trainable=lambda params: {"Dense_0": {"bias": False, "kernel": False},
                                                           "Dense_1": {"bias": True, "kernel": True}})
    h = {"eps": np.array([1e-8]), "lr": np.array([1e-2]), "decay": np.array([0.9]), "momentum": np.array([0.0])}
    settings = TrainSpec(steps=10, batch_size=16, curve_points=5)
    free_out = train_runs(mlp_task, settings, h, np.array([0]))
    frozen_out = train_runs(frozen, settings, h, np.array([0]))
    assert frozen_out.curve[0, 0, -1] > free_out.curve[0, 0, -1]  # learns less with the first layer frozen
    assert frozen_out.curve[0, 0, -1] < frozen_out.curve[0, 0, 0]  # but the head still learns


@pytest.mark.skipif(EXE is None, reason="epsweep executable not installed")
def test_real_sweep_two_settings_two_steps_at_75(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([EXE, "inception", "--dataset", str(root), "--image-size", "75", "--eps", "1e-8", "1",
                          "--steps", "2", "--batch-size", "2", "--val-split", "0.2", "-f", "csv"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [float(r["eps"]) for r in rows] == [1e-8, 1.0]
    assert all(r["diverged"] == "False" and float(r["final_loss"]) > 0 for r in rows)
    assert rows[0]["final_loss"] != rows[1]["final_loss"]  # eps changed the training
    assert "skipping unreadable image" in out.stderr and "broken.jpg" in out.stderr
    assert "Traceback" not in out.stderr


def test_pretrained_constants_seed_fresh_head(tmp_path):
    """--weights: file leaves are used as loaded; the new head is initialised per seed. With
    --freeze-base the base goes to the feature extractor and only the head is initialised."""
    timm = pytest.importorskip("reference").import_timm()
    if timm is None:
        pytest.skip("timm not installed")
    import safetensors.torch

    from epsweep.data import split
    from epsweep.tasks.inception import InceptionOptions, inception_task

    reference = timm.create_model("inception_v3", num_classes=1000)
    safetensors.torch.save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    x = np.zeros((6, 75, 75, 3), np.uint8)
    data = split("tiny", x, np.array([0, 1, 2, 0, 1, 2], np.int32), 0.0)
    task = inception_task(data, InceptionOptions(weights=tmp_path / "w.safetensors"))
    init = jax.jit(task.init)
    params_a, stats_a = init(jax.random.key(0), task.constants)
    params_b, _ = init(jax.random.key(1), task.constants)
    conv = reference.state_dict()["Conv2d_1a_3x3.conv.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(params_a["Conv2d_1a_3x3"]["conv"]["kernel"]), conv)
    np.testing.assert_array_equal(np.asarray(params_a["Mixed_7c"]["branch1x1"]["conv"]["kernel"]),
                                  np.asarray(params_b["Mixed_7c"]["branch1x1"]["conv"]["kernel"]))
    assert params_a["fc"]["kernel"].shape == (2048, 3)  # 3 classes: a fresh head, not the file's 1000
    assert not np.allclose(params_a["fc"]["kernel"], params_b["fc"]["kernel"])

    frozen = inception_task(data, InceptionOptions(weights=tmp_path / "w.safetensors", freeze_base=True))
    np.testing.assert_array_equal(frozen.features.constants["params"]["Conv2d_1a_3x3"]["conv"]["kernel"], conv)
    assert "fc" not in frozen.features.constants["params"] and frozen.trainable is None
    head_a, state = jax.jit(frozen.init)(jax.random.key(0), frozen.constants)
    assert set(head_a) == {"fc"} and state == {}
    np.testing.assert_array_equal(head_a["fc"]["kernel"], params_a["fc"]["kernel"])  # the same fresh head
