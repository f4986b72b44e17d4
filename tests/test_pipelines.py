"""transformers pipelines over this package's classes: `mobilevit.pipeline` and plain `transformers.pipeline`."""

import numpy as np
import pytest
import torch
import transformers

import mobilevit
from mobilevit import MobileViTForImageClassification, MobileViTForSemanticSegmentation, MobileViTImageProcessor
from mobilevit.auto import NotAModelError, load_model_and_processor, task_of
from mobilevit.pipelines import pipeline


def direct_top_k(folder, image, k):
    model, processor, _ = load_model_and_processor(folder)
    with torch.no_grad():
        probabilities = model(**processor(images=image, return_tensors="pt")).logits.softmax(-1)[0]
    scores, indices = probabilities.topk(k)
    return [(model.config.id2label[int(i)], float(s)) for s, i in zip(scores, indices)]


def direct_class_map(folder, image, center_crop=False):
    """The class map of the whole image (`mobilevit.pipeline`), or, with `center_crop`, of the processor's crop
    stretched over the image (stock transformers' pipeline)."""
    model, processor, _ = load_model_and_processor(folder)
    with torch.no_grad():
        outputs = model(**processor(images=image, do_center_crop=center_crop, return_tensors="pt"))
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0].numpy()


def test_classification_pipeline_from_folder_equals_a_direct_model_call(saved_classifier, photo):
    classify = pipeline(model=str(saved_classifier))  # task inferred from config.architectures
    assert type(classify.model) is MobileViTForImageClassification  # ours, not stock transformers'
    assert type(classify.image_processor) is MobileViTImageProcessor
    got = [(p["label"], p["score"]) for p in classify(photo, top_k=3)]
    expected = direct_top_k(saved_classifier, photo, 3)
    assert [label for label, _ in got] == [label for label, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5, atol=1e-7)


def test_segmentation_pipeline_gives_one_mask_per_class_present_equal_to_the_argmax(saved_segmenter, photo):
    segment = pipeline("semantic-segmentation", model=saved_segmenter)
    assert type(segment.model) is MobileViTForSemanticSegmentation
    annotations = segment(photo)
    class_map = direct_class_map(saved_segmenter, photo)
    names = segment.model.config.id2label
    present = [names[int(c)] for c in np.unique(class_map)]
    assert len(present) >= 2, "the test model should predict more than one class on the photo"
    assert [a["label"] for a in annotations] == present
    for annotation in annotations:
        class_id = segment.model.config.label2id[annotation["label"]]
        assert annotation["mask"].size == photo.size
        np.testing.assert_array_equal(np.asarray(annotation["mask"]), (class_map == class_id).astype(np.uint8) * 255)


@pytest.mark.parametrize("size", [(288, 96), (96, 288)], ids=["wide", "tall"])
def test_segmentation_pipeline_covers_the_whole_of_a_non_square_photo(saved_segmenter, photo, size):
    from mobilevit.image_reading import image_pixels
    from mobilevit.predict import segment as predict_segment

    image = photo.resize(size)
    segment = pipeline(model=saved_segmenter)
    masks = {a["label"]: np.asarray(a["mask"]) > 0 for a in segment(image)}
    model, processor, _ = load_model_and_processor(saved_segmenter)
    expected = predict_segment(model, processor, image_pixels(np.asarray(image), "image"))  # tested on off-centre objects
    assert processor.do_center_crop  # the folder's processor crops; the pipeline's copy does not
    got = np.full(expected.shape, -1)
    for label, mask in masks.items():
        assert mask.shape == expected.shape
        got[mask] = model.config.label2id[label]
    assert (got == expected).mean() > 0.999


def test_pipeline_with_model_and_processor_objects(saved_classifier, saved_segmenter, photo):
    model = MobileViTForImageClassification.from_pretrained(saved_classifier).eval()
    processor = MobileViTImageProcessor.from_pretrained(saved_classifier)
    via_transformers = transformers.pipeline("image-classification", model=model, image_processor=processor)
    via_helper = mobilevit.pipeline(model=model, image_processor=processor)
    assert via_transformers(photo, top_k=2) == via_helper(photo, top_k=2)
    assert [p["label"] for p in via_helper(photo, top_k=2)] == [l for l, _ in direct_top_k(saved_classifier, photo, 2)]

    segmenter = MobileViTForSemanticSegmentation.from_pretrained(saved_segmenter).eval()
    segment = transformers.pipeline("image-segmentation", model=segmenter,
                                    image_processor=MobileViTImageProcessor.from_pretrained(saved_segmenter))
    class_map = direct_class_map(saved_segmenter, photo, center_crop=True)  # transformers' own pipeline crops
    assert [a["label"] for a in segment(photo)] == [segmenter.config.id2label[int(c)] for c in np.unique(class_map)]


def test_plain_transformers_pipeline_on_the_folder_loads_stock_classes_that_agree(saved_classifier, saved_segmenter, photo):
    stock = transformers.pipeline("image-classification", model=str(saved_classifier))
    assert type(stock.model).__module__.startswith("transformers.")  # the folder is interchangeable
    ours = pipeline(model=saved_classifier)
    assert stock(photo, top_k=1)[0]["label"] == ours(photo, top_k=1)[0]["label"]

    stock_segment = transformers.pipeline("image-segmentation", model=str(saved_segmenter))
    assert type(stock_segment.model).__module__.startswith("transformers.")
    stock_masks = {a["label"]: np.asarray(a["mask"]) > 0 for a in stock_segment(photo)}
    class_map = direct_class_map(saved_segmenter, photo, center_crop=True)
    names = stock_segment.model.config.id2label
    stock_map = np.full(class_map.shape, -1)
    for label, mask in stock_masks.items():
        stock_map[mask] = stock_segment.model.config.label2id[label]
    # stock transformers resizes with Pillow (antialiased), this package as ml-cvnets (OpenCV bilinear): the
    # pixels differ by ~1/255, so a few boundary pixels may flip; the maps must otherwise agree.
    assert (stock_map == class_map).mean() > 0.98, names


def test_task_inference_and_bad_inputs(saved_classifier, tmp_path):
    config = mobilevit.MobileViTConfig.from_pretrained(saved_classifier)
    assert task_of(config) == "image-classification"
    with pytest.raises(ValueError, match="task: expected one of"):
        pipeline("depth-estimation", model=saved_classifier)
    with pytest.raises(TypeError, match="MobileViTForSemanticSegmentation for task 'semantic-segmentation'"):
        pipeline("image-segmentation", model=MobileViTForImageClassification(config))
    with pytest.raises(NotAModelError, match="has no config.json"):
        pipeline(model=tmp_path)
    with pytest.raises(TypeError, match="model: expected a folder path"):
        pipeline(model=42)
    config.architectures = None
    with pytest.raises(ValueError, match="config.architectures: expected one of"):
        task_of(config)


def test_detection_pipeline_equals_the_processor_and_stock_transformers_pipeline(saved_detector, photo):
    """mobilevit.pipeline (task read from the folder) and stock transformers' object-detection pipeline on the same
    model and processor give the same detections, those of the processor's post-processing in the photo's pixels."""
    import logging

    import transformers

    detect = pipeline(model=saved_detector)
    ours = detect(photo, threshold=0.3)
    model, processor, task = load_model_and_processor(saved_detector)
    assert task == "object-detection" and ours
    with torch.inference_mode():
        outputs = model(**processor(images=photo, return_tensors="pt"))
    direct = processor.post_process_object_detection(outputs, threshold=0.3,
                                                     target_sizes=[(photo.height, photo.width)])[0]
    assert [d["score"] for d in ours] == pytest.approx(direct["scores"].tolist(), abs=1e-6)
    assert [d["label"] for d in ours] == [model.config.id2label[int(i)] for i in direct["labels"]]
    assert [d["box"] for d in ours] == [dict(zip(("xmin", "ymin", "xmax", "ymax"), b.int().tolist()))
                                        for b in direct["boxes"]]
    assert all(0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= photo.width and
               0 <= d["box"]["ymin"] <= d["box"]["ymax"] <= photo.height for d in ours)
    logging.getLogger("transformers.pipelines.base").setLevel(logging.CRITICAL)  # stock logs "not supported"
    try:
        stock = transformers.pipeline("object-detection", model=model, image_processor=processor)
    finally:
        logging.getLogger("transformers.pipelines.base").setLevel(logging.NOTSET)
    assert stock(photo, threshold=0.3) == ours
    assert detect(photo) == stock(photo)  # the pipeline's own default threshold (0.5) in both
