"""Evaluation metrics that stream over batches and need no download.

`evaluate`'s metric scripts live on the Hub, so they cannot load offline. These classes keep a confusion
matrix (segmentation) or hit counts (classification) as int64 tensors, so any number of batches, of any
resolution, accumulate exactly; nothing grows with the data set. They plug into `Trainer` with
`TrainingArguments(batch_eval_metrics=True)`: Trainer calls `compute_metrics(eval_pred, compute_result)`
once per batch (predictions already gathered from all processes) and uses the dict returned on the last.

    metrics = SegmentationMetrics(num_labels=21, ignore_index=255)
    trainer = Trainer(..., compute_metrics=metrics, args=TrainingArguments(..., batch_eval_metrics=True))

They also work outside Trainer: `update(logits, labels)` per batch, then `compute()`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import IGNORE_INDEX


def _tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


class _StreamingMetric:
    """`Trainer`'s calling convention on top of `update` / `compute` / `reset`. All that is accumulated lives
    in one int64 tensor, `state`, so processes can sum theirs (`state = all_reduce_sum(state)`)."""

    state: torch.Tensor

    def __call__(self, eval_pred, compute_result: bool = True) -> dict:
        predictions = eval_pred.predictions
        predictions = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
        self.update(predictions, eval_pred.label_ids)
        if not compute_result:
            return {}
        result = self.compute()
        self.reset()  # the next evaluation starts from zero
        return result


class ClassificationMetrics(_StreamingMetric):
    """Top-k accuracy (default top-1 as "accuracy" and top-5 as "top5_accuracy"); k larger than the number
    of classes is skipped."""

    def __init__(self, top_k: tuple[int, ...] = (1, 5)):
        if not top_k or any(not isinstance(k, int) or k < 1 for k in top_k):
            raise ValueError(f"top_k: expected positive integers, got {top_k!r}")
        self.top_k = tuple(sorted(set(top_k)))
        self.reset()

    def reset(self) -> None:
        self.state = torch.zeros(1 + len(self.top_k), dtype=torch.int64)  # [examples, hits at each k]
        self.num_classes = None

    @torch.no_grad()
    def update(self, logits, labels) -> None:
        logits, labels = _tensor(logits).detach(), _tensor(labels).detach().reshape(-1).long()
        if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
            raise ValueError(f"logits: expected (batch, num_classes) matching labels of length {labels.shape[0]}, "
                             f"got shape {tuple(logits.shape)}")
        self.num_classes = logits.shape[1]
        ranked = logits.topk(min(max(self.top_k), logits.shape[1]), dim=1).indices.cpu()
        correct = ranked == labels.cpu()[:, None]
        self.state[0] += labels.shape[0]
        for slot, k in enumerate(self.top_k, start=1):
            self.state[slot] += int(correct[:, :k].any(dim=1).sum())

    def compute(self) -> dict[str, float]:
        count = int(self.state[0])
        if count == 0:
            raise ValueError("ClassificationMetrics.compute: expected at least one update, got none")
        return {("accuracy" if k == 1 else f"top{k}_accuracy"): int(self.state[slot]) / count
                for slot, k in enumerate(self.top_k, start=1)
                if self.num_classes is None or k == 1 or k < self.num_classes}


class SegmentationMetrics(_StreamingMetric):
    """Mean IoU, pixel accuracy and per-class IoU from a confusion matrix; label pixels equal to
    `ignore_index` are left out. Logits at a lower resolution than the labels (DeepLabV3 predicts at
    1/output_stride) are upsampled bilinearly first, as the model's loss does (`align_corners` as the
    model family was trained: `ModelFamily.segmentation_align_corners`).

    Per-class IoU is NaN for a class absent from both labels and predictions; `mean_iou` averages the
    others (the convention of `evaluate`'s mean_iou and ml-cvnets).
    """

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX, id2label: dict[int, str] | None = None,
                 align_corners: bool = False):
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels: expected a positive integer, got {num_labels!r}")
        self.num_labels, self.ignore_index, self.align_corners = num_labels, ignore_index, bool(align_corners)
        self.id2label = {int(k): str(v) for k, v in (id2label or {}).items()}
        self.reset()

    def reset(self) -> None:
        self.state = torch.zeros(self.num_labels, self.num_labels, dtype=torch.int64)  # [label, prediction]

    @torch.no_grad()
    def update(self, logits, labels) -> None:
        """`logits` (B, C, h, w) or already-decided predictions (B, H, W); `labels` (B, H, W)."""
        predictions, labels = _tensor(logits).detach(), _tensor(labels).detach().long()
        if predictions.ndim == 4:
            if predictions.shape[-2:] != labels.shape[-2:]:
                predictions = F.interpolate(predictions.float(), size=labels.shape[-2:], mode="bilinear",
                                            align_corners=self.align_corners)
            predictions = predictions.argmax(dim=1)
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions: expected the shape of labels {tuple(labels.shape)}, got "
                             f"{tuple(predictions.shape)}")
        valid = labels != self.ignore_index
        labels, predictions = labels[valid].cpu(), predictions[valid].cpu().long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_labels):
            raise ValueError(f"labels: expected class ids in [0, {self.num_labels}) or {self.ignore_index} "
                             f"(ignored), got {int(labels.min())}..{int(labels.max())}")
        flat = labels * self.num_labels + predictions
        self.state += torch.bincount(flat, minlength=self.num_labels ** 2).reshape(self.num_labels, -1)

    def compute(self) -> dict[str, float | None]:
        confusion = self.state.double()
        total = confusion.sum()
        if total == 0:
            raise ValueError("SegmentationMetrics.compute: expected at least one labelled pixel, got none")
        true_positive = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        iou = true_positive / union  # NaN where a class never occurs
        result = {"mean_iou": float(iou[~iou.isnan()].mean()), "pixel_accuracy": float(true_positive.sum() / total)}
        for index, value in enumerate(iou.tolist()):
            name = self.id2label.get(index, str(index))
            result[f"iou_{name}"] = None if math.isnan(value) else value
        return result


# COCO's summary numbers (`COCOeval.stats`), by position, under the names transformers' and torchmetrics' users know
COCO_STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
              "mar_small", "mar_medium", "mar_large")


def coco_map(ground_truth: list[dict], detections: list[dict], category_ids) -> dict[str, float | None]:
    """COCO box mAP by pycocotools (`COCOeval`, iouType "bbox": mAP@[.5:.95], @.5, @.75, small / medium / large,
    and the recalls), nothing computed here. `ground_truth`: one dict per image with `image_id`, `height`,
    `width`, `boxes` (K, 4) pixel corners and `labels` (K,); `detections`: one dict per image with `image_id`,
    `boxes` (D, 4) pixel corners, `scores` and `labels`. A number COCO cannot give (no ground truth of that
    size) is None; with no detection at all every AP is 0."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": int(c)} for c in category_ids]

    def coco(entries, with_scores):
        annotations = []
        for entry in entries:
            boxes = np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4)
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            scores = np.asarray(entry["scores"], dtype=np.float64) if with_scores else None
            for k, (box, label) in enumerate(zip(xywh.tolist(), np.asarray(entry["labels"]).tolist())):
                annotation = {"id": len(annotations) + 1, "image_id": int(entry["image_id"]),
                              "category_id": int(label), "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
                if with_scores:
                    annotation["score"] = float(scores[k])
                annotations.append(annotation)
        found = COCO()
        found.dataset = {"images": images, "annotations": annotations, "categories": categories}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            found.createIndex()
        return found

    images = [{"id": int(e["image_id"]), "height": int(e["height"]), "width": int(e["width"])} for e in ground_truth]
    truth, found = coco(ground_truth, False), coco(detections, True)
    evaluation = COCOeval(truth, found, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: (None if value < 0 else float(value)) for name, value in zip(COCO_STATS, evaluation.stats)}


class DetectionMetrics:
    """COCO mAP of a detector over an evaluation set, for `Trainer` (`batch_eval_metrics=True`) or by hand
    (`update(outputs, labels)` per batch, then `compute()`).

    Each batch's outputs (logits and pred_boxes of the detector) go through `processor.post_process_object_detection`
    at the images' original sizes (the model's own rule: its score threshold, 0.05 for v1 and 0.01 for v2, which
    is what ml-cvnets' COCO evaluation keeps, NMS and caps); the detections and the ground truth (the `labels` of
    `DetectionDataset`: normalised boxes and `orig_size`) are kept as pixel boxes, and `compute` hands them to
    pycocotools (`coco_map`). Images are keyed by `image_id`: an image met twice (the padding of the last batch
    under several processes) counts once."""

    def __init__(self, processor, category_ids):
        self.processor, self.category_ids = processor, [int(c) for c in category_ids]
        self.reset()

    def reset(self) -> None:
        self.ground_truth, self.detections = {}, {}

    @torch.no_grad()
    def update(self, outputs, labels: list[dict]) -> None:
        from ..ssd import center_to_corners

        logits, pred_boxes = (outputs[0], outputs[1]) if isinstance(outputs, (tuple, list)) else \
            (outputs["logits"], outputs["pred_boxes"])
        logits, pred_boxes = _tensor(logits), _tensor(pred_boxes)
        labels = list(labels)[:len(logits)]  # gathered labels may keep the last batch's padding
        sizes = [tuple(int(v) for v in _tensor(target["orig_size"]).tolist()) for target in labels]
        found = self.processor.post_process_object_detection((logits, pred_boxes), target_sizes=sizes)
        for target, (height, width), detections in zip(labels, sizes, found):
            image_id = int(_tensor(target["image_id"]))
            if image_id in self.ground_truth:
                continue
            scale = torch.tensor([width, height, width, height], dtype=torch.float64)
            boxes = center_to_corners(_tensor(target["boxes"]).double().reshape(-1, 4)) * scale
            self.ground_truth[image_id] = {"image_id": image_id, "height": height, "width": width,
                                           "boxes": boxes.numpy(), "labels": _tensor(target["class_labels"]).numpy()}
            self.detections[image_id] = {"image_id": image_id, **{k: v.cpu().numpy() for k, v in detections.items()}}

    def compute(self) -> dict[str, float | None]:
        if not self.ground_truth:
            raise ValueError("DetectionMetrics.compute: expected at least one update, got none")
        return coco_map(list(self.ground_truth.values()), list(self.detections.values()), self.category_ids)

    def __call__(self, eval_pred, compute_result: bool = True) -> dict:
        self.update(eval_pred.predictions, eval_pred.label_ids)
        if not compute_result:
            return {}
        result = self.compute()
        self.reset()
        return result
