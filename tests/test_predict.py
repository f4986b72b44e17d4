"""`mobilevit predict`: happy paths for both tasks, and a one-line error for every kind of bad input."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mobilevit import cli
from mobilevit.predict import class_areas, color_palette


@pytest.fixture(scope="module")
def images(tmp_path_factory, photo):
    """The photo as JPEG, grayscale PNG and RGBA PNG, plus files that are not images."""
    folder = tmp_path_factory.mktemp("images")
    photo.save(folder / "photo.jpg", quality=95)
    photo.convert("L").save(folder / "gray.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "truncated.jpg").write_bytes((folder / "photo.jpg").read_bytes()[:600])
    return folder


def run(capsys, *argv):
    code = cli.main(["predict", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_classification_prints_top_k_for_jpeg_gray_and_rgba(saved_classifier, images, capsys):
    paths = [images / "photo.jpg", images / "gray.png", images / "rgba.png"]
    code, out, err = run(capsys, *paths, "--model", saved_classifier, "--top-k", 2, "--json")
    assert code == 0, err
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    for result in results:
        scores = [p["score"] for p in result["predictions"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        assert {p["label"] for p in result["predictions"]} <= {"cat", "dog", "bird"}

    # the same top label as the pipeline on that image
    import mobilevit

    expected = mobilevit.pipeline(model=saved_classifier)(str(paths[0]), top_k=1)[0]["label"]
    assert results[0]["predictions"][0]["label"] == expected

    code, out, _ = run(capsys, paths[0], "--model", saved_classifier, "--top-k", 10)
    assert code == 0 and out.splitlines()[0] == str(paths[0]) and len(out.splitlines()) == 1 + 3  # k capped at 3


def test_segmentation_writes_mask_and_figure_and_prints_class_areas(saved_segmenter, images, tmp_path, capsys):
    out_dir = tmp_path / "masks"
    code, out, err = run(capsys, images / "photo.jpg", images / "rgba.png", "--model", saved_segmenter,
                         "--output-dir", out_dir, "--json")
    assert code == 0, err
    results = json.loads(out)
    photo = Image.open(images / "photo.jpg")
    for result in results:
        mask = Image.open(result["mask"])
        assert mask.mode == "P" and mask.size == photo.size
        ids = np.asarray(mask)
        # the printed areas are the shares of the mask's pixels
        expected = {a["label"]: a["percent"] for a in class_areas(ids, {i: n for i, n in enumerate(
            ["background", "circle", "square", "triangle"])})}
        assert {a["label"]: a["percent"] for a in result["areas"]} == pytest.approx(expected)
        assert sum(a["percent"] for a in result["areas"]) == pytest.approx(100.0)
        figure = Image.open(result["figure"])
        assert figure.format == "PNG" and figure.width > photo.width
    assert sorted(os.listdir(out_dir)) == ["photo_mask.png", "photo_segmentation.png", "rgba_mask.png",
                                           "rgba_segmentation.png"]

    # text output; an existing output is not replaced without --overwrite
    before = (out_dir / "photo_mask.png").read_bytes()
    code, out, err = run(capsys, images / "photo.jpg", "--model", saved_segmenter, "--output-dir", out_dir)
    assert code == 1 and "photo_mask.png" in err and "--overwrite" in err and out == ""
    assert (out_dir / "photo_mask.png").read_bytes() == before
    code, out, err = run(capsys, images / "photo.jpg", "--model", saved_segmenter, "--output-dir", out_dir,
                         "--overwrite")
    assert code == 0 and "mask: " in out and "%  " in out


@pytest.mark.parametrize("name, message", [
    ("missing.jpg", "does not exist"),
    ("notes.txt", "is not an image file"),
    ("truncated.jpg", "cannot be decoded"),
])
def test_bad_images_give_one_line_naming_the_path(saved_classifier, images, capsys, name, message):
    code, out, err = run(capsys, images / "photo.jpg", images / name, "--model", saved_classifier)
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(images / name) in lines[0]
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable_image(saved_classifier, images, tmp_path, capsys):
    locked = tmp_path / "locked.jpg"
    locked.write_bytes((images / "photo.jpg").read_bytes())
    locked.chmod(0)
    code, _, err = run(capsys, locked, "--model", saved_classifier)
    assert code != 0 and "permission denied" in err and str(locked) in err


def test_folders_that_are_not_models(images, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for model, message in [(tmp_path, "has no config.json"), (images / "notes.txt", "got the file"),
                           (tmp_path / "other", "is a 'bert' model, expected one of ['mobilevit', 'mobilevitv2']"), (tmp_path / "missing", "cannot load")]:
        code, out, err = run(capsys, images / "photo.jpg", "--model", model)
        lines = err.strip().splitlines()
        assert code != 0 and out == "" and len(lines) == 1, err
        assert message in lines[0] and str(model) in lines[0]


def test_palette_is_distinct_and_starts_black():
    palette = color_palette(21)
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert len({tuple(c) for c in palette.tolist()}) == 21
