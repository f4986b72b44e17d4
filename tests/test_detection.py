"""SSDLite detectors of both families against ml-cvnets (../shared/fixtures/mlcvnets_ssd): a converted checkpoint
gives its raw outputs, features and boxes within 2e-4 in the plain and the fast path, and its folder's
processor gives its detections exactly; the Backbone API, inside one of transformers' own heads too; stock
transformers loads the backbone part of a detector folder."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from mobilevit import MobileViTConfig, MobileViTV2Config, auto
from mobilevit.ssd import ObjectDetectionOutput, center_to_corners
from mobilevit.testing_utils import fill_realistic_weights_

FAST = ["ssdlite_mobilevit_xx_small_320", "ssdlite_mobilevitv2_050_320"]
SLOW = ["ssdlite_mobilevit_small_320", "ssdlite_mobilevitv2_100_320"]
ALL = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]
TOLERANCE = 2e-4  # the fixtures' noise floor is 3.5e-5
LEVELS = [16, 32, 64, 128, 256, -1]


def _photo_key(name):
    return "photo_pixel_values_v2" if "v2" in name else "photo_pixel_values_v1"


@pytest.fixture(scope="module")
def inputs(mlcvnets_ssd_fixtures):
    return load_file(mlcvnets_ssd_fixtures / "inputs.safetensors")


# ---------------------------------------------------------------------------------------------------------
# Conversion and raw outputs
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_converted_detector_matches_mlcvnets_in_both_paths(converted_ssd, inputs, name):
    folder, expected = converted_ssd(name)
    model, processor, task = auto.load_model_and_processor(folder)
    assert task == "object-detection" and model.config.num_labels == 81
    assert model.config.id2label[0] == "background" and model.config.id2label[80] == "toothbrush"
    assert torch.equal(model.ssd.anchors([(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]), expected["anchors"])
    for fast in (False, True):
        model.set_fast_inference(fast)
        with torch.inference_mode():
            batch = model(inputs["pixel_values"])
            photo = model(inputs[_photo_key(name)], output_hidden_states=True)
        pairs = [(batch.logits, "batch_cls_logits"), (batch.box_regression, "batch_box_regression"),
                 (photo.logits, "photo_cls_logits"), (photo.box_regression, "photo_box_regression"),
                 (center_to_corners(batch.pred_boxes), "batch_boxes_xyxy"),
                 (center_to_corners(photo.pred_boxes), "photo_boxes_xyxy")]
        pairs += [(feature, f"photo_feature_os_{stride}") for feature, stride in zip(photo.feature_maps, LEVELS)]
        for got, key in pairs:
            assert got.shape == expected[key].shape, key
            torch.testing.assert_close(got, expected[key], atol=TOLERANCE, rtol=0, msg=f"{key} (fast={fast})")


def test_converter_reads_the_task_and_refuses_a_contradiction(converted_ssd, tmp_path):
    from mobilevit.conversion import ConversionError, convert_checkpoint

    folder, _ = converted_ssd("ssdlite_mobilevit_xx_small_320")
    checkpoint = folder.parent / "ssdlite_mobilevit_xx_small_320.pt"
    with pytest.raises(ConversionError, match="--task image-classification was given, but the checkpoint's tensors "
                                              "are those of a object-detection model"):
        convert_checkpoint(checkpoint, tmp_path / "out", task="classification", progress=False)
    with pytest.raises(ConversionError, match="output_stride: only segmentation checkpoints have one"):
        convert_checkpoint(checkpoint, tmp_path / "out", output_stride=16, progress=False)
    assert not (tmp_path / "out").exists()
    assert type(auto.AutoModelForObjectDetection.from_pretrained(folder)).__name__ == "MobileViTForObjectDetection"


def test_converted_folder_says_how_it_was_evaluated(converted_ssd):
    v1, _ = converted_ssd("ssdlite_mobilevit_xx_small_320")
    v2, _ = converted_ssd("ssdlite_mobilevitv2_050_320")
    for folder, threshold, cap in ((v1, 0.05, None), (v2, 0.01, 200)):
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        assert processor["size"] == {"height": 320, "width": 320} and processor["do_center_crop"] is False
        rule = processor["detection_postprocessing"]
        assert (rule["score_threshold"], rule["detections_per_image"]) == (threshold, cap)
        card = (folder / "README.md").read_text()
        assert "pipeline_tag: object-detection" in card and f"scores above {threshold}" in card
    config = json.loads((v2 / "config.json").read_text())
    assert config["architectures"] == ["MobileViTV2ForObjectDetection"]
    # v2-0.5's layer_5 has the head's width (256): ml-cvnets builds no projection there
    assert auto.load_model(v2).ssd.heads[1].projection is None


@pytest.mark.parametrize("name", FAST)
def test_folder_processor_reproduces_mlcvnets_detections_exactly(converted_ssd, inputs, name):
    """The folder's own post-processing rule on ml-cvnets' stored raw outputs: the same detections, and for the
    photo the same pixel boxes as ml-cvnets' COCO evaluation writes (x * 451, y * 300, clipped)."""
    folder, expected = converted_ssd(name)
    model, processor, _ = auto.load_model_and_processor(folder)
    anchors = expected["anchors"]
    for prefix, count in (("photo", 1), ("batch", 2)):
        outputs = ObjectDetectionOutput(
            logits=expected[f"{prefix}_cls_logits"],
            pred_boxes=model.ssd.box_coder.decode(expected[f"{prefix}_box_regression"], anchors))
        results = processor.post_process_object_detection(outputs)
        for i in range(count):
            assert torch.equal(results[i]["labels"], expected[f"{prefix}_{i}_det_labels"])
            assert torch.equal(results[i]["scores"], expected[f"{prefix}_{i}_det_scores"])
            assert torch.equal(results[i]["boxes"], expected[f"{prefix}_{i}_det_boxes"])
        if prefix == "photo":
            height, width = inputs["image_rgb_uint8"].shape[:2]
            pixels = processor.post_process_object_detection(outputs, target_sizes=[(height, width)])[0]
            assert torch.equal(pixels["boxes"], expected["photo_0_det_boxes_pixels"])


@pytest.mark.parametrize("name", FAST)
def test_folder_processor_reproduces_mlcvnets_eval_pixels(converted_ssd, inputs, name):
    """The converted folder's preprocessing of the photo is ml-cvnets' evaluation transform of its release (v1:
    OpenCV BGR bilinear; v2: Pillow RGB bicubic; both stretched to 320x320) within 1/255."""
    folder, _ = converted_ssd(name)
    _, processor, _ = auto.load_model_and_processor(folder)
    pixels = processor(images=inputs["image_rgb_uint8"].numpy(), return_tensors="pt")["pixel_values"]
    expected = inputs[_photo_key(name)]
    assert pixels.shape == expected.shape == (1, 3, 320, 320)
    assert float((pixels - expected).abs().max()) <= 1 / 255 + 1e-6


def test_end_to_end_detections_agree_with_mlcvnets_at_the_top(converted_ssd, inputs):
    """The model's own outputs (within 2e-4 of ml-cvnets') through the processor: the confident detections are
    ml-cvnets' (the many borderline ones of random weights may differ, the fixtures' README says why)."""
    folder, expected = converted_ssd("ssdlite_mobilevitv2_050_320")
    model, processor, _ = auto.load_model_and_processor(folder)
    with torch.inference_mode():
        outputs = model(inputs["photo_pixel_values_v2"])
    got = processor.post_process_object_detection(outputs)[0]
    torch.testing.assert_close(got["scores"][:20], expected["photo_0_det_scores"][:20], atol=1e-4, rtol=0)
    assert torch.equal(got["labels"][:20], expected["photo_0_det_labels"][:20])
    torch.testing.assert_close(got["boxes"][:20], expected["photo_0_det_boxes"][:20], atol=1e-4, rtol=0)


def test_loss_through_the_model_and_a_training_step(converted_ssd, inputs):
    folder, expected = converted_ssd("ssdlite_mobilevit_xx_small_320")
    model = auto.load_model(folder).eval()
    labels = [{"class_labels": expected[f"loss_gt_labels_{i}"],
               "boxes": torch.cat([(expected[f"loss_gt_boxes_{i}"][:, :2] + expected[f"loss_gt_boxes_{i}"][:, 2:]) / 2,
                                   expected[f"loss_gt_boxes_{i}"][:, 2:] - expected[f"loss_gt_boxes_{i}"][:, :2]], 1)}
              for i in range(2)]
    with torch.no_grad():
        outputs = model(inputs["pixel_values"], labels=labels)
    # the model's outputs are within 1e-5 of the stored ones here, so the loss is too (the exact check on the
    # stored outputs is tests/test_ssd.py)
    assert abs(float(outputs.loss) - float(expected["loss_total"])) < 1e-3
    assert outputs.loss_dict["num_positives"] == 24
    model.train()  # one training step on the first image (its three boxes)
    loss = model(inputs["pixel_values"][:1], labels=labels[:1]).loss
    loss.backward()
    head, stem = model.ssd.heads[0].predictor.pointwise.convolution.weight, model.mobilevit.conv_stem.convolution.weight
    assert head.grad.abs().sum() > 0 and stem.grad.abs().sum() > 0
    before = head.detach().clone()
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    assert not torch.equal(head.detach(), before)


def test_detector_errors_are_one_line():
    config = auto.new_config("xx-small", "semantic-segmentation", num_labels=3)
    with pytest.raises(ValueError, match="output_stride: expected 32 for a detector"):
        auto.new_model(config, "object-detection")
    model = auto.new_model(auto.new_config("xx-small", "object-detection", num_labels=3), "object-detection")
    with pytest.raises(ValueError, match=r"labels\[0\]\['class_labels'\]: expected classes in \[1, 2\]"):
        model(torch.rand(1, 3, 64, 64), labels=[{"class_labels": torch.tensor([3]), "boxes": torch.rand(1, 4)}])
    with pytest.raises(ValueError, match="ssd_output_strides: expected a list of output strides"):
        MobileViTConfig(ssd_output_strides=[16, 64, -1], ssd_projection_channels=[8] * 3, ssd_aspect_ratios=[[2]] * 3)


@pytest.mark.parametrize("variant, size", [("xx-small", 64), ("xx-small", 96), ("mobilevitv2-0.5", 64)])
def test_labels_matched_in_the_data_pipeline_give_the_same_loss(variant, size):
    """`ssd.LabelMatcher` (matching as a data-pipeline step, for one compiled graph per input size; see
    docs/compile.md): the model's loss on matched labels is bit-equal to its loss on the boxes."""
    from mobilevit.ssd import LabelMatcher

    model = fill_realistic_weights_(auto.new_model(auto.new_config(variant, "object-detection", num_labels=4),
                                                   "object-detection")).eval()
    generator = torch.Generator().manual_seed(size)
    labels = [{"class_labels": torch.randint(1, 4, (count,), generator=generator),
               "boxes": torch.rand(count, 4, generator=generator) * 0.5 + 0.2} for count in (3, 0)]
    pixel_values = torch.rand(2, 3, size, size, generator=generator)
    matched = LabelMatcher(model.config)(labels, (size, size))
    assert [sorted(target) for target in matched] == [["anchor_labels", "anchor_targets"]] * 2
    with torch.no_grad():
        want, got = model(pixel_values, labels=labels), model(pixel_values, labels=matched)
    assert float(got.loss) == float(want.loss) and float(want.loss) > 0
    assert int(got.loss_dict["num_positives"]) == int(want.loss_dict["num_positives"])


def test_label_matcher_errors_are_one_line():
    from mobilevit.ssd import LabelMatcher

    model = auto.new_model(auto.new_config("xx-small", "object-detection", num_labels=3), "object-detection").eval()
    matcher = LabelMatcher(model.config)
    boxes = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(ValueError, match=r"image_size: expected \(height, width\), integers >= 32, got 64"):
        matcher(boxes, 64)
    with pytest.raises(ValueError, match="labels: expected 'class_labels' and 'boxes' to match, got labels matched"):
        matcher(matcher(boxes, (64, 64)), (64, 64))
    with pytest.raises(ValueError, match=r"labels: expected 'anchor_labels' matched to this input's \d+ anchors, "
                                         r"got \d+ \(match them for the input size the model is given\)"):
        model(torch.rand(1, 3, 64, 64), labels=matcher(boxes, (128, 128)))
    wrong_class = [{"anchor_labels": torch.full((10,), 3), "anchor_targets": torch.zeros(10, 4)}]
    with pytest.raises(ValueError, match=r"labels\[0\]\['anchor_labels'\]: expected classes in \[0, 2\], got \[3\]"):
        model(torch.rand(1, 3, 64, 64), labels=wrong_class)


# ---------------------------------------------------------------------------------------------------------
# The Backbone API
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [MobileViTConfig.from_variant("xx-small", out_features=["stem", "stage3", "stage5"]),
                                    MobileViTV2Config.from_variant("0.5", out_indices=[2, 4])])
def test_backbone_feature_maps_and_channels(config):
    backbone = fill_realistic_weights_(auto.family_of(config).backbone_class(config)).eval()
    pixel_values = torch.rand(2, 3, 96, 128)
    assert backbone.channels == [config.stage_channels[i] for i in backbone.out_indices]
    backbone.set_fast_inference(False)
    with torch.no_grad():
        plain = backbone(pixel_values, output_hidden_states=True)
    backbone.set_fast_inference(True)
    with torch.inference_mode():
        fast = backbone(pixel_values)
    strides = {"stem": 2, "stage1": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 32}
    for name, channels, plain_map, fast_map in zip(backbone.out_features, backbone.channels, plain.feature_maps,
                                                   fast.feature_maps):
        assert plain_map.shape == (2, channels, 96 // strides[name], 128 // strides[name])
        assert fast_map.is_contiguous()
        torch.testing.assert_close(fast_map, plain_map, atol=1e-4, rtol=0)
    assert len(plain.hidden_states) == 6 and fast.hidden_states is None


def test_a_classifier_folder_loads_as_a_detector_to_train(saved_classifier):
    """Detection fine-tuning starts from a classification checkpoint: its backbone, new SSD heads."""
    classifier = auto.load_model(saved_classifier)
    labels = {0: "background", 1: "a", 2: "b", 3: "c"}
    with pytest.raises(auto.NotAModelError, match="holds an image-classification model, whose weights have no "
                                                  "object-detection head .*new_head="):
        auto.load_model(saved_classifier, "object-detection")  # never a random head unasked
    detector = auto.load_model(saved_classifier, "object-detection",
                               new_head={"id2label": labels, "label2id": {v: k for k, v in labels.items()}})
    assert any(key.startswith("ssd.") for key in detector.new_tensors)
    assert detector.config.out_features == ["stage4", "stage5"]  # the detector's levels, whatever the folder named
    assert torch.equal(detector.mobilevit.conv_stem.convolution.weight, classifier.mobilevit.conv_stem.convolution.weight)
    assert detector(torch.rand(1, 3, 64, 64)).logits.shape[-1] == 4


def test_backbone_loads_the_backbone_of_a_detector_folder(saved_detector):
    detector = auto.load_model(saved_detector)
    backbone_class = auto.family_of(detector.config).backbone_class
    backbone = backbone_class.from_pretrained(saved_detector)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, detector.base_model.state_dict()[key])


@pytest.mark.parametrize("variant", ["xx-small", "mobilevitv2-0.5"])
def test_backbone_inside_transformers_upernet_runs_and_trains(variant):
    """transformers' UperNet builds our backbone from a backbone config (AutoBackbone knows this package's config
    classes), runs it and trains a step."""
    backbone_config = auto.new_config(variant, "image-classification",
                                      out_features=["stage2", "stage3", "stage4", "stage5"])
    config = transformers.UperNetConfig(backbone_config=backbone_config, num_labels=4, hidden_size=32,
                                        auxiliary_channels=16, auxiliary_in_channels=backbone_config.stage_channels[4])
    model = transformers.UperNetForSemanticSegmentation(config)
    assert type(model.backbone) is auto.family_of(backbone_config).backbone_class
    fill_realistic_weights_(model.backbone)
    pixel_values, labels = torch.rand(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    outputs = model(pixel_values=pixel_values, labels=labels)
    assert outputs.logits.shape == (2, 4, 64, 64) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    stem = model.backbone.conv_stem.convolution.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    before = stem.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(stem.detach(), before)
    model.eval()
    with torch.no_grad():
        assert model(pixel_values=pixel_values).logits.shape == (2, 4, 64, 64)


@pytest.mark.parametrize("variant, stock_class", [("xx-small", "MobileViTModel"), ("mobilevitv2-0.5", "MobileViTV2Model")])
def test_stock_transformers_loads_the_backbone_of_a_detector_folder(tmp_path, variant, stock_class):
    config = auto.new_config(variant, "object-detection", num_labels=81)
    model = fill_realistic_weights_(auto.new_model(config, "object-detection")).eval()
    model.save_pretrained(tmp_path)
    transformers.logging.set_verbosity_error()
    try:
        stock, info = getattr(transformers, stock_class).from_pretrained(tmp_path, expand_output=False,
                                                                        output_loading_info=True)
    finally:
        transformers.logging.set_verbosity_warning()
    assert not info["missing_keys"] and not info["mismatched_keys"]  # every backbone key used
    assert info["unexpected_keys"] and all(key.startswith("ssd.") for key in info["unexpected_keys"])
    pixel_values = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        ours = model.base_model(pixel_values).feature_maps[-1]
        theirs = stock.eval()(pixel_values).last_hidden_state
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
