"""The model classes against stock transformers' MobileViT on the same weights, save/load both ways,
training, and the errors bad input gets."""

import pytest
import torch
import transformers

from mobilevit import (
    MobileViTConfig,
    MobileViTForImageClassification,
    MobileViTForSemanticSegmentation,
    MobileViTModel,
)
from mobilevit.patches import fold_patches, unfold_patches
from mobilevit.testing_utils import fill_realistic_weights_

ATOL = 1e-4
VARIANTS = ["xx-small", "x-small", "small"]
# head name -> (our class, stock class, config overrides)
HEADS = {
    "base": (MobileViTModel, transformers.MobileViTModel, {"task": "image-classification"}),
    "classification": (
        MobileViTForImageClassification,
        transformers.MobileViTForImageClassification,
        {"task": "image-classification", "num_labels": 1000},
    ),
    "segmentation-os16": (
        MobileViTForSemanticSegmentation,
        transformers.MobileViTForSemanticSegmentation,
        {"task": "semantic-segmentation", "num_labels": 21},
    ),
    "segmentation-os8": (
        MobileViTForSemanticSegmentation,
        transformers.MobileViTForSemanticSegmentation,
        {"task": "semantic-segmentation", "num_labels": 21, "output_stride": 8},
    ),
}


def build_pair(variant, head, seed=0):
    ours_cls, stock_cls, overrides = HEADS[head]
    config = MobileViTConfig.from_variant(variant, **overrides)
    ours = fill_realistic_weights_(ours_cls(config), seed).eval()
    stock = stock_cls(transformers.MobileViTConfig(**config.to_dict())).eval()
    stock.load_state_dict(ours.state_dict(), strict=True)
    return ours, stock


def main_output(outputs):
    return outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_stock_transformers(variant, head):
    ours, stock = build_pair(variant, head)
    generator = torch.Generator().manual_seed(1)
    for size in [(256, 256), (250, 310)]:  # 250x310 makes the stage-3 map 32x39: the resize path
        pixel_values = torch.rand(2, 3, *size, generator=generator)
        with torch.no_grad():
            got = ours(pixel_values, output_hidden_states=True)
            want = stock(pixel_values, output_hidden_states=True)
        assert main_output(got).shape == main_output(want).shape
        # realistic weights: outputs are O(1), so 1e-4 is a meaningful bound
        assert main_output(want).abs().max() > 0.3
        torch.testing.assert_close(main_output(got), main_output(want), atol=ATOL, rtol=0)
        assert len(got.hidden_states) == len(want.hidden_states) == 5
        for mine, theirs in zip(got.hidden_states, want.hidden_states):
            torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
        if head == "base":
            torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=ATOL, rtol=0)


def test_tuple_outputs_match_stock_layout():
    for head in ["classification", "segmentation-os16", "base"]:
        ours, stock = build_pair("xx-small", head)
        x = torch.rand(1, 3, 128, 128)
        with torch.no_grad():
            got = ours(x, return_dict=False, output_hidden_states=True)
            want = stock(x, return_dict=False, output_hidden_states=True)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            if isinstance(b, tuple):
                assert len(a) == len(b)
            else:
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("head", ["classification", "segmentation-os16"])
def test_save_load_round_trip_both_directions(tmp_path, head):
    ours, stock = build_pair("xx-small", head, seed=3)
    x = torch.rand(2, 3, 160, 192)
    with torch.no_grad():
        reference = main_output(ours(x))

    # ours -> stock
    ours.save_pretrained(tmp_path / "ours")
    stock_cls = type(stock)
    loaded, info = stock_cls.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        torch.testing.assert_close(main_output(loaded.eval()(x)), reference, atol=ATOL, rtol=0)

    # stock -> ours (what from_pretrained("apple/...") would have downloaded)
    stock.save_pretrained(tmp_path / "stock")
    ours_cls = type(ours)
    mine, info = ours_cls.from_pretrained(tmp_path / "stock", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(mine.config, MobileViTConfig)
    with torch.no_grad():
        torch.testing.assert_close(main_output(mine.eval()(x)), reference, atol=ATOL, rtol=0)


def test_new_head_with_ignore_mismatched_sizes(tmp_path):
    ours, _ = build_pair("xx-small", "classification")
    ours.save_pretrained(tmp_path)
    model = MobileViTForImageClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 5
    # the backbone came from the checkpoint, the head is new
    torch.testing.assert_close(model.mobilevit.conv_stem.convolution.weight, ours.mobilevit.conv_stem.convolution.weight)


@pytest.mark.parametrize("variant,millions", [("xx-small", 1.27), ("x-small", 2.32), ("small", 5.58)])
def test_parameter_counts(variant, millions):
    model = MobileViTForImageClassification(MobileViTConfig.from_variant(variant, num_labels=1000))
    assert abs(model.num_parameters() / 1e6 - millions) <= 0.01


def test_unfold_fold_are_inverse_and_group_same_position_pixels():
    features = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = unfold_patches(features, 2)
    assert patches.shape == (2 * 4, 2 * 3, 3)
    torch.testing.assert_close(fold_patches(patches, 2, 4, 6, 2), features, atol=0, rtol=0)
    # sequence 1 of image 0 is the top-right pixel (y=0, x=1) of every 2x2 patch, row-major over patches
    expected = features[0, :, 0::2, 1::2].reshape(3, -1).T
    torch.testing.assert_close(patches[1], expected, atol=0, rtol=0)


@pytest.mark.parametrize("head", ["classification", "segmentation-os16"])
def test_training_reduces_loss(head):
    torch.manual_seed(0)
    cls, _, overrides = HEADS[head]
    overrides = {**overrides, "num_labels": 3}
    model = cls(MobileViTConfig.from_variant("xx-small", **overrides)).train()
    # a learnable task: a bright square in channel c marks class c, in the image and in the mask
    x = 0.1 * torch.rand(4, 3, 64, 64)
    classes = torch.tensor([0, 1, 2, 1])
    mask = torch.zeros(4, 64, 64, dtype=torch.long)
    for i, c in enumerate(classes.tolist()):
        top, left = 8 * i, 32 - 8 * i
        x[i, c, top : top + 32, left : left + 32] = 1.0
        mask[i, top : top + 32, left : left + 32] = c
    labels = classes if head == "classification" else mask
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = model(x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = MobileViTConfig.from_variant("xx-small", num_labels=3, hidden_dropout_prob=0.0, classifier_dropout_prob=0.0)
    model = MobileViTForImageClassification(config).train()
    x, labels = torch.rand(2, 3, 64, 64), torch.tensor([0, 2])
    model(x, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.mobilevit.encoder.layer[2].gradient_checkpointing
    model(x, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_problem_types_pick_the_transformers_loss():
    x = torch.rand(2, 3, 64, 64)
    regression = MobileViTForImageClassification(MobileViTConfig.from_variant("xx-small", num_labels=1))
    assert regression(x, labels=torch.tensor([0.5, 1.5])).loss.item() >= 0
    assert regression.config.problem_type == "regression"
    multi = MobileViTForImageClassification(MobileViTConfig.from_variant("xx-small", num_labels=4))
    multi(x, labels=torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]]))
    assert multi.config.problem_type == "multi_label_classification"


def test_segmentation_loss_uses_ignore_index_at_label_size():
    torch.manual_seed(0)
    model = MobileViTForSemanticSegmentation(MobileViTConfig.from_variant("xx-small", "segmentation", num_labels=4)).eval()
    x = torch.rand(1, 3, 64, 64)
    labels = torch.full((1, 64, 64), 255)
    labels[0, :8, :8] = 2
    out = model(x, labels=labels)
    upsampled = torch.nn.functional.interpolate(out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.cross_entropy(upsampled[..., :8, :8], labels[:, :8, :8])
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize(
    "pixel_values,error,match",
    [
        (torch.rand(1, 1, 64, 64), ValueError, "expected 3 channels"),
        (torch.rand(3, 64, 64), ValueError, "4-D tensor"),
        (torch.rand(1, 1, 3, 64, 64), ValueError, "4-D tensor"),
        (torch.rand(1, 3, 16, 64), ValueError, "height and width >= 32"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), TypeError, "floating point"),
        (None, ValueError, "pixel_values"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_pixel_values_are_named(pixel_values, error, match):
    model = MobileViTForImageClassification(MobileViTConfig.from_variant("xx-small", num_labels=3)).eval()
    with pytest.raises(error, match=match):
        model(pixel_values)


def test_bad_labels_are_named():
    x = torch.rand(2, 3, 64, 64)
    classifier = MobileViTForImageClassification(MobileViTConfig.from_variant("xx-small", num_labels=3))
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\), got \[7\]"):
        classifier(x, labels=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="labels: expected integer class indices of shape"):
        classifier(x, labels=torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="multi-label targets of shape"):
        classifier(x, labels=torch.rand(2, 5))
    segmenter = MobileViTForSemanticSegmentation(MobileViTConfig.from_variant("xx-small", "segmentation", num_labels=3))
    with pytest.raises(ValueError, match="labels: expected class indices in \\[0, 3\\) or the ignore index 255"):
        segmenter(x, labels=torch.full((2, 64, 64), 9))
    with pytest.raises(ValueError, match="labels: expected an integer tensor of shape"):
        segmenter(x, labels=torch.zeros(2, 64, 64))
    with pytest.raises(ValueError, match="labels: expected an integer tensor of shape"):
        segmenter(x, labels=torch.zeros(3, 64, 64, dtype=torch.long))


@pytest.mark.parametrize("head", ["classification", "segmentation-os16"])
def test_pixels_of_another_float_precision_are_cast_to_the_weights_dtype(head):
    """float64 (NumPy's default) and float16 pixels raised torch's dtype error; they are cast, as transformers'
    pipelines cast their inputs to the model's dtype."""
    ours, _ = build_pair("xx-small", head)
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = main_output(ours(pixels))
        torch.testing.assert_close(main_output(ours(pixels.double())), reference, rtol=0, atol=1e-6)
        half = main_output(ours(pixels.half()))  # float16 rounds the pixels to 11 significant bits
        assert half.dtype == torch.float32 and (half - reference).abs().max() < 0.05 * reference.abs().max()
        in_double = main_output(ours.double()(pixels))
    assert in_double.dtype == torch.float64
    torch.testing.assert_close(in_double.float(), reference, rtol=0, atol=1e-4)
