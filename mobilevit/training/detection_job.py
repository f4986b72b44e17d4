"""The detection parts of a training run (`train_and_save` with task "object-detection"): the recipe's defaults,
the detector to start from, its processor, the datasets and metric for `Trainer`, and the picture of predictions.

The recipe is ml-cvnets' SSDLite training (`config/detection/ssd_mobilevit_*_320.yaml`, cvnets-v0.2's
`ssd_coco/mobilevit_v2.yaml`): 320x320 inputs, no multi-scale sampler (`batch_sampler`), batch 32 per process,
AdamW with a peak learning rate of 9e-4 on a cosine schedule, weight decay 0.01 (v1) or 0.05 (v2), the SSD
augmentation (`detection_transforms`). Differences, for runs of minutes rather than 200 epochs on 4 GPUs: the
warm-up is the run's `warmup_ratio` (ml-cvnets: 500 iterations from 9e-5), the schedule ends at 0 (ml-cvnets:
1e-6), and no EMA of the weights is kept. Evaluation is COCO mAP by pycocotools, on the family's evaluation
preprocessing (the whole image stretched to the input size) and the model's own post-processing rule.

Where the detector comes from:
- a variant: new, every weight from its initialisation;
- a classification (or segmentation, or backbone) folder: its backbone weights, new SSD layers (ml-cvnets
  starts its detectors from an ImageNet classifier this way);
- a detector folder: everything, and its head too when its classes include every class of the data (matched by
  name: a COCO detector fine-tuned on data of some COCO classes keeps what it knows of them); otherwise the
  heads' last convolutions are new (ml-cvnets' heads predict boxes and classes with one convolution, so both
  start afresh), for the background and the data's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import auto
from ..tasks import OBJECT_DETECTION
from .detection_data import (BACKGROUND, DetectionData, DetectionDataset, DetectionSplit, label_ids_for,
                             prepare_detection_data)
from .detection_transforms import DetectionAugmentation
from .metrics import DetectionMetrics

IMAGE_SIZE = 320
LEARNING_RATE = 9e-4
# ml-cvnets' weight decay for its detectors, by the release that trained each family
WEIGHT_DECAY = {"ml-cvnets v0.1": 0.01, "ml-cvnets v0.2": 0.05}
SHOWN_PREDICTIONS = 8  # held-out images in predictions.png
SHOWN_SCORE = 0.3  # detections drawn there
SHOWN_SIDE = 320  # smaller images are enlarged to about this for the picture


def recipe_defaults(job) -> dict:
    """The learning rate, weight decay and image size a detection run takes where the job leaves them open."""
    config = _start_config(job)
    family = auto.family_of(config)
    size = IMAGE_SIZE
    if job.model is not None and auto.family_of(config).task_named_by(config) == OBJECT_DETECTION:
        size = int(config.image_size[0] if isinstance(config.image_size, (list, tuple)) else config.image_size)
    return {"learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY.get(family.preprocessing.release, 0.01),
            "image_size": size}


def _start_config(job):
    return auto.load_config(job.model) if job.model is not None else auto.new_config(job.variant, OBJECT_DETECTION)


def load_data(job, check_size=None) -> DetectionData:
    return prepare_detection_data(job.data, labels=job.labels, seed=job.seed, skip_bad=job.skip_bad_images,
                                  check_size=check_size)


def _own_task(config) -> str | None:
    return auto.family_of(config).task_named_by(config)


def _config_overrides(job, own_task: str | None, image_size: int) -> dict:
    """What `build_detector` changes in the config it starts from: the input size, and (not from a detector) an
    undilated backbone: a segmentation backbone runs dilated (output stride 8 or 16); the same weights undilated
    give the stride-16 and stride-32 maps the SSD levels read."""
    overrides = {"image_size": image_size, **job.config_overrides}
    if job.model is not None and own_task != OBJECT_DETECTION:
        overrides = {"output_stride": 32, **overrides}
    return overrides


def trained_config(job, config):
    """The config of the detector `build_detector` makes from `config` (the run's start, overrides applied), but
    for its label set, which comes with the data and sizes only the heads' last convolutions: what the batch
    sizes are checked against (`job.check_batch_sizes`) before the data is read."""
    return type(config).from_dict({**config.to_dict(), **_config_overrides(job, _own_task(config), job.image_size)})


@dataclass
class DetectorStart:
    """The model a run trains, the id of each data class in it, and what the run says about where it came from."""

    model: object
    model_ids: np.ndarray  # model label id of each of the data's categories
    note: str | None


def build_detector(job, data: DetectionData, image_size: int) -> DetectorStart:
    """The detector to train (see the module docstring), in the data's label set `data.id2label` (the data's own
    classes, or a checkpoint's when resuming: `DetectionData.use_label_set`), or a detector folder's whose classes
    include every class of the data (matched by name)."""
    fresh = {"id2label": data.id2label, "label2id": {v: k for k, v in data.id2label.items()},
             "num_labels": len(data.id2label)}
    if job.model is None:
        overrides = _config_overrides(job, None, image_size)
        config = auto.new_config(job.variant, OBJECT_DETECTION, **fresh, **overrides)
        return DetectorStart(auto.new_model(config, OBJECT_DETECTION), data.model_ids, None)
    config = auto.load_config(job.model)
    own_task = _own_task(config)
    overrides = _config_overrides(job, own_task, image_size)
    if own_task == OBJECT_DETECTION:
        folder_labels = {int(i): name for i, name in config.id2label.items()}
        label2id = {name: i for i, name in folder_labels.items() if i != 0}
        model_ids = label_ids_for(data.categories, label2id)
        # a label set the run must keep (a checkpoint's) decides; else the folder's, when it holds the data's classes
        if model_ids is not None and (data.label_set is None or data.label_set == folder_labels):
            model = auto.load_model(job.model, OBJECT_DETECTION, **overrides)
            return DetectorStart(model, model_ids, f"model: keeps the head of {str(job.model)!r}: its "
                                 f"{len(label2id)} classes include the data's {len(data.categories)} (matched by "
                                 f"name)")
        missing = [name for name in data.categories if name not in label2id][:3]
        why = (f"{', '.join(map(repr, missing))} ... are not among the {len(label2id)} of {str(job.model)!r}" if missing
               else f"the checkpoint resumed from has other classes than {str(job.model)!r}")
        note = (f"model: the heads' last layers are new, for the data's {len(data.categories)} classes ({why}); the "
                f"backbone and the other SSD layers keep their weights")
    else:
        note = (f"model: the backbone of {str(job.model)!r} ({own_task or 'backbone'}) with new SSD layers for the "
                f"data's {len(data.categories)} classes")
    # the label-dependent layers start afresh, even for as many classes as the folder's (`auto.load_model`)
    model = auto.load_model(job.model, OBJECT_DETECTION, new_head={**fresh, **overrides})
    return DetectorStart(model, data.model_ids, note)


def detection_processor(model):
    """The processor saved with the detector: its family's evaluation preprocessing at the model's input size
    and the family's post-processing rule (`ModelFamily.image_processor`)."""
    return auto.image_processor_for(model.config, OBJECT_DETECTION)


def datasets_for(data: DetectionData, start: DetectorStart, processor, image_size: int, flip_prob: float):
    """(train, validation, test or None) `DetectionDataset`s: SSD augmentation for training, the processor's
    preprocessing for evaluation."""
    size = (image_size, image_size)
    augmentation = DetectionAugmentation(size, processor, flip_prob=flip_prob)
    train = DetectionDataset(data.train, start.model_ids, processor, size, augmentation)
    evaluation = [DetectionDataset(split, start.model_ids, processor, size) if split is not None else None
                  for split in (data.validation, data.test)]
    return train, *evaluation


def metrics_for(model, processor) -> DetectionMetrics:
    return DetectionMetrics(processor, [i for i in model.config.id2label if int(i) != 0])


def save_predictions_picture(model, processor, split: DetectionSplit, model_ids: np.ndarray, path: Path,
                             title: str) -> None:
    """PNG: up to `SHOWN_PREDICTIONS` held-out images with their detections (score >= SHOWN_SCORE) drawn on the
    image's own pixels (small images enlarged to `SHOWN_SIDE`, so that the tags stay readable), above the true
    boxes."""
    import io

    import torch
    from matplotlib.figure import Figure
    from PIL import Image

    from ..predict import color_palette, detections_picture

    palette = color_palette(max(model.config.num_labels, 2))
    count = min(SHOWN_PREDICTIONS, len(split))
    figure = Figure(figsize=(2.6 * count, 5.6))
    axes = figure.subplots(2, count, squeeze=False)
    model = model.eval()
    for column in range(count):
        pixels = split.image(column)
        height, width = pixels.shape[:2]
        with torch.inference_mode():
            inputs = processor(images=pixels, return_tensors="pt").to(model.device)
            found = processor.post_process_object_detection(model(**inputs), threshold=SHOWN_SCORE,
                                                            target_sizes=[(height, width)])[0]
        zoom = max(1, SHOWN_SIDE // max(height, width))
        shown = np.asarray(Image.fromarray(pixels).resize((width * zoom, height * zoom), Image.BILINEAR))
        predicted = [_drawn(model, int(label), float(score), box, zoom) for label, score, box in
                     zip(found["labels"], found["scores"], found["boxes"].tolist())]
        truth = [_drawn(model, int(model_ids[label]), 1.0, box, zoom) for label, box in
                 zip(split.labels[column], split.boxes[column].tolist())]
        for row, (boxes, name) in enumerate(((predicted, "predicted"), (truth, "true"))):
            picture = Image.open(io.BytesIO(detections_picture(shown, boxes, palette, scores=row == 0)))
            axes[row, column].imshow(np.asarray(picture))
            axes[row, column].set_axis_off()
            if column == 0:
                axes[row, column].set_title(name, loc="left", fontsize=10)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def _drawn(model, label: int, score: float, box, zoom: int) -> dict:
    return {"label": model.config.id2label.get(label, str(label)), "class_id": label, "score": score,
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (float(v) * zoom for v in box)))}


__all__ = ["IMAGE_SIZE", "LEARNING_RATE", "WEIGHT_DECAY", "BACKGROUND", "recipe_defaults", "load_data",
           "build_detector", "detection_processor", "datasets_for", "metrics_for", "save_predictions_picture",
           "DetectorStart"]
