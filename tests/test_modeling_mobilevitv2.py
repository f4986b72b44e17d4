"""MobileViTv2's model classes against stock transformers' MobileViTV2 on the same weights (equal where stock
follows ml-cvnets, different where it does not), save/load both ways, the fast path against the plain one,
and training. Agreement with ml-cvnets itself is tested on the fixtures in test_conversion_mobilevitv2.py."""

import copy

import pytest
import torch
import torch.nn.functional as F
import transformers

from mobilevit import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
)
from mobilevit.patches import fold_patch_grid, unfold_patch_grid
from mobilevit.testing_utils import fill_realistic_weights_

ATOL = 1e-4
# Fast vs plain: within 1e-5 of the output's scale (max |plain|, at least 1). float32 re-association (folded
# BatchNorm, NHWC GEMMs, the context as a matrix product) moves outputs of magnitude 5-16 by up to 3e-5, as
# much as the plain path itself differs from float64 (test_fast_path_is_as_exact_as_the_plain_path).
FAST_RTOL = 1e-5


def assert_fast_close(fast, plain):
    assert fast.shape == plain.shape
    scale = max(1.0, plain.abs().max().item())
    assert (fast - plain).abs().max().item() <= FAST_RTOL * scale, (fast - plain).abs().max().item()
HEADS = {
    "base": (MobileViTV2Model, transformers.MobileViTV2Model, {"task": "image-classification"}),
    "classification": (MobileViTV2ForImageClassification, transformers.MobileViTV2ForImageClassification,
                       {"task": "image-classification", "num_labels": 1000}),
    "segmentation-os16": (MobileViTV2ForSemanticSegmentation, transformers.MobileViTV2ForSemanticSegmentation,
                          {"task": "semantic-segmentation", "num_labels": 21}),
    "segmentation-os8": (MobileViTV2ForSemanticSegmentation, transformers.MobileViTV2ForSemanticSegmentation,
                         {"task": "semantic-segmentation", "num_labels": 150, "output_stride": 8,
                          "atrous_rates": [12, 24, 36]}),
}


def build(head, variant="mobilevitv2-0.5", seed=0, **overrides):
    cls, _, fields = HEADS[head]
    return fill_realistic_weights_(cls(MobileViTV2Config.from_variant(variant, **{**fields, **overrides})), seed).eval()


def stock_twin(model):
    stock_cls = getattr(transformers, type(model).__name__)
    stock = stock_cls(transformers.MobileViTV2Config(**model.config.to_dict())).eval()
    stock.load_state_dict(model.state_dict(), strict=True)
    return stock


def main_output(outputs):
    return outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state


def run(model, pixel_values, **kwargs):
    with torch.no_grad():
        return model(pixel_values, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Stock transformers: equal where it follows ml-cvnets, measurably different where it does not
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["base", "classification"])
def test_equal_to_stock_transformers_at_whole_patch_sizes(head):
    ours = build(head)
    ours.set_fast_inference(False)
    stock = stock_twin(ours)
    pixel_values = torch.rand(2, 3, 256, 256)
    got, want = run(ours, pixel_values, output_hidden_states=True), run(stock, pixel_values, output_hidden_states=True)
    assert main_output(want).abs().max() > 0.3  # realistic weights: O(1) outputs, so 1e-4 means something
    torch.testing.assert_close(main_output(got), main_output(want), atol=ATOL, rtol=0)
    assert len(got.hidden_states) == len(want.hidden_states) == 5
    for mine, theirs in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


def test_stock_transformers_differs_where_it_does_not_follow_mlcvnets():
    """The correctness differences docs/mobilevitv2.md lists, on random realistic weights (the fixtures pin the numbers)."""
    classifier = build("classification")
    odd = torch.rand(1, 3, 250, 310)  # layer_3's map is 32x39: ml-cvnets resizes it to 32x40
    assert (run(classifier, odd).logits - run(stock_twin(classifier), odd).logits).abs().max() > 0.01
    segmenter = build("segmentation-os16")
    pixel_values = torch.rand(1, 3, 128, 128)
    ours, stock = run(segmenter, pixel_values).logits, run(stock_twin(segmenter), pixel_values).logits
    assert ours.shape == stock.shape == (1, 21, 8, 8)
    assert (ours - stock).abs().max() > 0.1  # stock does not dilate layer_5's block conv
    dilations = [stage.conv_kxk.convolution.dilation for stage in segmenter.mobilevitv2.encoder.layer[2:]]
    assert dilations == [(1, 1), (1, 1), (2, 2)]
    os8 = build("segmentation-os8").mobilevitv2.encoder.layer
    assert [s.conv_kxk.convolution.dilation[0] for s in os8[2:]] == [1, 2, 4]
    assert [s.downsampling_layer.conv_3x3.convolution.dilation[0] for s in os8[2:]] == [1, 1, 2]


@pytest.mark.parametrize("head", ["classification", "segmentation-os16"])
def test_save_load_round_trip_both_directions(tmp_path, head):
    ours = build(head, seed=3)
    pixel_values = torch.rand(2, 3, 256, 256)
    reference = main_output(run(ours, pixel_values))
    stock = stock_twin(ours)

    ours.save_pretrained(tmp_path / "ours")  # ours -> stock: every key
    loaded, info = type(stock).from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    stock.save_pretrained(tmp_path / "stock")  # stock -> ours (what from_pretrained("apple/...") downloads)
    mine, info = type(ours).from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(mine.config, MobileViTV2Config)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in mine.state_dict().items())
    if head == "classification":  # same logits both ways (segmentation differs by design, see above)
        torch.testing.assert_close(main_output(run(loaded.eval(), pixel_values)), reference, atol=ATOL, rtol=0)
        torch.testing.assert_close(main_output(run(mine.eval(), pixel_values)), reference, atol=ATOL, rtol=0)


def test_tuple_outputs_match_stock_layout():
    for head in ["classification", "base"]:
        ours = build(head)
        x = torch.rand(1, 3, 128, 128)
        got = run(ours, x, return_dict=False, output_hidden_states=True)
        want = run(stock_twin(ours), x, return_dict=False, output_hidden_states=True)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            if isinstance(b, tuple):
                assert len(a) == len(b)
            else:
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# The fast path
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head, size", [("classification", (250, 310)), ("base", (64, 96)),
                                        ("segmentation-os16", (160, 130)), ("segmentation-os8", (96, 96))])
def test_fast_path_equals_plain_path(head, size, monkeypatch):
    from mobilevit.models.mobilevitv2 import fast_mobilevitv2

    model = build(head)
    pixel_values = torch.rand(3, 3, *size)
    model.set_fast_inference(False)
    plain = run(model, pixel_values, output_hidden_states=True)
    model.set_fast_inference(True)
    calls = []
    monkeypatch.setattr(fast_mobilevitv2, "_walk", lambda *a, _walk=fast_mobilevitv2._walk: calls.append(1) or _walk(*a))
    with torch.inference_mode():
        fast = model(pixel_values, output_hidden_states=True)
    assert calls, "the fast path did not run"
    assert main_output(plain).abs().max() > 0.3
    assert_fast_close(main_output(fast), main_output(plain))
    for a, b in zip(fast.hidden_states, plain.hidden_states):
        assert a.is_contiguous()
        assert_fast_close(a, b)


def test_fast_path_is_as_exact_as_the_plain_path():
    """Both paths against the plain path in float64: the fast one is no further from it than float32 noise."""
    model = build("base")
    pixel_values = torch.rand(2, 3, 64, 96)
    exact = run(copy.deepcopy(model).double().set_fast_inference(False), pixel_values.double()).last_hidden_state
    model.set_fast_inference(False)
    plain_error = (run(model, pixel_values).last_hidden_state - exact).abs().max().item()
    model.set_fast_inference(True)
    fast_error = (run(model, pixel_values).last_hidden_state - exact).abs().max().item()
    assert plain_error < 1e-4 and fast_error <= 2 * plain_error + 1e-6, (fast_error, plain_error)


def test_patch_grid_is_ml_cvnets_unfold_and_folds_back_in_either_layout():
    features = torch.randn(2, 5, 6, 8)
    grid = unfold_patch_grid(features, 2)
    expected = F.unfold(features, kernel_size=2, stride=2).reshape(2, 5, 4, 12)  # ml-cvnets' own unfolding
    assert torch.equal(grid, expected)
    assert torch.equal(fold_patch_grid(grid, 6, 8, 2), features)
    nhwc = features.contiguous(memory_format=torch.channels_last)
    grid_cl = unfold_patch_grid(nhwc, 2, channels_last=True)
    assert torch.equal(grid_cl, expected) and grid_cl.permute(0, 2, 3, 1).is_contiguous()
    folded = fold_patch_grid(grid_cl, 6, 8, 2)
    assert torch.equal(folded, features) and folded.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # ten optimizer steps of each head: ~10 s together on 2 cores
@pytest.mark.parametrize("head", ["classification", "segmentation-os16"])
def test_training_reduces_loss(head):
    torch.manual_seed(0)
    cls, _, fields = HEADS[head]
    model = cls(MobileViTV2Config.from_variant("mobilevitv2-0.5", **{**fields, "num_labels": 3})).train()
    # a learnable task: a bright square in channel c marks class c, in the image and in the mask
    x = 0.1 * torch.rand(4, 3, 32, 32)
    classes = torch.tensor([0, 1, 2, 1])
    mask = torch.zeros(4, 32, 32, dtype=torch.long)
    for i, c in enumerate(classes.tolist()):
        x[i, c, 8:24, 8:24] = 1.0
        mask[i, 8:24, 8:24] = c
    labels = classes if head == "classification" else mask
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss = model(x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_segmentation_loss_upsamples_with_align_corners_true():
    model = build("segmentation-os16", num_labels=3).train()
    model.segmentation_head.dropout.p = model.segmentation_head.aspp.dropout.p = 0.0
    pixel_values, labels = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    with torch.no_grad():
        torch.manual_seed(1)
        outputs = model(pixel_values, labels=labels)
        for corners, expect_equal in ((True, True), (False, False)):
            upsampled = F.interpolate(outputs.logits, size=(64, 64), mode="bilinear", align_corners=corners)
            loss = F.cross_entropy(upsampled, labels, ignore_index=255)
            assert torch.isclose(loss, outputs.loss, atol=1e-6, rtol=0).item() == expect_equal


def test_bad_inputs_are_named():
    model = build("classification")
    with pytest.raises(ValueError, match="pixel_values: expected height and width >= 32"):
        model(torch.rand(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 1000\)"):
        model(torch.rand(1, 3, 64, 64), labels=torch.tensor([1000]))
    segmenter = build("segmentation-os16")
    with pytest.raises(ValueError, match="labels: expected an integer tensor of shape"):
        segmenter(torch.rand(1, 3, 64, 64), labels=torch.zeros(1, 64, 64))
