"""Inception-v3: parameter counts, shapes, head mask, weight loading and parity with timm.

Shapes and counts use jax.eval_shape (no compilation, no random init of 24M params); the
only compiled forwards are 75x75 passes against timm (float64, float32, bfloat16) and the
small aux block.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from safetensors.numpy import save_file

from epsweep.models.inception import InceptionAux, InceptionV3, head_mask, is_head_param
from epsweep.models.inception_weights import load_inception_safetensors, torch_state_shapes

TIMM_PARAM_COUNTS = {False: 23_834_568, True: 27_161_264}  # sum(p.numel()) of timm inception_v3


def abstract_variables(model, size=75):
    """Variable shapes of ``model`` without running its init."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# --- architecture -------------------------------------------------------------------------


@pytest.mark.parametrize("aux_logits", [False, True])
def test_param_count_matches_timm(aux_logits):
    variables = abstract_variables(InceptionV3(num_classes=1000, aux_logits=aux_logits))
    assert count(variables["params"]) == TIMM_PARAM_COUNTS[aux_logits]
    assert set(variables) == {"params", "batch_stats"}
    assert ("AuxLogits" in variables["batch_stats"]) == aux_logits


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("aux_logits", [False, True])
@pytest.mark.parametrize("size", [75, 299])
def test_output_shapes(size, aux_logits, head):
    model = InceptionV3(num_classes=7, aux_logits=aux_logits, head=head)
    variables = abstract_variables(model, size)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)

    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert (logits.shape, logits.dtype) == ((2, 7), jnp.float32)

    def train_step(v, x):
        return model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])

    if aux_logits and size < 299:
        with pytest.raises(ValueError, match="AuxLogits needs"):
            jax.eval_shape(train_step, variables, x)
        return
    outputs, updates = jax.eval_shape(train_step, variables, x)
    if aux_logits:
        assert [o.shape for o in outputs] == [(2, 7), (2, 7)]
    else:
        assert outputs.shape == (2, 7)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


def test_rejects_input_below_75():
    model = InceptionV3(num_classes=3)
    with pytest.raises(ValueError, match="at least 75x75"):
        abstract_variables(model, 74)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_head_mask_selects_classifiers(head):
    params = abstract_variables(InceptionV3(num_classes=1000, aux_logits=True, head=head))["params"]
    mask = head_mask(params)
    pairs = zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
    head_size = sum(int(np.prod(p.shape)) for p, m in pairs if m)
    aux_fc = 768 * 1000 + 1000
    classifier = 2048 * 1000 + 1000 if head == "linear" else 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    assert head_size == aux_fc + classifier
    assert is_head_param(("params", "AuxLogits", "fc", "kernel"))
    assert not is_head_param(("AuxLogits", "conv1", "conv", "kernel"))
    assert not is_head_param(("Mixed_7c", "branch_pool", "bn", "scale"))


def test_bfloat16_computes_in_bf16_with_float32_params():
    model = InceptionV3(num_classes=5, aux_logits=True, dtype=jnp.bfloat16)
    variables = abstract_variables(model, 299)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).as_text()
    assert "bf16" in hlo and "convolution" in hlo
    (logits, aux), _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]),
        variables,
        x,
    )
    assert logits.dtype == aux.dtype == jnp.float32


# --- weight loading without torch ------------------------------------------------------------

SYNTHETIC_CLASSES = 10


@pytest.fixture(scope="module")
def synthetic_state():
    """A torch-layout state dict (zeros, plus a recognisable first conv) for num_classes=10 + aux."""
    model = InceptionV3(num_classes=SYNTHETIC_CLASSES, aux_logits=True)
    state = {key: np.zeros(shape, np.float32) for key, shape in torch_state_shapes(abstract_variables(model)).items()}
    state["Conv2d_1a_3x3.conv.weight"] = np.arange(32 * 3 * 3 * 3, dtype=np.float32).reshape(32, 3, 3, 3)
    state["fc.weight"] = np.arange(SYNTHETIC_CLASSES * 2048, dtype=np.float32).reshape(SYNTHETIC_CLASSES, 2048)
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.zeros((), np.int64)
    return state


def save_variant(tmp_path, state, drop=(), **replace):
    """Write ``state`` minus ``drop`` with entries replaced/added (``__`` in names = '.')."""
    variant = {k: v for k, v in state.items() if k not in drop}
    variant.update({name.replace("__", "."): value for name, value in replace.items()})
    path = tmp_path / "weights.safetensors"
    save_file(variant, str(path))
    return path


def test_load_transposes_into_abstract_variables(tmp_path, synthetic_state):
    model = InceptionV3(num_classes=SYNTHETIC_CLASSES, aux_logits=True)
    path = save_variant(tmp_path, synthetic_state)
    variables, report = load_inception_safetensors(path, abstract_variables(model))
    kernel = np.asarray(variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"])
    np.testing.assert_array_equal(kernel, synthetic_state["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(variables["params"]["fc"]["kernel"]), synthetic_state["fc.weight"].T)
    assert len(report.loaded) == len(synthetic_state) - 1 and report.kept_init == ()
    assert report.ignored == ("Conv2d_1a_3x3.bn.num_batches_tracked",)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_load_keeps_fresh_head_for_other_classes(tmp_path, synthetic_state, head):
    model = InceptionV3(num_classes=3, aux_logits=False, head=head)
    abstract = abstract_variables(model)
    # Only the head needs real initial values; mark them to see that they survive.
    params = jax.tree.map(
        lambda leaf, is_head: jnp.full(leaf.shape, 7.0) if is_head else leaf,
        abstract["params"],
        head_mask(abstract["params"]),
    )
    path = save_variant(tmp_path, synthetic_state)
    variables, report = load_inception_safetensors(path, {**abstract, "params": params})
    head_names = {"linear": ["fc"], "mlp": ["head_hidden", "head_out"]}[head]
    for name in head_names:
        assert all(np.all(np.asarray(leaf) == 7.0) for leaf in jax.tree.leaves(variables["params"][name]))
    assert {key.split(".")[0] for key in report.kept_init} == set(head_names)
    assert {"fc.weight", "AuxLogits.fc.weight", "AuxLogits.conv1.bn.running_var"} <= set(report.ignored)
    assert count(variables["params"]) == count(abstract["params"])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(drop=("Mixed_6b.branch7x7_2.conv.weight",)), "missing keys Mixed_6b.branch7x7_2.conv.weight"),
        (
            dict(Conv2d_1a_3x3__conv__weight=np.zeros((32, 3, 5, 5), np.float32)),
            r"shape mismatch for Conv2d_1a_3x3.conv.weight file \(32, 3, 5, 5\) vs model \(32, 3, 3, 3\)",
        ),
        (dict(Mixed_8a__conv__weight=np.zeros((1,), np.float32)), "unexpected keys Mixed_8a.conv.weight"),
        (dict(Conv2d_1a_3x3__conv__weight=np.full((32, 3, 3, 3), np.nan, np.float32)),
         "NaN or infinite values in Conv2d_1a_3x3.conv.weight"),
        (dict(Conv2d_2a_3x3__bn__running_var=np.full(32, np.inf, np.float32)),
         "NaN or infinite values in Conv2d_2a_3x3.bn.running_var"),
        (dict(Conv2d_1a_3x3__conv__weight=np.ones((32, 3, 3, 3), np.int8)),
         "Conv2d_1a_3x3.conv.weight holds int8 values; weights must be floating point"),
        (dict(Conv2d_1a_3x3__bn__weight=np.ones(32, bool)), "Conv2d_1a_3x3.bn.weight holds bool values"),
    ],
    ids=["missing", "shape", "unexpected", "nan", "inf", "int8", "bool"],
)
def test_load_errors_name_file_and_key(tmp_path, synthetic_state, change, message):
    model = InceptionV3(num_classes=SYNTHETIC_CLASSES, aux_logits=True)
    path = save_variant(tmp_path, synthetic_state, **change)
    with pytest.raises(ValueError, match=message) as error:
        load_inception_safetensors(path, abstract_variables(model))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_load_casts_half_bfloat16_and_double_weights(tmp_path, synthetic_state):
    import ml_dtypes

    model = InceptionV3(num_classes=SYNTHETIC_CLASSES, aux_logits=True)
    path = save_variant(tmp_path, synthetic_state, Conv2d_1a_3x3__conv__weight=np.full((32, 3, 3, 3), 0.5, np.float16),
                        Conv2d_1a_3x3__bn__weight=np.full(32, 1.5, ml_dtypes.bfloat16),
                        Conv2d_1a_3x3__bn__bias=np.full(32, 0.25, np.float64))
    variables, _ = load_inception_safetensors(path, abstract_variables(model))
    block = variables["params"]["Conv2d_1a_3x3"]
    for leaf, value in ((block["conv"]["kernel"], 0.5), (block["bn"]["scale"], 1.5), (block["bn"]["bias"], 0.25)):
        assert leaf.dtype == np.float32 and np.all(leaf == value)


def test_load_errors_on_unreadable_file_and_abstract_head(tmp_path, synthetic_state):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    model = InceptionV3(num_classes=SYNTHETIC_CLASSES)
    with pytest.raises(ValueError, match="cannot read as safetensors"):
        load_inception_safetensors(bad, abstract_variables(model))
    other_classes = abstract_variables(InceptionV3(num_classes=4))
    with pytest.raises(ValueError, match=r"fc\.(bias|weight), fc\.(bias|weight) not loadable from the file"):
        load_inception_safetensors(save_variant(tmp_path, synthetic_state), other_classes)


# --- parity with timm -------------------------------------------------------------------------


def import_timm():
    """timm (see tests/reference.py for the torchvision workaround), or skip the test."""
    timm = reference.import_timm()
    if timm is None:
        pytest.skip("timm/torch not installed")
    return timm


PARITY_CLASSES = 10
PARITY_IMAGES = np.random.default_rng(0).normal(size=(2, 75, 75, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def timm_reference(tmp_path_factory):
    """A random timm inception_v3 (10 classes, aux) with calibrated, perturbed BatchNorm stats,
    saved as .safetensors, and its flax counterpart loaded from that file."""
    timm = import_timm()
    import torch
    from safetensors.torch import save_file as save_torch_file

    torch.manual_seed(0)
    reference = timm.create_model("inception_v3", num_classes=PARITY_CLASSES, aux_logits=True)
    batch_norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        # Non-trivial affine BN params; running stats from a train-mode batch that holds the test
        # images, so eval activations stay O(1) through 94 layers. The aux block cannot run at
        # 75x75, so its running stats are random.
        for bn in batch_norms:
            bn.weight.uniform_(0.8, 1.2)
            bn.bias.normal_(0.0, 0.1)
            bn.momentum = 1.0
        reference.train()
        reference.aux_logits = False
        calibration = np.concatenate([PARITY_IMAGES, np.random.default_rng(2).normal(size=(6, 75, 75, 3))])
        reference(torch.from_numpy(calibration.astype(np.float32).transpose(0, 3, 1, 2)))
        reference.aux_logits = True
        for bn in batch_norms:
            bn.momentum = 0.1
        for bn in (reference.AuxLogits.conv0.bn, reference.AuxLogits.conv1.bn):
            bn.running_mean.normal_(0.0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    reference.eval()

    path = tmp_path_factory.mktemp("timm") / "inception_v3.safetensors"
    save_torch_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = InceptionV3(num_classes=PARITY_CLASSES, aux_logits=True)
    variables, report = load_inception_safetensors(path, abstract_variables(model))
    assert report.kept_init == ()
    return reference, model, variables


def timm_logits(reference, images, dtype):
    """timm's eval logits without its aux block (timm runs it whenever aux_logits; it needs 299x299)."""
    import torch

    model = copy.deepcopy(reference).to(dtype)
    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2)).to(dtype)
        return model.forward_head(model.forward_postaux(model.forward_preaux(x))).numpy()


def test_logits_match_timm_float64(timm_reference):
    """Exact semantics: with both sides in float64 the random network's rounding noise vanishes."""
    import torch

    reference, model, variables = timm_reference
    expected = timm_logits(reference, PARITY_IMAGES, torch.float64)
    with jax.enable_x64(True):
        model64 = model.clone(dtype=jnp.float64)
        variables64 = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables)  # BN stats too
        forward = jax.jit(lambda v, x: model64.apply(v, x, train=False))
        logits = np.asarray(forward(variables64, PARITY_IMAGES.astype(np.float64)))
    assert logits.dtype == np.float64
    max_abs_diff = float(np.max(np.abs(logits - expected)))
    print(f"inception parity float64: max |logit| {np.max(np.abs(expected)):.3f}, max abs diff {max_abs_diff:.2e}")
    assert np.std(expected) > 0.1  # not a degenerate comparison
    assert max_abs_diff <= 1e-8


def test_logits_match_timm_float32(timm_reference):
    """float32: a random BatchNorm-ReLU net amplifies rounding by ~1.5x per layer, so timm itself
    is ~1e-3 off its own float64 result here; ours must be as close to timm as that."""
    import torch

    reference, model, variables = timm_reference
    expected = timm_logits(reference, PARITY_IMAGES, torch.float32)
    timm_rounding = float(np.max(np.abs(expected - timm_logits(reference, PARITY_IMAGES, torch.float64))))
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, PARITY_IMAGES))
    max_abs_diff = float(np.max(np.abs(logits - expected)))
    print(f"inception parity float32: max abs diff {max_abs_diff:.2e} (timm float32 vs float64: {timm_rounding:.2e})")
    assert max_abs_diff <= max(1e-4, 5 * timm_rounding)


def test_aux_logits_match_timm(timm_reference):
    import torch

    reference, _, variables = timm_reference
    mixed_6e = np.random.default_rng(1).normal(size=(1, 17, 17, 768)).astype(np.float32)
    with torch.no_grad():
        expected = reference.AuxLogits(torch.from_numpy(mixed_6e.transpose(0, 3, 1, 2))).numpy()
    aux_variables = {collection: tree["AuxLogits"] for collection, tree in variables.items()}
    aux = np.asarray(InceptionAux(PARITY_CLASSES).apply(aux_variables, mixed_6e, train=False))
    max_abs_diff = float(np.max(np.abs(aux - expected)))
    print(f"inception aux parity: max abs diff {max_abs_diff:.2e}")
    assert max_abs_diff <= 1e-4

    # The aux block is shallow enough for bfloat16 compute to stay close.
    aux_bf16 = InceptionAux(PARITY_CLASSES, dtype=jnp.bfloat16).apply(aux_variables, mixed_6e, train=False)
    assert aux_bf16.dtype == jnp.bfloat16
    assert np.max(np.abs(np.asarray(aux_bf16, np.float32) - expected)) <= 0.05 * np.max(np.abs(expected))


def test_aux_train_mode_matches_timm(timm_reference):
    """Train mode: batch statistics, and running stats updated with PyTorch's momentum 0.1.
    flax updates running_var with the biased batch variance, PyTorch with the unbiased one."""
    import torch

    reference, _, variables = timm_reference
    aux_reference = copy.deepcopy(reference.AuxLogits).train()
    mixed_6e = np.random.default_rng(3).normal(size=(2, 17, 17, 768)).astype(np.float32)
    with torch.no_grad():
        expected = aux_reference(torch.from_numpy(mixed_6e.transpose(0, 3, 1, 2))).numpy()
    aux_variables = {collection: tree["AuxLogits"] for collection, tree in variables.items()}
    aux, updates = InceptionAux(PARITY_CLASSES).apply(aux_variables, mixed_6e, train=True, mutable=["batch_stats"])
    assert np.max(np.abs(np.asarray(aux) - expected)) <= 1e-4

    for layer, samples in (("conv0", 2 * 5 * 5), ("conv1", 2 * 1 * 1)):
        torch_bn = getattr(aux_reference, layer).bn
        old_var = aux_variables["batch_stats"][layer]["bn"]["var"]
        new_stats = updates["batch_stats"][layer]["bn"]
        np.testing.assert_allclose(new_stats["mean"], torch_bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        # Undo the variance convention difference: torch adds 0.1 * unbiased, flax 0.1 * biased.
        batch_var = (np.asarray(new_stats["var"]) - 0.9 * np.asarray(old_var)) / 0.1
        corrected = 0.9 * np.asarray(old_var) + 0.1 * batch_var * samples / (samples - 1)
        np.testing.assert_allclose(corrected, torch_bn.running_var.numpy(), rtol=1e-4, atol=1e-6)


def test_bfloat16_forward_runs(timm_reference):
    _, model, variables = timm_reference
    bf16_model = model.clone(dtype=jnp.bfloat16)
    logits = jax.jit(lambda v, x: bf16_model.apply(v, x, train=False))(variables, PARITY_IMAGES[:1])
    assert logits.shape == (1, PARITY_CLASSES) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
