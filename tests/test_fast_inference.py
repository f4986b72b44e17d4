"""The eval-mode fast path (mobilevit/fast_inference.py) against the plain path of the same model: equal
outputs for every variant and head, and a cache that follows every way weights or modes can change."""

import os

import pytest
import torch

from mobilevit import (
    MobileViTConfig,
    MobileViTForImageClassification,
    MobileViTForSemanticSegmentation,
    MobileViTModel,
)
from mobilevit import fast_inference
from mobilevit.models.mobilevit import fast_mobilevit
from mobilevit.testing_utils import fill_realistic_weights_

# float32 re-association (folded BatchNorm, NHWC convolution order) moves outputs of magnitude ~5 by a few 1e-6
TOL = dict(atol=1e-5, rtol=1e-5)
HEADS = {
    "base": (MobileViTModel, {}),
    "classification": (MobileViTForImageClassification, {"num_labels": 1000}),
    "segmentation": (MobileViTForSemanticSegmentation, {"task": "semantic-segmentation", "num_labels": 21}),
}


def build(variant="xx-small", head="classification", seed=0):
    cls, overrides = HEADS[head]
    return fill_realistic_weights_(cls(MobileViTConfig.from_variant(variant, **overrides)), seed).eval()


def main_output(outputs):
    return outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state


def run_both(model, pixel_values, **kwargs):
    """(fast outputs, plain outputs) of `model` on `pixel_values`, without autograd."""
    with torch.no_grad():
        fast = model(pixel_values, **kwargs)
        model.set_fast_inference(False)
        try:
            plain = model(pixel_values, **kwargs)
        finally:
            model.set_fast_inference(True)
    return fast, plain


def assert_same(model, pixel_values):
    fast, plain = run_both(model, pixel_values, output_hidden_states=True)
    assert main_output(plain).abs().max() > 0.3  # realistic magnitudes, so the tolerance means something
    torch.testing.assert_close(main_output(fast), main_output(plain), **TOL)
    return fast, plain


@pytest.fixture
def count_fast_calls(monkeypatch):
    calls = []
    original = fast_mobilevit.backbone
    monkeypatch.setattr(fast_mobilevit, "backbone", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("variant", ["xx-small", "x-small", "small"])
def test_fast_equals_plain_at_odd_size(variant, head, count_fast_calls):
    model = build(variant, head)
    # 130x162: the maps of layer_3 (17x21) and layer_4 (9x11) take the resize path of the MobileViT blocks
    fast, plain = assert_same(model, torch.rand(1, 3, 130, 162, generator=torch.Generator().manual_seed(0)))
    assert count_fast_calls == [1]  # the fast path really ran (once; the plain run did not use it)
    assert len(fast.hidden_states) == len(plain.hidden_states) == 5
    for mine, reference in zip(fast.hidden_states, plain.hidden_states):
        assert mine.shape == reference.shape and mine.is_contiguous()
        torch.testing.assert_close(mine, reference, **TOL)
    if head == "base":
        torch.testing.assert_close(fast.pooler_output, plain.pooler_output, **TOL)
    assert main_output(fast).is_contiguous()


def test_output_stride_8_and_tuple_outputs():
    model = fill_realistic_weights_(
        MobileViTForSemanticSegmentation(
            MobileViTConfig.from_variant("xx-small", task="semantic-segmentation", num_labels=21, output_stride=8)
        )
    ).eval()
    fast, plain = run_both(model, torch.rand(2, 3, 96, 128), return_dict=False)
    assert len(fast) == len(plain) == 1
    torch.testing.assert_close(fast[0], plain[0], **TOL)


def test_switches_and_when_the_fast_path_runs(count_fast_calls, monkeypatch):
    model = build()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
    assert len(count_fast_calls) == 1
    model.set_fast_inference(False)
    with torch.no_grad():
        model(x)
    model.set_fast_inference(True)
    monkeypatch.setenv("MOBILEVIT_FAST", "0")
    with torch.no_grad():
        model(x)
    monkeypatch.delenv("MOBILEVIT_FAST")
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    model.mobilevit.encoder.layer[1].layer[0].conv_3x3.normalization.train()  # batch statistics wanted there
    with torch.no_grad():
        model(x)
    assert len(count_fast_calls) == 1  # none of the four ran it
    model.eval()
    logits = model(x).logits  # eval but autograd on, parameters require grad: the plain path, with gradients
    assert len(count_fast_calls) == 1 and logits.requires_grad
    logits.sum().backward()
    assert model.classifier.weight.grad is not None
    assert model.mobilevit.conv_stem.convolution.weight.grad.abs().sum() > 0
    with pytest.raises(TypeError, match="enabled"):
        model.set_fast_inference("no")


def test_cache_follows_optimizer_step_and_train_eval_switches():
    model = build()
    x = torch.rand(2, 3, 96, 96)
    before, _ = run_both(model, x)  # fills the cache
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    model(x, labels=torch.tensor([1, 2])).loss.backward()  # also moves the BatchNorm running statistics
    optimizer.step()
    model.eval()
    after, _ = assert_same(model, x)
    assert (after.logits - before.logits).abs().max() > 1e-3  # the step changed the outputs, the cache followed
    # BatchNorm statistics changed behind the model's back (a submodule put in train mode alone)
    model.mobilevit.conv_stem.normalization.train()
    with torch.no_grad():
        model.mobilevit.conv_stem(torch.rand(4, 3, 32, 32))
    model.mobilevit.conv_stem.normalization.eval()
    assert_same(model, x)


def test_cache_follows_load_state_dict_edits_and_moves():
    model, other = build(seed=0), build(seed=1)
    x = torch.rand(1, 3, 64, 64)
    assert_same(model, x)
    model.load_state_dict(other.state_dict())
    fast, _ = assert_same(model, x)
    with torch.no_grad():
        torch.testing.assert_close(fast.logits, other(x).logits, **TOL)
    model.load_state_dict(build(seed=2).state_dict(), assign=True)  # replaced parameters, not copied into
    assert_same(model, x)
    with torch.no_grad():  # in-place edits of a weight, a BatchNorm buffer and an attention projection
        model.mobilevit.encoder.layer[2].conv_kxk.convolution.weight.mul_(1.5)
        model.mobilevit.encoder.layer[2].downsampling_layer.conv_3x3.normalization.running_var.add_(0.3)
        model.mobilevit.encoder.layer[3].transformer.layer[0].attention.attention.value.weight.mul_(-1)
    assert_same(model, x)
    model.double()
    fast, plain = run_both(model, x.double())
    assert fast.logits.dtype == torch.float64
    torch.testing.assert_close(fast.logits, plain.logits, atol=1e-9, rtol=1e-9)
    model.float()
    assert_same(model, x)


def test_cache_stays_out_of_the_state_dict():
    model = build()
    keys = set(model.state_dict())
    run_both(model, torch.rand(1, 3, 64, 64))
    assert set(model.state_dict()) == keys
    assert any(fast_inference.CACHE_ATTR in m.__dict__ for m in model.modules())
    model.train()
    assert not any(fast_inference.CACHE_ATTR in m.__dict__ for m in model.modules())


def test_large_batches_run_in_micro_batches(monkeypatch, count_fast_calls):
    model = build()
    x = torch.rand(5, 3, 64, 64)
    assert fast_inference.micro_batch_size(model.mobilevit, x) >= 5  # tiny images: one micro-batch
    monkeypatch.setattr(fast_inference, "MICRO_BATCH_BYTES", 2 * 32 * 32 * 32 * 4)  # two 64x64 images
    assert fast_inference.micro_batch_size(model.mobilevit, x) == 2
    fast, plain = assert_same(model, x)  # 2 + 2 + 1 images, stitched back together
    assert count_fast_calls == [1]
    for mine, reference in zip(fast.hidden_states, plain.hidden_states):
        assert mine.shape == reference.shape and mine.is_contiguous()
        torch.testing.assert_close(mine, reference, **TOL)


@pytest.mark.parametrize("variant", ["xx-small", "x-small", "small"])
def test_micro_batches_are_sized_by_the_widest_map_the_model_makes(variant):
    model = build(variant, "base")
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, out: sizes.append(out[0].numel())) for m in model.modules()]
    with torch.no_grad():
        model.set_fast_inference(False)(torch.rand(1, 3, 250, 190))  # odd sizes: rounding of every stride
    for hook in hooks:
        hook.remove()
    assert fast_inference.widest_map_elements(model, 250, 190) == max(sizes)


SETTLED_FAULTS_SCRIPT = """
import resource, sys, torch
from mobilevit import fast_inference
from tests.test_fast_inference import build
if sys.argv[1] == "unsettled":
    fast_inference.settle_allocator = lambda: None
model = build("xx-small")
x = torch.rand(1, 3, 256, 256)
with torch.inference_mode():
    for _ in range(3):
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not fast_inference._is_glibc(), reason="settle_allocator acts on glibc malloc only")
def test_settled_allocator_stops_page_faulting_every_forward():
    """In a fresh process (the test process's malloc has long been settled by other tests)."""
    import subprocess
    import sys
    from pathlib import Path

    def faults_per_forward(mode):
        run = subprocess.run([sys.executable, "-c", SETTLED_FAULTS_SCRIPT, mode], capture_output=True, text=True,
                             cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
        return float(run.stdout.split()[-1])

    unsettled = faults_per_forward("unsettled")
    if unsettled < 500:
        pytest.skip(f"glibc here does not page-fault without settling ({unsettled:.0f} per forward): no contrast")
    assert faults_per_forward("settled") < 100  # 1,250 per forward before (4 KiB each)


def folded_convolutions(model):
    """The cached FoldedConvolution of every convolution layer that has run on the fast path."""
    entries = [m.__dict__.get(fast_inference.CACHE_ATTR) for m in model.modules()]
    return [entry[1] for entry in entries if entry and isinstance(entry[1], fast_inference.FoldedConvolution)]


def packed_shapes(model):
    """Input shapes for which oneDNN-packed convolution weights are cached, per convolution layer."""
    return [set(folded.packed) for folded in folded_convolutions(model)]


@pytest.mark.skipif(fast_inference._ONEDNN_CONV is None, reason="this PyTorch build has no oneDNN fused convolution")
def test_onednn_convolutions_pack_per_input_shape_and_forget_old_shapes():
    model = build()
    sizes = [64, 72, 80, 88, 96, 104]
    for side in sizes:
        assert_same(model, torch.rand(1, 3, side, side))
    stem_shapes = packed_shapes(model)[0]  # the stem sees the input itself
    assert stem_shapes == {(1, 3, side, side) for side in sizes[-fast_inference.MAX_PACKED_SHAPES :]}
    assert all(len(shapes) <= fast_inference.MAX_PACKED_SHAPES for shapes in packed_shapes(model))


def test_without_onednn_every_convolution_takes_the_plain_route(monkeypatch):
    monkeypatch.setattr(fast_inference, "_ONEDNN_CONV", None)
    model = build(head="segmentation")
    assert_same(model, torch.rand(2, 3, 70, 90))
    folded = folded_convolutions(model)
    assert len(folded) > 30 and all(entry.packed is None for entry in folded)


def test_models_copy_and_pickle_after_a_fast_call():
    import copy
    import pickle

    model = build()
    x = torch.rand(1, 3, 64, 64)
    fast, _ = assert_same(model, x)  # the cache now holds derived (and, on CPU, oneDNN-packed) weights
    # oneDNN's packed tensors can be neither deep-copied nor pickled: copies must start without the cache
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not any(m.__dict__.get(fast_inference.CACHE_ATTR) for m in clone.modules())
        with torch.no_grad():
            torch.testing.assert_close(clone(x).logits, fast.logits, **TOL)


# bfloat16 (`model.to(torch.bfloat16)`): the fast path runs it through the same fused oneDNN convolutions; its
# error against float32 is bfloat16's own (8 significant bits), docs/speed.md's table: 1.4-6.8 % of the largest logit
BF16_RELATIVE_BOUND = 0.1


@pytest.mark.parametrize("variant, task", [("xx-small", "image-classification"), ("mobilevitv2-0.5", "image-classification"),
                                           ("xx-small", "semantic-segmentation")])
def test_bfloat16_fast_path_stays_within_its_bound_of_float32(variant, task):
    from mobilevit import auto

    config = auto.new_config(variant, task, num_labels=21 if task == "semantic-segmentation" else 1000)
    model = fill_realistic_weights_(auto.new_model(config, task)).eval()
    pixel_values = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.set_fast_inference(False)
        reference = model(pixel_values).logits
        model.set_fast_inference(True)
        model.to(torch.bfloat16)
        fast, plain = run_both(model, pixel_values.to(torch.bfloat16))
    fast, plain = fast.logits, plain.logits
    assert fast.dtype == plain.dtype == torch.bfloat16
    scale = float(reference.abs().max())
    assert scale > 0.3
    for output in (fast, plain):
        assert float((output.float() - reference).abs().max()) / scale <= BF16_RELATIVE_BOUND
    if fast_inference._ONEDNN_CONV is not None:  # the fused bfloat16 convolutions really ran
        assert any(entry.packed for entry in folded_convolutions(model))
