"""COCO mAP: pycocotools computes it (nothing by hand); checked on cases with known answers and against
pycocotools run the usual way (instances and results JSON files, `loadRes`) on a detector's post-processed
outputs."""

import json

import numpy as np
import pytest
import torch

from mobilevit import auto
from mobilevit.training.metrics import DetectionMetrics, coco_map


def _truth(boxes, labels, image_id=1, size=(200, 300)):
    return {"image_id": image_id, "height": size[0], "width": size[1], "boxes": np.array(boxes, np.float64),
            "labels": np.array(labels)}


def _found(boxes, scores, labels, image_id=1):
    return {"image_id": image_id, "boxes": np.array(boxes, np.float64).reshape(-1, 4), "scores": np.array(scores),
            "labels": np.array(labels)}


def test_perfect_detections_score_one():
    truth = [_truth([[10, 10, 50, 50], [100, 20, 250, 180]], [1, 2])]
    result = coco_map(truth, [_found([[10, 10, 50, 50], [100, 20, 250, 180]], [0.9, 0.8], [1, 2])], [1, 2])
    for name in ("map", "map_50", "map_75", "mar_100"):
        assert result[name] == pytest.approx(1.0)
    # 40x40 = 1600 px is "medium" (32^2..96^2), 150x160 "large"; no small object: no number, not 0
    assert result["map_medium"] == pytest.approx(1.0) and result["map_large"] == pytest.approx(1.0)
    assert result["map_small"] is None


def test_a_shifted_box_counts_at_the_thresholds_its_iou_reaches():
    """IoU([10, 10, 50, 50], [20, 10, 60, 50]) = 1200 / 2000 = 0.6: a hit at IoU 0.50, 0.55 and 0.60 of COCO's ten
    thresholds, so class 1's AP is 0.3; class 2 is missed (AP 0), and mAP averages the classes."""
    truth = [_truth([[10, 10, 50, 50], [100, 20, 250, 180]], [1, 2])]
    result = coco_map(truth, [_found([[20, 10, 60, 50]], [0.9], [1])], [1, 2])
    assert result["map"] == pytest.approx(0.15)
    assert result["map_50"] == pytest.approx(0.5) and result["map_75"] == pytest.approx(0.0)


def test_ranking_a_false_positive_first_halves_precision():
    """Two objects, three detections: a confident false positive, then both hits. Precision at recall 0.5 and 1.0
    is 1/2 and 2/3; COCO interpolates (the best precision at any higher recall), so AP@.5 = 2/3 over the 101
    recall points."""
    truth = [_truth([[10, 10, 50, 50], [60, 60, 100, 100]], [1, 1])]
    found = _found([[150, 150, 190, 190], [10, 10, 50, 50], [60, 60, 100, 100]], [0.9, 0.8, 0.7], [1, 1, 1])
    assert coco_map(truth, [found], [1])["map_50"] == pytest.approx(2 / 3, abs=1e-9)


def test_no_detection_at_all_is_zero_and_a_small_object_is_small():
    truth = [_truth([[10, 10, 30, 30]], [1])]  # 20x20 = 400 px: small
    result = coco_map(truth, [_found([], [], [])], [1])
    assert result["map"] == 0.0 and result["map_small"] == 0.0 and result["map_medium"] is None


def _detector_outputs():
    """logits and pred_boxes of a 3-class detector (background + 2) for two images, as a trained one would give:
    confident hits, a duplicate, a weak false positive, a miss."""
    anchors = 6
    logits = torch.full((2, anchors, 3), -4.0)
    logits[..., 0] = 4.0  # background everywhere, except:
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(2, anchors, 1)
    hits = [(0, 0, 1, [0.25, 0.3, 0.3, 0.4], 5.0), (0, 1, 2, [0.7, 0.6, 0.3, 0.3], 3.0),
            (0, 2, 2, [0.71, 0.61, 0.3, 0.3], 1.0),  # a near-duplicate: NMS removes it
            (0, 3, 1, [0.9, 0.1, 0.1, 0.1], 0.5),  # a weak false positive
            (1, 0, 1, [0.4, 0.5, 0.5, 0.5], 4.0)]  # image 1's second object is missed
    for image, anchor, label, box, score in hits:
        logits[image, anchor, 0], logits[image, anchor, label] = 0.0, score
        boxes[image, anchor] = torch.tensor(box)
    labels = [{"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.26, 0.31, 0.3, 0.4], [0.7, 0.6, 0.3, 0.28]]),
               "image_id": torch.tensor(7), "orig_size": torch.tensor([240, 320])},
              {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.4, 0.5, 0.45, 0.5], [0.2, 0.2, 0.1, 0.1]]),
               "image_id": torch.tensor(9), "orig_size": torch.tensor([100, 150])}]
    return logits, boxes, labels


@pytest.mark.parametrize("variant", ["xx-small", "mobilevitv2-0.5"])
def test_detection_metrics_equal_pycocotools_run_from_json_files(tmp_path, variant):
    """The metric post-processes with the model's own rule and scores with pycocotools; here pycocotools reads the
    same ground truth and detections the usual way (instances JSON, results JSON through `loadRes`)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    processor = auto.image_processor_for(auto.new_config(variant, "object-detection"), "object-detection")
    logits, pred_boxes, labels = _detector_outputs()
    metric = DetectionMetrics(processor, [1, 2])
    metric.update((logits[:1], pred_boxes[:1]), labels[:1])
    metric.update((logits[1:], pred_boxes[1:]), labels[1:])
    ours = metric.compute()

    detections = processor.post_process_object_detection((logits, pred_boxes), target_sizes=[(240, 320), (100, 150)])
    images, annotations, results = [], [], []
    for target, found in zip(labels, detections):
        height, width = target["orig_size"].tolist()
        images.append({"id": int(target["image_id"]), "height": height, "width": width})
        for (cx, cy, w, h), label in zip(target["boxes"].tolist(), target["class_labels"].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": int(target["image_id"]), "category_id": label,
                                "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height],
                                "area": w * width * h * height, "iscrowd": 0})
        for (x1, y1, x2, y2), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(),
                                                  found["labels"].tolist()):
            results.append({"image_id": int(target["image_id"]), "category_id": label, "score": score,
                            "bbox": [x1, y1, x2 - x1, y2 - y1]})
    (tmp_path / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    (tmp_path / "results.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(tmp_path / "instances.json"))
        evaluation = COCOeval(truth, truth.loadRes(str(tmp_path / "results.json")), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    expected = evaluation.stats
    assert ours["map"] == pytest.approx(expected[0], abs=1e-12)
    assert [ours[k] for k in ("map_50", "map_75")] == pytest.approx(list(expected[1:3]), abs=1e-12)
    assert 0.2 < ours["map"] < 0.9 and 0.5 <= ours["map_50"] < 1.0  # a case with something to get wrong


def test_an_image_met_twice_counts_once_and_trainer_calls_reset_after_the_result():
    from transformers import EvalPrediction

    processor = auto.image_processor_for(auto.new_config("xx-small", "object-detection"), "object-detection")
    logits, pred_boxes, labels = _detector_outputs()
    once = DetectionMetrics(processor, [1, 2])
    once.update((logits, pred_boxes), labels)
    twice = DetectionMetrics(processor, [1, 2])
    # the last batch padded with its first image again (several processes), and labels longer than predictions
    twice.update((torch.cat([logits, logits[:1]]), torch.cat([pred_boxes, pred_boxes[:1]])), labels + labels[:1] * 2)
    assert twice.compute() == once.compute()
    assert twice(EvalPrediction((logits, pred_boxes), labels), compute_result=False) == {}
    result = twice(EvalPrediction((logits, pred_boxes), labels), compute_result=True)
    assert result == once.compute() and twice.ground_truth == {}
    with pytest.raises(ValueError, match="expected at least one update"):
        twice.compute()
