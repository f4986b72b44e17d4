"""Streaming metrics against numbers worked out by hand."""

import pytest
import torch
from transformers import EvalPrediction

from mobilevit.training.metrics import ClassificationMetrics, SegmentationMetrics


def test_segmentation_metrics_equal_a_hand_computed_confusion_matrix():
    # 3 classes; 255 = ignored. Labels / predictions of one 2x4 image, fed as two batches.
    labels = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    metrics = SegmentationMetrics(num_labels=3, id2label={0: "bg", 1: "cat", 2: "dog"})
    metrics.update(predicted[:, :1], labels[:, :1])
    metrics.update(predicted[:, 1:], labels[:, 1:])
    # counted pixels (label, prediction): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0); the two 255 pixels are ignored
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(metrics.state, expected)
    result = metrics.compute()
    # IoU = TP / (TP + FP + FN): bg 1/(1+1+1), cat 2/(2+1+0), dog 1/(1+0+1)
    assert result["iou_bg"] == pytest.approx(1 / 3)
    assert result["iou_cat"] == pytest.approx(2 / 3)
    assert result["iou_dog"] == pytest.approx(1 / 2)
    assert result["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert result["pixel_accuracy"] == pytest.approx(4 / 6)


def test_segmentation_upsamples_low_resolution_logits_and_skips_absent_classes():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, :, 0] = 5.0  # left half -> class 0
    logits[0, 1, :, 1] = 5.0  # right half -> class 1
    metrics = SegmentationMetrics(num_labels=3)
    metrics.update(logits, labels)
    result = metrics.compute()
    assert result["mean_iou"] == pytest.approx(1.0)  # class 2 never occurs: left out of the mean
    assert result["iou_2"] is None


def test_trainer_calling_convention_streams_and_resets():
    metrics = ClassificationMetrics(top_k=(1, 2))
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1, 2, 1])
    # top-1 hits: yes, no, no, no; top-2 hits: yes, yes (1 is 2nd), yes (2 is 2nd), no
    assert metrics(EvalPrediction(logits[:2], labels[:2]), compute_result=False) == {}
    result = metrics(EvalPrediction(logits[2:], labels[2:]), compute_result=True)
    assert result == {"accuracy": pytest.approx(1 / 4), "top2_accuracy": pytest.approx(3 / 4)}
    again = metrics(EvalPrediction(logits[:1].numpy(), labels[:1].numpy()), compute_result=True)
    assert again["accuracy"] == 1.0  # state was reset after the previous result


def test_top5_is_skipped_when_it_is_trivial():
    metrics = ClassificationMetrics()
    metrics.update(torch.randn(6, 4), torch.arange(6) % 4)
    assert set(metrics.compute()) == {"accuracy"}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="num_labels"):
        SegmentationMetrics(num_labels=0)
    metrics = SegmentationMetrics(num_labels=2)
    with pytest.raises(ValueError, match="labels"):
        metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="compute"):
        SegmentationMetrics(num_labels=2).compute()
    with pytest.raises(ValueError, match="logits"):
        ClassificationMetrics().update(torch.zeros(3), torch.zeros(3))
