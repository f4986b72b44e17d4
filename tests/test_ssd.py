"""The SSD pieces both families share (mobilevit/ssd/): anchors, box coder, matcher, loss and post-processing
against ml-cvnets' stored tensors (exactly), and the class-wise NMS against a brute-force greedy reference."""

import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mobilevit.ssd import (
    MLCVNETS_V01,
    MLCVNETS_V02,
    AnchorGenerator,
    BoxCoder,
    PostProcessing,
    center_to_corners,
    check_labels,
    class_wise_nms,
    corners_to_center,
    detection_targets,
    match_anchors,
    multibox_loss,
    select_detections,
)

FIXTURES = {  # name -> the post-processing rule of the release that evaluated it
    "ssdlite_mobilevit_xx_small_320": MLCVNETS_V01,
    "ssdlite_mobilevit_small_320": MLCVNETS_V01,
    "ssdlite_mobilevitv2_050_320": MLCVNETS_V02,
    "ssdlite_mobilevitv2_100_320": MLCVNETS_V02,
}
LEVELS_AT_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
RELEASED_RATIOS = [[2, 3]] * 5 + [[2]]


@pytest.fixture(scope="module")
def expected(mlcvnets_ssd_fixtures):
    return {name: load_file(mlcvnets_ssd_fixtures / f"{name}.expected.safetensors") for name in FIXTURES}


# ---------------------------------------------------------------------------------------------------------
# Anchors and boxes: bit for bit
# ---------------------------------------------------------------------------------------------------------
def test_anchors_are_mlcvnets_bit_for_bit(expected):
    generator = AnchorGenerator(RELEASED_RATIOS, 0.1, 1.05)
    anchors = generator(LEVELS_AT_320)
    assert anchors.shape == (3232, 4)
    for tensors in expected.values():
        assert torch.equal(anchors, tensors["anchors"])
    assert torch.equal(generator.constant(LEVELS_AT_320), anchors)  # what a fixed-size export holds
    odd = [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2), (1, 1)]
    assert torch.equal(generator.constant(odd), generator(odd))
    assert AnchorGenerator(RELEASED_RATIOS).anchors_per_location == [6, 6, 6, 6, 6, 4]
    # clamped in centre-size form: the large anchors of the last levels are 1 wide, not clipped corners
    assert float(anchors[:, 2:].max()) == 1.0 and float(anchors[-4:, :2].min()) == 0.5


def test_anchor_centres_in_float32_equal_the_float64_ones_for_every_map_up_to_2048():
    for side in range(1, 2049, 7):
        cells = torch.arange(side)
        assert torch.equal((cells.float() + 0.5) / side, ((cells.double() + 0.5) / side).float())


def test_decoded_boxes_are_mlcvnets_bit_for_bit(expected):
    coder = BoxCoder(0.1, 0.2)
    for tensors in expected.values():
        for prefix in ("photo", "batch"):
            boxes = center_to_corners(coder.decode(tensors[f"{prefix}_box_regression"], tensors["anchors"]))
            assert torch.equal(boxes, tensors[f"{prefix}_boxes_xyxy"])


def test_encode_inverts_decode():
    anchors = AnchorGenerator(RELEASED_RATIOS)(LEVELS_AT_320)
    regression = torch.randn(3232, 4)
    coder = BoxCoder()
    torch.testing.assert_close(coder.encode(coder.decode(regression, anchors), anchors), regression, atol=2e-4, rtol=0)
    boxes = torch.rand(10, 4)
    torch.testing.assert_close(corners_to_center(center_to_corners(boxes)), boxes, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Post-processing of ml-cvnets' own raw outputs: its detections exactly
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FIXTURES))
def test_post_processing_gives_mlcvnets_detections_exactly(expected, name):
    tensors, rule = expected[name], FIXTURES[name]
    boxes = center_to_corners(BoxCoder().decode(tensors["batch_box_regression"], tensors["anchors"]))
    photo_boxes = center_to_corners(BoxCoder().decode(tensors["photo_box_regression"], tensors["anchors"]))
    cases = [("photo_0", tensors["photo_cls_logits"][0], photo_boxes[0])]
    cases += [(f"batch_{i}", tensors["batch_cls_logits"][i], boxes[i]) for i in range(2)]
    for key, logits, image_boxes in cases:
        got_boxes, got_scores, got_labels = select_detections(logits.softmax(-1)[:, 1:], image_boxes, rule)
        assert len(got_labels) > 0
        assert torch.equal(got_labels, tensors[f"{key}_det_labels"]), key
        assert torch.equal(got_scores, tensors[f"{key}_det_scores"]), key
        assert torch.equal(got_boxes, tensors[f"{key}_det_boxes"]), key


def test_the_two_releases_rules(expected):
    counts = {name: len(expected[name]["photo_0_det_labels"]) for name in FIXTURES}
    assert counts["ssdlite_mobilevit_xx_small_320"] == 1254  # v0.1: no cap per image
    assert counts["ssdlite_mobilevitv2_050_320"] == 200  # v0.2: 200 per image
    labels = expected["ssdlite_mobilevit_xx_small_320"]["photo_0_det_labels"]
    assert torch.equal(labels, labels.sort().values)  # v0.1 lists by class
    scores = expected["ssdlite_mobilevitv2_050_320"]["photo_0_det_scores"]
    assert torch.equal(scores, scores.sort(descending=True).values)  # v0.2 by score
    assert PostProcessing.from_dict(MLCVNETS_V02.to_dict()) == MLCVNETS_V02


def test_rule_settings_are_checked():
    with pytest.raises(ValueError, match="score_threshold: expected a number in"):
        PostProcessing(score_threshold=2)
    with pytest.raises(ValueError, match="order: expected one of"):
        PostProcessing(order="random")
    with pytest.raises(ValueError, match="unknown settings"):
        PostProcessing.from_dict({"top_k": 3})
    with pytest.raises(ValueError, match="detections_per_image: expected an integer from 1 to 100000"):
        PostProcessing(detections_per_image=0)
    with pytest.raises(ValueError, match=r"candidates_per_class: expected an integer from 1 to 100000 \(mobilevit.limits"):
        PostProcessing(candidates_per_class=10**12)  # the limits module bounds a rule's counts too (issue 27)


def test_threshold_and_cap_overrides(expected):
    tensors = expected["ssdlite_mobilevit_xx_small_320"]
    boxes = center_to_corners(BoxCoder().decode(tensors["photo_box_regression"], tensors["anchors"]))[0]
    scores = tensors["photo_cls_logits"][0].softmax(-1)[:, 1:]
    all_boxes, all_scores, all_labels = select_detections(scores, boxes, MLCVNETS_V01)
    _, top_scores, top_labels = select_detections(scores, boxes, MLCVNETS_V01, max_detections=10)
    assert len(top_scores) == 10 and torch.equal(top_labels, top_labels.sort().values)  # still by class
    assert torch.equal(top_scores.sort(descending=True).values, all_scores.sort(descending=True).values[:10])
    _, high_scores, _ = select_detections(scores, boxes, MLCVNETS_V01, score_threshold=0.3)
    assert (high_scores > 0.3).all() and len(high_scores) == int((all_scores > 0.3).sum())
    empty = select_detections(scores, boxes, MLCVNETS_V01, score_threshold=1.0)
    assert [tuple(t.shape) for t in empty] == [(0, 4), (0,), (0,)]


# ---------------------------------------------------------------------------------------------------------
# Class-wise NMS against a brute-force greedy reference
# ---------------------------------------------------------------------------------------------------------
def brute_force_nms(boxes, scores, classes, threshold):
    """torchvision's CPU NMS per class, written out: stable order by decreasing score, float32 IoU without eps,
    compared with the threshold in float64."""
    kept = []
    boxes = boxes.numpy().astype(np.float32)
    for cls in sorted(set(classes.tolist())):
        members = [i for i in range(len(scores)) if int(classes[i]) == cls]
        members.sort(key=lambda i: -float(scores[i]))  # Python's sort is stable
        suppressed = set()
        for position, i in enumerate(members):
            if i in suppressed:
                continue
            kept.append(i)
            x1, y1, x2, y2 = boxes[i]
            area_i = (x2 - x1) * (y2 - y1)
            for j in members[position + 1:]:
                if j in suppressed:
                    continue
                w = max(np.float32(0), min(x2, boxes[j, 2]) - max(x1, boxes[j, 0]))
                h = max(np.float32(0), min(y2, boxes[j, 3]) - max(y1, boxes[j, 1]))
                inter = np.float32(w * h)
                area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
                iou = np.float32(inter / np.float32(np.float32(area_i + area_j) - inter))
                if float(iou) > threshold:
                    suppressed.add(j)
    return sorted(kept)


def _sorted_for_nms(boxes, scores, classes):
    order = torch.sort(classes.double() * 2 - scores.double(), stable=True).indices
    return boxes[order], scores[order], classes[order], order


def _random_case(rng: random.Random, count: int, clustered: bool, ties: bool):
    generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
    if clustered:  # boxes jittered around a few centres: long chains of suppression
        centres = torch.rand(4, 2, generator=generator)
        centre = centres[torch.randint(0, 4, (count,), generator=generator)] + 0.03 * torch.randn(count, 2, generator=generator)
    else:
        centre = torch.rand(count, 2, generator=generator)
    size = 0.05 + 0.3 * torch.rand(count, 2, generator=generator)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    scores = torch.rand(count, generator=generator)
    if ties:
        scores = (scores * 8).floor() / 8 + 0.01
    classes = torch.randint(0, 3, (count,), generator=generator)
    return boxes, scores, classes


@pytest.mark.parametrize("seed", range(12))
def test_nms_equals_brute_force(seed):
    rng = random.Random(seed)
    count = rng.choice([0, 1, 2, 7, 40, 150, 400])
    boxes, scores, classes = _random_case(rng, count, clustered=seed % 2 == 0, ties=seed % 3 == 0)
    threshold = rng.choice([0.3, 0.45, 0.5, 0.7])
    sorted_boxes, sorted_scores, sorted_classes, order = _sorted_for_nms(boxes, scores, classes)
    kept = class_wise_nms(sorted_boxes, sorted_scores, sorted_classes, threshold)
    got = sorted(order[kept].tolist())
    assert got == brute_force_nms(boxes, scores, classes, threshold)


def test_nms_iou_exactly_at_the_threshold_is_not_suppressed():
    # IoU of the first two boxes is exactly 0.5 (inter 1, union 2); the third overlaps the first by 2/3
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.5, 1.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.zeros(3, dtype=torch.long)
    kept = class_wise_nms(boxes, scores, classes, 0.5)
    assert kept.tolist() == [True, True, False] == [i in brute_force_nms(boxes, scores, classes, 0.5) for i in range(3)]
    # a threshold that float32 cannot represent is compared in float64, as torchvision does
    iou = torch.tensor([1.0 / 3.0])  # float32(1/3) is above the float64 1/3
    assert float(iou) > 1.0 / 3.0 and class_wise_nms(
        torch.tensor([[0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.9, 0.8]),
        torch.zeros(2, dtype=torch.long), 1.0 / 3.0).tolist() == [True, False]


def test_nms_with_a_chain_of_suppressions():
    # box 0 suppresses 1, so 2 (overlapping only 1) stays; 3 overlaps 2 only, so it goes: a chain of four
    boxes = torch.tensor([[0.0, 0, 1, 1], [0.3, 0, 1.3, 1], [0.6, 0, 1.6, 1], [0.9, 0, 1.9, 1]])
    kept = class_wise_nms(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.zeros(4, dtype=torch.long), 0.3)
    assert kept.tolist() == [True, False, True, False]


def test_nms_of_nothing():
    kept = class_wise_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert kept.shape == (0,) and kept.dtype == torch.bool


def test_the_prefix_shortcut_equals_nms_of_everything():
    # with a cap per image only the best candidates go through NMS: the answer must not change
    rng = random.Random(7)
    boxes, scores, classes = _random_case(rng, 3000, clustered=True, ties=False)
    table = torch.zeros(3000, 5)
    table[torch.arange(3000), classes] = scores
    capped = select_detections(table, boxes, MLCVNETS_V02)
    uncapped = select_detections(table, boxes, MLCVNETS_V02, max_detections=100_000)
    assert len(capped[2]) == 200
    for got, full in zip(capped, uncapped):
        assert torch.equal(got, full[:200])


# ---------------------------------------------------------------------------------------------------------
# Matcher and multibox loss: ml-cvnets' targets and values
# ---------------------------------------------------------------------------------------------------------
def _ground_truth(tensors):
    return [(tensors[f"loss_gt_boxes_{i}"], tensors[f"loss_gt_labels_{i}"]) for i in range(2)]


@pytest.mark.parametrize("name", list(FIXTURES))
def test_matcher_and_loss_equal_mlcvnets(expected, name):
    tensors = expected[name]
    anchors, coder = tensors["anchors"], BoxCoder()
    targets = [match_anchors(boxes, labels, anchors, coder, 0.5) for boxes, labels in _ground_truth(tensors)]
    target_labels, target_regression = torch.stack([t[1] for t in targets]), torch.stack([t[0] for t in targets])
    assert torch.equal(target_labels, tensors["loss_target_labels"])
    assert torch.equal(target_regression, tensors["loss_target_locations"])
    loss = multibox_loss(tensors["batch_cls_logits"], tensors["batch_box_regression"], target_labels,
                         target_regression, 3)
    assert torch.equal(loss.mask, tensors["loss_mining_mask"])
    assert loss.num_positives == int(tensors["loss_num_pos"]) == 24
    for value, key in ((loss.total, "loss_total"), (loss.classification, "loss_classification_sum"),
                       (loss.regression, "loss_regression_sum")):
        assert float(value) == float(tensors[key]), key  # bit-equal: the same selection, the same sums


@pytest.mark.parametrize("name", list(FIXTURES))
def test_an_image_without_boxes(expected, name):
    tensors = expected[name]
    anchors, coder = tensors["anchors"], BoxCoder()
    empty = match_anchors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), anchors, coder)
    assert torch.equal(empty[0], tensors["loss_empty1_target_locations_1"])  # -inf size targets included
    assert bool(torch.isinf(empty[0][:, 2:]).all()) and not empty[1].any()
    first = match_anchors(*_ground_truth(tensors)[0], anchors, coder)
    loss = multibox_loss(tensors["batch_cls_logits"], tensors["batch_box_regression"],
                         torch.stack([first[1], empty[1]]), torch.stack([first[0], empty[0]]))
    assert torch.equal(loss.mask, tensors["loss_empty1_mining_mask"])
    assert loss.num_positives == int(tensors["loss_empty1_num_pos"])
    assert float(loss.total) == float(tensors["loss_empty1_total"])


@pytest.mark.parametrize("name", ["ssdlite_mobilevit_xx_small_320", "ssdlite_mobilevitv2_050_320"])  # v0.1, v0.2
def test_the_compiled_loss_equals_mlcvnets_within_1e_5(expected, name):
    """Under `torch.compile` the sums are taken with fixed shapes (no anchor selection; an image without boxes
    included): one graph, the same mask, values within 1e-5 relative of ml-cvnets', gradients as eager's."""
    tensors = expected[name]
    anchors, coder = tensors["anchors"], BoxCoder()
    first = match_anchors(*_ground_truth(tensors)[0], anchors, coder)
    empty = match_anchors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), anchors, coder)
    cases = {"": [match_anchors(*truth, anchors, coder) for truth in _ground_truth(tensors)], "empty1_": [first, empty]}
    torch._dynamo.reset()
    compiled_loss = torch.compile(multibox_loss, backend="eager", fullgraph=True)
    for prefix, targets in cases.items():
        target_labels, target_regression = torch.stack([t[1] for t in targets]), torch.stack([t[0] for t in targets])
        losses, grads = [], []
        for loss_function in (compiled_loss, multibox_loss):
            logits = tensors["batch_cls_logits"].clone().requires_grad_()
            regression = tensors["batch_box_regression"].clone().requires_grad_()
            losses.append(loss_function(logits, regression, target_labels, target_regression))
            losses[-1].total.backward()
            grads.append((logits.grad, regression.grad))
        compiled = losses[0]
        assert torch.equal(compiled.mask, tensors[f"loss_{prefix}mining_mask"])
        want = float(tensors[f"loss_{prefix}total"])
        assert abs(compiled.total.item() - want) <= 1e-5 * max(1.0, abs(want))
        for got_grad, want_grad in zip(*grads):
            torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-5)
    torch._dynamo.reset()


def test_labels_in_transformers_form_give_the_same_loss(expected):
    """`labels` as transformers' detectors take them (normalised centre-size boxes): targets within 1e-5."""
    tensors = expected["ssdlite_mobilevitv2_050_320"]
    labels = [{"class_labels": classes, "boxes": corners_to_center(boxes)} for boxes, classes in _ground_truth(tensors)]
    target_labels, target_regression = detection_targets(labels, tensors["anchors"], BoxCoder(), 0.5)
    assert torch.equal(target_labels, tensors["loss_target_labels"])
    torch.testing.assert_close(target_regression, tensors["loss_target_locations"], atol=1e-5, rtol=0)
    loss = multibox_loss(tensors["batch_cls_logits"], tensors["batch_box_regression"], target_labels, target_regression)
    assert math.isclose(float(loss.total), float(tensors["loss_total"]), abs_tol=1e-5)


def test_a_batch_without_any_box_has_zero_loss_not_nan():
    anchors = AnchorGenerator(RELEASED_RATIOS)(LEVELS_AT_320)
    targets = detection_targets([{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}],
                                anchors, BoxCoder(), 0.5)
    logits = torch.randn(1, 3232, 81, requires_grad=True)
    loss = multibox_loss(logits, torch.randn(1, 3232, 4), *targets)
    assert float(loss.total.detach()) == 0.0 and loss.num_positives == 0  # v0.2's max(1, num_pos); v0.1 gave 0 / 0


def test_a_box_smaller_than_every_anchor_still_gets_its_positive():
    anchors = AnchorGenerator(RELEASED_RATIOS)(LEVELS_AT_320)
    tiny = torch.tensor([[0.30, 0.05, 0.31, 0.06]])
    _, labels = match_anchors(tiny, torch.tensor([7]), anchors, BoxCoder())
    assert int((labels == 7).sum()) == 1


@pytest.mark.parametrize("labels, match", [
    ([{"class_labels": torch.tensor([1])}], "expected a dict with 'class_labels' and 'boxes'"),
    ([{"class_labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}], r"expected classes in \[1, 3\]"),
    ([{"class_labels": torch.tensor([1.0]), "boxes": torch.rand(1, 4)}], "1-D integer tensor"),
    ([{"class_labels": torch.tensor([1]), "boxes": torch.rand(2, 4)}], r"shape \(1, 4\)"),
    ("boxes", "expected a list of 1 dicts"),
])
def test_bad_labels_are_one_line_errors(labels, match):
    with pytest.raises(ValueError, match=match):
        check_labels(labels, 1, 4)
