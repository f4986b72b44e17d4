"""The training path's cheaper forms (mobilevit/fast_training.py, the NHWC patch helpers) against the
straightforward spelling: the loss, the outputs and every gradient. In float64 the two agree to rounding
(1e-6 and better), which shows the math is the same; in float32 they agree as float32 rounding allows, and
the first-step loss equals stock transformers' within 1e-5 (relative). Never asserts on time."""

import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from mobilevit import benchmark, fast_inference, fast_training
from mobilevit.patches import fold_patch_grid, fold_patches, is_channels_last, unfold_patch_grid, unfold_patches
from mobilevit.testing_utils import fill_realistic_weights_

CHANNELS_LAST = torch.channels_last


def reference_loss(logits, labels, align_corners, ignore_index):
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    return F.cross_entropy(upsampled, labels, ignore_index=ignore_index)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("logits_size, labels_size", [((12, 12), (96, 96)), ((13, 7), (100, 45)), ((16, 16), (16, 16))])
def test_upsampled_cross_entropy_is_interpolate_then_cross_entropy(align_corners, logits_size, labels_size):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, *logits_size, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (3, *labels_size), generator=generator)
    labels[0, :4] = 255  # ignored pixels
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = fast_training.upsampled_cross_entropy(ours, labels, align_corners, 255)
    expected = reference_loss(theirs, labels, align_corners, 255)
    loss.backward(), expected.backward()
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-14)


def test_upsampled_cross_entropy_runs_in_float32_under_autocast():
    logits = torch.randn(2, 4, 6, 6, requires_grad=True)
    labels = torch.randint(0, 4, (2, 24, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fast_training.upsampled_cross_entropy(logits.to(torch.bfloat16), labels, False, 255)
    assert loss.dtype == torch.float32
    expected = reference_loss(logits.to(torch.bfloat16).float(), labels, False, 255)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_training_layout_is_nhwc_only_for_a_training_model_on_cpu():
    model = torch.nn.Conv2d(3, 4, 1)
    pixels = torch.rand(2, 3, 8, 8)
    assert is_channels_last(fast_training.training_layout(model.train(), pixels))
    assert fast_training.training_layout(model.eval(), pixels) is pixels


@pytest.mark.parametrize("patch", [2, 3])
def test_patch_helpers_keep_nhwc_in_the_backward(patch):
    """Written through the NCHW view, the gradient of an NHWC map came back NCHW (and the kernels after it
    ran on mixed layouts); through the NHWC view it stays NHWC, with the same values either way."""
    features = torch.randn(2, 5, 3 * patch, 2 * patch, dtype=torch.float64)
    nhwc = features.contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    nchw = features.clone().requires_grad_()
    sequences = unfold_patches(nhwc, patch)
    torch.testing.assert_close(sequences, unfold_patches(nchw, patch), rtol=0, atol=0)
    (sequences * sequences).sum().backward()
    (unfold_patches(nchw, patch) ** 2).sum().backward()
    assert is_channels_last(nhwc.grad) and nchw.grad.is_contiguous()
    torch.testing.assert_close(nhwc.grad, nchw.grad, rtol=0, atol=0)

    nhwc.grad = None
    grid = unfold_patch_grid(nhwc, patch, channels_last=True)
    torch.testing.assert_close(grid, unfold_patch_grid(features, patch), rtol=0, atol=0)
    folded = fold_patch_grid(grid * 2, *features.shape[-2:], patch)
    assert is_channels_last(folded)
    torch.testing.assert_close(folded, 2 * features, rtol=0, atol=0)
    folded.sum().backward()
    assert is_channels_last(nhwc.grad)
    torch.testing.assert_close(fold_patches(unfold_patches(features, patch), 2, *features.shape[-2:], patch, True),
                               features, rtol=0, atol=0)


def test_dropout_on_an_nhwc_map_drops_what_the_nchw_forward_drops():
    module = torch.nn.Dropout(0.3).train()
    features = torch.randn(2, 5, 4, 3)
    torch.manual_seed(1)
    expected = module(features)
    torch.manual_seed(1)
    dropped = fast_training.dropout(module, features.contiguous(memory_format=CHANNELS_LAST))
    assert is_channels_last(dropped)
    torch.testing.assert_close(dropped, expected, rtol=0, atol=0)
    assert fast_training.dropout(module.eval(), features) is features


def test_a_dilation_past_the_map_convolves_with_the_centre_tap_alone():
    for dilation, height, width, shortcut in [(12, 12, 12, True), (18, 16, 10, True), (12, 12, 14, False),
                                              (6, 12, 12, False)]:
        conv = torch.nn.Conv2d(4, 3, 3, padding=dilation, dilation=dilation).double().train()
        features = torch.randn(2, 4, height, width, dtype=torch.float64, requires_grad=True)
        assert fast_training._sees_only_its_centre(conv, features) == shortcut
        out = fast_training.convolve(conv, features)
        out.square().sum().backward()
        grads = features.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()
        features.grad, conv.weight.grad, conv.bias.grad = None, None, None
        expected = conv(features)
        expected.square().sum().backward()
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        for grad, reference in zip(grads, (features.grad, conv.weight.grad, conv.bias.grad)):
            torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-12)


def _step(model, pixel_values, labels, reference: bool, monkeypatch):
    """Loss, logits and every parameter's gradient of one training forward and backward; `reference`: the
    straightforward spelling (NCHW, F.interpolate + F.cross_entropy)."""
    with monkeypatch.context() as patched:
        if reference:
            patched.setattr(fast_training, "training_layout", lambda model, pixels: pixels)
            patched.setattr(fast_training, "upsampled_cross_entropy", reference_loss)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks
        out = model(pixel_values=pixel_values, labels=labels)
        out.loss.backward()
    return out.loss.detach(), out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


MODELS = [("xx-small", "image-classification", 64), ("xx-small", "semantic-segmentation", 96),
          ("mobilevitv2-0.5", "image-classification", 64), ("mobilevitv2-0.5", "semantic-segmentation", 96),
          ("xx-small", "semantic-segmentation", 100)]  # 100: the blocks resize to whole patches
# every dropout of MobileViTv2 on, where the default config has none in its blocks
V2_DROPOUTS = dict(attn_dropout=0.1, ffn_dropout=0.1, aspp_dropout_prob=0.1)


def _batch(task, size, dtype, num_labels):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, size, size, generator=generator, dtype=dtype)
    shape = (3,) if task == "image-classification" else (3, size, size)
    return pixels, torch.randint(0, num_labels, shape, generator=generator)


@pytest.mark.parametrize("variant, task, size", MODELS)
def test_training_forward_equals_the_straightforward_one_in_float64(variant, task, size, monkeypatch):
    model = benchmark.build_mobilevit(variant, task).train().double()
    if variant.startswith("mobilevitv2"):
        model = type(model)(type(model.config).from_dict({**model.config.to_dict(), **V2_DROPOUTS}))
        fill_realistic_weights_(model.train().double())
    pixels, labels = _batch(task, size, torch.float64, model.config.num_labels)
    loss, logits, grads = _step(model, pixels, labels, False, monkeypatch)
    ref_loss, ref_logits, ref_grads = _step(model, pixels, labels, True, monkeypatch)
    assert logits.is_contiguous()  # NCHW to the caller, as before
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-6 * ref_logits.abs().max().item())
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=0, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("variant, task, size", MODELS[:3])
def test_first_step_loss_equals_stock_transformers_in_float32(variant, task, size):
    """MobileViTv2 segmentation is left out: there this package follows ml-cvnets, not stock (README)."""
    ours = benchmark.build_mobilevit(variant, task).train()
    stock = benchmark.build_stock(ours).train()
    pixels, labels = _batch(task, size, torch.float32, ours.config.num_labels)
    losses, logits = [], []
    for model in (ours, stock):
        torch.manual_seed(0)
        out = model(pixel_values=pixels, labels=labels)
        out.loss.backward()
        losses.append(out.loss.detach())
        logits.append(out.logits.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-4 * logits[1].abs().max().item())


def test_hidden_states_are_returned_nchw_after_a_training_forward():
    model = benchmark.build_mobilevit("xx-small", "image-classification").train()
    out = model(pixel_values=torch.rand(2, 3, 64, 64), output_hidden_states=True)
    assert all(state.is_contiguous() for state in out.hidden_states) and out.logits.is_contiguous()


def test_keep_freed_memory_is_accepted_by_glibc():
    """In a child process: the setting is process-wide and for good."""
    code = "from mobilevit.fast_training import keep_freed_memory; print(keep_freed_memory())"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert printed == str(fast_inference._is_glibc())
