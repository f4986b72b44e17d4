"""`mobilevit predict`: happy paths for both tasks, and a one-line error for every kind of bad input."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit import MobileViTImageProcessor, auto, cli
from mobilevit import predict as predict_module
from mobilevit.errors import EXIT_DATA, EXIT_USAGE
from mobilevit.predict import PredictError, class_areas, color_palette


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
    assert sorted(os.listdir(out_dir)) == ["photo_mask.png", "photo_segmentation.png", "predictions.jsonl",
                                           "rgba_mask.png", "rgba_segmentation.png"]
    assert [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()] == results

    # text output; an existing output is not replaced without --overwrite
    before = (out_dir / "photo_mask.png").read_bytes()
    code, out, err = run(capsys, images / "photo.jpg", "--model", saved_segmenter, "--output-dir", out_dir)
    assert code == 1 and "photo_mask.png" in err and "--overwrite" in err and out == ""
    assert (out_dir / "photo_mask.png").read_bytes() == before
    code, out, err = run(capsys, images / "photo.jpg", "--model", saved_segmenter, "--output-dir", out_dir,
                         "--overwrite")
    assert code == 0 and "mask: " in out and "%  " in out


@pytest.mark.parametrize("name, message", [
    ("missing.jpg", "no such file or folder"),
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
                           (tmp_path / "other", "is a 'bert' model, expected one of ['mobilevit', 'mobilevitv2']"),
                           (tmp_path / "missing", "no such folder")]:
        code, out, err = run(capsys, images / "photo.jpg", "--model", model)
        lines = err.strip().splitlines()
        assert code != 0 and out == "" and len(lines) == 1, err
        assert message in lines[0] and str(model) in lines[0]


def test_palette_is_distinct_and_starts_black():
    palette = color_palette(21)
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert len({tuple(c) for c in palette.tolist()}) == 21


# -- every mistake is one line, found before the model runs ---------------------------------------------------------
def one_line_error(capsys, *argv) -> tuple[int, str]:
    code, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("mobilevit predict: error: "), err
    assert "Traceback" not in err
    return code, lines[0]


@pytest.fixture
def broken_model(saved_classifier, tmp_path):
    """A copy of the small classifier folder, to break in the test."""
    folder = tmp_path / "model"
    shutil.copytree(saved_classifier, folder)
    return folder


def _config(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("breakage, message, code", [
    (lambda f: (f / "model.safetensors").unlink(), "holds no weights (expected model.safetensors", EXIT_DATA),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
     "cannot be read, the file is truncated or corrupt", EXIT_DATA),
    (lambda f: (f / "config.json").write_text(json.dumps({k: v for k, v in _config(f).items() if k != "architectures"})),
     "config.architectures: expected one of", EXIT_DATA),
    (lambda f: (f / "config.json").write_text(json.dumps(dict(_config(f), hidden_sizes=[96, 120, 144]))),
     "do not fit its config.json (", EXIT_DATA),
    (lambda f: (f / "preprocessor_config.json").write_text('{"size": -5}'),
     "preprocessor_config.json' holds an invalid setting (size: expected a positive int", EXIT_DATA),
    (lambda f: (f / "preprocessor_config.json").write_text('{"crop_size": {"height": 256'),
     "preprocessor_config.json' cannot be read", EXIT_DATA),
    (lambda f: (f / "preprocessor_config.json").write_text('{"do_normalize": true, "image_std": [0.5, 0, 0.5]}'),
     "image_std: expected positive numbers", EXIT_DATA),
])
def test_broken_model_folders_are_one_line(broken_model, images, capsys, breakage, message, code):
    breakage(broken_model)
    got, line = one_line_error(capsys, images / "photo.jpg", "--model", broken_model)
    assert got == code and message in line and str(broken_model) in line


def test_task_may_not_contradict_the_folder(saved_classifier, images, capsys):
    """--task semantic-segmentation on a classifier folder built a random head and predicted noise, silently."""
    code, line = one_line_error(capsys, images / "photo.jpg", "--model", saved_classifier, "--task", "segmentation")
    assert code == EXIT_USAGE and "--task: expected image-classification (what" in line


def test_an_unreadable_config_json_is_named(broken_model, images, capsys):
    (broken_model / "config.json").write_text('{"model_type": ')
    code, line = one_line_error(capsys, images / "photo.jpg", "--model", broken_model)
    assert code == EXIT_DATA and f"'{broken_model / 'config.json'}' cannot be read" in line and "no such" not in line


def test_a_config_without_architectures_works_with_task(broken_model, images, capsys):
    (broken_model / "config.json").write_text(json.dumps({k: v for k, v in _config(broken_model).items()
                                                          if k != "architectures"}))
    code, out, err = run(capsys, images / "photo.jpg", "--model", broken_model, "--task", "classification")
    assert code == 0 and out.startswith(str(images / "photo.jpg")), err


def test_an_invalid_preprocessor_config_is_never_replaced_by_defaults(broken_model):
    (broken_model / "preprocessor_config.json").write_text("not json at all")
    with pytest.raises(auto.NotAModelError, match="cannot be read"):
        auto.load_model_and_processor(broken_model)
    (broken_model / "preprocessor_config.json").unlink()  # no file at all: the family's evaluation preprocessing
    assert auto.load_model_and_processor(broken_model)[1].crop_size["height"] == 64


@pytest.mark.parametrize("model, message", [("/nonexistent", "model: no such folder '/nonexistent'"),
                                            ("nosuchdir", "model: no such folder 'nosuchdir', and no Hub repository")])
def test_a_missing_model_folder_says_so(images, capsys, model, message):
    code, line = one_line_error(capsys, images / "photo.jpg", "--model", model)
    assert code == EXIT_DATA and message in line and "Repo id must" not in line


@pytest.mark.parametrize("argv, message, code", [
    (["--device", "banana"], "--device: expected a torch device such as cpu, cuda, cuda:1 or mps, got 'banana'", EXIT_USAGE),
    (["--device", "meta"], "--device: expected one of cpu, cuda, mps, xpu", EXIT_USAGE),
    (["--device", "cuda"], "--device: expected a device this machine has, got 'cuda' (torch sees no cuda device here)",
     EXIT_DATA),
    (["--top-k", "0"], "--top-k: expected an integer from 1 to 100000", EXIT_USAGE),
    (["--batch-size", "0"], "--batch-size: expected an integer from 1 to 4096, got 0", EXIT_USAGE),
    (["--workers", "-1"], "--workers: expected an integer from 0 (read in the main thread) to 64, got -1", EXIT_USAGE),
    (["--threads", "0"], "--threads: expected an integer from 1 to 1024, got 0", EXIT_USAGE),
    (["--resume", "--overwrite", "--output-dir", "out"], "--resume: continues the results in --output-dir, --overwrite "
     "replaces them; pass one", EXIT_USAGE),
    (["--task", "depth-estimation"], "--task: expected one of", EXIT_USAGE),
])
def test_bad_arguments_are_refused_before_loading_anything(saved_classifier, images, capsys, monkeypatch, argv,
                                                            message, code):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    monkeypatch.setattr(auto, "load_model_and_processor", lambda *a, **k: pytest.fail("the model was loaded"))
    got, line = one_line_error(capsys, images / "photo.jpg", "--model", saved_classifier, *argv)
    assert got == code and message in line


def test_output_problems_are_found_before_the_model_runs(saved_classifier, saved_segmenter, images, tmp_path, capsys,
                                                         monkeypatch):
    import mobilevit.inference

    monkeypatch.setattr(mobilevit.inference, "stream", lambda *a, **k: pytest.fail("the model ran"))
    (tmp_path / "a-file").write_text("not a folder")
    for model, output, message, code in [
        (saved_classifier, tmp_path / "a-file", "--output-dir: expected a folder, got", EXIT_DATA),
        (saved_segmenter, tmp_path / "a-file" / "masks", "but '" + str(tmp_path / "a-file") + "' is a file", EXIT_DATA),
        (saved_segmenter, saved_segmenter, "expected a folder other than the input --model", EXIT_USAGE),
        (saved_segmenter, saved_segmenter / "masks", "expected a folder outside the input --model", EXIT_USAGE),
    ]:
        got, line = one_line_error(capsys, images / "photo.jpg", "--model", model, "--output-dir", output)
        assert got == code and message in line, line
    # an output that would replace an input image, even with --overwrite
    (tmp_path / "photos").mkdir()
    shutil.copy(images / "photo.jpg", tmp_path / "photos" / "photo_mask.png")  # photo.jpg's mask would go there
    got, line = one_line_error(capsys, tmp_path / "photos" / "photo_mask.png", images / "photo.jpg", "--model",
                               saved_segmenter, "--output-dir", tmp_path / "photos", "--overwrite")
    assert got == EXIT_USAGE and "is one of the images" in line
    # the default output folder is checked too
    monkeypatch.chdir(tmp_path)
    (tmp_path / "predictions").write_text("a file where the default folder goes")
    got, line = one_line_error(capsys, images / "photo.jpg", "--model", saved_segmenter)
    assert got == EXIT_DATA and "'predictions', which is a file" in line


def test_images_over_the_decompression_bomb_limit_are_one_line(saved_classifier, images, capsys, monkeypatch):
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    code, line = one_line_error(capsys, images / "photo.jpg", "--model", saved_classifier)
    assert code == EXIT_DATA and "photo.jpg' is too large to decode safely" in line


def test_outputs_have_ordinary_permissions(saved_segmenter, saved_classifier, images, tmp_path, capsys):
    mask = os.umask(0o022)
    try:
        assert run(capsys, images / "photo.jpg", "--model", saved_segmenter, "--output-dir", tmp_path / "seg")[0] == 0
        assert run(capsys, images / "photo.jpg", "--model", saved_classifier, "--output-dir", tmp_path / "cls")[0] == 0
    finally:
        os.umask(mask)
    written = sorted((tmp_path / "seg").iterdir()) + sorted((tmp_path / "cls").iterdir())
    assert [p.name for p in written] == ["photo_mask.png", "photo_segmentation.png", "predictions.jsonl",
                                         "predictions.jsonl"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}


def test_16bit_and_mode_I_images_are_read_by_the_rules(saved_classifier, tmp_path, capsys, photo):
    """A mode "I" TIFF holding 8-bit values predicts like the 8-bit image (it came out nearly black before)."""
    grey = np.asarray(photo.convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / "grey_as_I.tif")
    code, out, err = run(capsys, tmp_path / "grey.png", tmp_path / "grey_as_I.tif", "--model", saved_classifier, "--json")
    assert code == 0, err
    first, second = json.loads(out)
    assert first["predictions"] == second["predictions"]


# -- segmentation covers the whole image --------------------------------------------------------------------------
class RedFinder(torch.nn.Module):
    """A stand-in segmenter with known answers: class 1 ("object") where the red channel is bright, at 1/8 of the
    input resolution like a DeepLabV3 head at output stride 8."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(num_labels=2, id2label={0: "background", 1: "object"})

    @property
    def device(self):
        return self.anchor.device

    def forward(self, pixel_values):
        red = torch.nn.functional.avg_pool2d(pixel_values[:, 2:3], 8)  # BGR: red is channel 2
        return SimpleNamespace(logits=torch.cat([0.5 - red, red - 0.5], dim=1))


@pytest.mark.parametrize("transpose", [False, True], ids=["wide", "tall"])
def test_segmentation_covers_off_centre_objects_of_non_square_images(transpose):
    """The issue's case: a 288x96 image with objects at x 10-60 and 230-280 came back all background there (a
    centre crop, stretched over the photo). Every object now lands where it is, within the logits' resolution."""
    from mobilevit.image_reading import image_pixels

    image = np.zeros((96, 288, 3), np.uint8)
    truth = np.zeros((96, 288), bool)
    yy, xx = np.mgrid[:96, :288]
    circle = (xx - 35) ** 2 + (yy - 48) ** 2 <= 25 ** 2  # x 10-60
    triangle = (xx >= 230) & (xx <= 280) & (yy >= 20) & (yy <= 20 + (xx - 230) * 56 // 50)  # x 230-280
    square = (xx >= 124) & (xx < 164) & (yy >= 28) & (yy < 68)  # 40 px wide, in the middle
    for shape in (circle, triangle, square):
        truth |= shape
    image[truth] = (255, 0, 0)
    if transpose:
        image, truth = image.transpose(1, 0, 2).copy(), truth.T.copy()
    processor = MobileViTImageProcessor(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96})
    mask = predict_module.segment(RedFinder(), processor, image_pixels(image, "image")) == 1
    assert mask.shape == truth.shape
    intersection, union = (mask & truth).sum(), (mask | truth).sum()
    assert intersection / union > 0.85
    for shape in (circle, triangle, square):  # every object found, none stretched
        shape = shape.T if transpose else shape
        assert (mask & shape).sum() / shape.sum() > 0.8
    columns = np.flatnonzero(mask.any(axis=0 if not transpose else 1))
    # the 40-px square covers columns 124-163: it must not spread over 124 columns as before
    middle = columns[(columns > 100) & (columns < 190)]
    assert middle.min() >= 118 and middle.max() <= 170


def test_segmentation_of_a_wide_photo_from_the_command_line(saved_segmenter, tmp_path, capsys, photo):
    wide = photo.resize((288, 96))
    wide.save(tmp_path / "wide.png")
    code, out, err = run(capsys, tmp_path / "wide.png", "--model", saved_segmenter, "--output-dir", tmp_path / "out",
                         "--json")
    assert code == 0, err
    assert Image.open(json.loads(out)[0]["mask"]).size == (288, 96)


# -- folders, streaming, resume, several processes ----------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo):
    """photos/ with nested sub-folders: 12 images of three sizes (wide, tall, square) and formats, a text file and
    an image whose data is cut off after its header."""
    root = tmp_path_factory.mktemp("folder") / "photos"
    for i in range(12):
        sub = root / ("" if i < 4 else "trip" if i < 8 else "trip/day2")
        sub.mkdir(parents=True, exist_ok=True)
        size = [(160, 107), (96, 128), (80, 80)][i % 3]
        picture = photo.resize(size).rotate(15 * i)
        picture.save(sub / f"img{i:02d}.{'jpg' if i % 2 else 'png'}")
    (root / "trip" / "notes.txt").write_text("not an image")
    data = (root / "img01.jpg").read_bytes()
    (root / "trip" / "day2" / "cut.jpg").write_bytes(data[: len(data) // 2])
    return root


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_with_sub_folders_a_text_file_and_a_truncated_image(saved_segmenter, folder, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, folder, "--model", saved_segmenter, "--output-dir", out_dir, "--workers", 2)
    lines = err.strip().splitlines()
    assert code == EXIT_DATA and out.count("mask: ") < 12
    assert lines[0] == "skipped 1 file without an image extension in the folders (1 .txt)"
    assert lines[-1].startswith("mobilevit predict: error: image ") and str(folder / "trip/day2/cut.jpg") in lines[-1]
    assert "cannot be decoded, the file is truncated or corrupt" in lines[-1] and "--skip-bad-images" in lines[-1]
    assert "Traceback" not in err
    # what was finished before it is kept for --resume, and no results file claims the run is complete
    assert not (out_dir / "predictions.jsonl").exists()
    kept = _lines(out_dir / "predictions.jsonl.partial")
    assert len(kept) == 8 and "--resume continues" in lines[-1]  # the 8 images before it, in input order

    code, out, err = run(capsys, folder, "--model", saved_segmenter, "--output-dir", out_dir, "--resume",
                         "--skip-bad-images", "--json")
    assert code == 0, err
    assert f"skipped {folder / 'trip/day2/cut.jpg'}: image" in err and "resuming: 8 of 13 images" in err
    results = _lines(out_dir / "predictions.jsonl")
    names = [r["image"] for r in results]
    assert len(names) == len(set(names)) == 12 and names == sorted(names, key=lambda n: (n.count("/"), n))
    assert [r["image"] for r in json.loads(out)] == names[8:]  # this run's own results on stdout
    assert not list(out_dir.glob("*.partial"))
    # sub-folders are kept in the output names, each mask has its photo's size
    for result in results:
        relative = Path(result["image"]).relative_to(folder).with_suffix("")
        assert result["mask"] == str(out_dir / f"{relative}_mask.png")
        assert Image.open(result["mask"]).size == Image.open(result["image"]).size


def test_batch_sizes_give_the_same_predictions(saved_classifier, saved_segmenter, folder, tmp_path, capsys):
    by_batch = {}
    for batch in (1, 7, 32):
        code, out, err = run(capsys, folder, "--model", saved_classifier, "--top-k", 3, "--batch-size", batch,
                             "--skip-bad-images", "--json")
        assert code == 0, err
        by_batch[batch] = json.loads(out)
    for batch in (7, 32):
        assert [r["image"] for r in by_batch[batch]] == [r["image"] for r in by_batch[1]]
        for got, expected in zip(by_batch[batch], by_batch[1]):
            assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected["predictions"]]
            np.testing.assert_allclose([p["score"] for p in got["predictions"]],
                                       [p["score"] for p in expected["predictions"]], atol=1e-5)
    # segmentation: images of three shapes, each batch of one shape; every mask as predicted alone
    masks = {}
    for batch in (1, 7):
        out_dir = tmp_path / f"seg{batch}"
        assert run(capsys, folder, "--model", saved_segmenter, "--batch-size", batch, "--skip-bad-images",
                   "--output-dir", out_dir)[0] == 0
        masks[batch] = {r["image"]: np.asarray(Image.open(r["mask"])) for r in _lines(out_dir / "predictions.jsonl")}
    model, processor, _ = auto.load_model_and_processor(saved_segmenter)
    from mobilevit.image_reading import image_pixels, open_image

    for name, mask in masks[7].items():
        alone = predict_module.segment(model, processor, image_pixels(open_image(name), name))
        assert (mask == masks[1][name]).mean() > 0.999 and (mask == alone).mean() > 0.999


def test_text_output_and_top_k_for_a_few_files_stay_as_they_were(saved_classifier, images, capsys):
    code, out, err = run(capsys, images / "photo.jpg", images / "gray.png", "--model", saved_classifier, "--top-k", 2)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == str(images / "photo.jpg") and lines[3] == str(images / "gray.png") and len(lines) == 6
    assert all(re.fullmatch(r"  0\.\d{4}  (cat|dog|bird)", line) for line in lines[1:3] + lines[4:])


KILLER = """
import dataclasses, os, signal, sys
import mobilevit.predict as predict
calls, limit = [0], int(os.environ["KILL_AFTER"])
original = predict.WRITERS["image-classification"]

def record(*args):
    calls[0] += 1
    if calls[0] > limit:
        os.kill(os.getpid(), signal.SIGKILL)
    return original.record(*args)

predict.WRITERS["image-classification"] = dataclasses.replace(original, record=record)
from mobilevit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _predict_process(argv, **env):
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), **env}
    return subprocess.run([sys.executable, "-c", KILLER, "predict", *map(str, argv)], capture_output=True, text=True,
                          env=environment, timeout=600)


def test_a_killed_run_resumed_gives_the_uninterrupted_results_file(saved_classifier, folder, tmp_path, capsys):
    """A real SIGKILL after at most 5 results (a child process), then --resume here: the same file, byte for byte,
    as one run without a kill."""
    argv = [folder, "--model", saved_classifier, "--batch-size", 1, "--workers", 2, "--skip-bad-images"]
    assert run(capsys, *argv, "--output-dir", tmp_path / "whole")[0] == 0
    killed = _predict_process([*argv, "--output-dir", tmp_path / "resumed"], KILL_AFTER="5")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "predictions.jsonl").exists()
    kept = len(_lines(tmp_path / "resumed" / "predictions.jsonl.partial"))
    assert 0 < kept <= 5  # records are made on worker threads: the kill may come before the last ones are written
    code, line = one_line_error(capsys, *argv, "--output-dir", tmp_path / "resumed")
    assert code == EXIT_DATA and "predictions.jsonl.partial' already exists (pass --resume" in line
    code, out, err = run(capsys, *argv, "--output-dir", tmp_path / "resumed", "--resume")
    assert code == 0, err
    assert f"resuming: {kept} of 13 images already have results" in err
    assert len([line for line in out.splitlines() if not line.startswith(" ")]) == 12 - kept  # only the rest
    whole_bytes = (tmp_path / "whole" / "predictions.jsonl").read_bytes()
    assert (tmp_path / "resumed" / "predictions.jsonl").read_bytes() == whole_bytes
    names = [r["image"] for r in _lines(tmp_path / "whole" / "predictions.jsonl")]
    assert len(names) == len(set(names)) == 12
    assert sorted(os.listdir(tmp_path / "resumed")) == ["predictions.jsonl"]


@pytest.mark.slow
def test_two_processes_share_the_images_and_merge_one_file(saved_classifier, folder, tmp_path):
    """torchrun with two processes (gloo, CPU): each image once, one merged file equal to a single process's."""
    single = _predict_process([folder, "--model", saved_classifier, "--skip-bad-images", "--output-dir",
                               tmp_path / "one"], KILL_AFTER="1000")
    assert single.returncode == 0, single.stderr
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mobilevit", "predict", str(folder), "--model", str(saved_classifier), "--skip-bad-images",
               "--output-dir", str(tmp_path / "two"), "--threads", "1"]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    merged, alone = _lines(tmp_path / "two" / "predictions.jsonl"), _lines(tmp_path / "one" / "predictions.jsonl")
    assert [r["image"] for r in merged] == [r["image"] for r in alone]
    for got, expected in zip(merged, alone):
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected["predictions"]]
        np.testing.assert_allclose([p["score"] for p in got["predictions"]],
                                   [p["score"] for p in expected["predictions"]], atol=1e-5)
    assert sorted(os.listdir(tmp_path / "two")) == ["predictions.jsonl"]
    assert completed.stderr.count("skipped ") >= 2  # each process lists the bad image it met (all check all)


# -- detection ---------------------------------------------------------------------------------------------------
KNOWN_BOX = (0.15, 0.25, 0.6, 0.8)  # normalised corners the detector below always finds


@pytest.fixture(scope="module")
def known_box_detector(tmp_path_factory):
    """A detector that finds exactly one object, a "square" at KNOWN_BOX, in any image: its heads' last
    convolutions are zero, so their outputs are their biases; every anchor is background but the first anchor of
    the global level, whose regression decodes to KNOWN_BOX."""
    import math

    import torch

    from mobilevit import auto
    from mobilevit.testing_utils import fill_realistic_weights_

    config = auto.new_config("xx-small", "object-detection", image_size=64, id2label={0: "background", 1: "square"},
                             label2id={"background": 0, "square": 1})
    model = fill_realistic_weights_(auto.new_model(config, "object-detection")).eval()
    outputs = 4 + 2
    with torch.no_grad():
        for head in model.ssd.heads:
            final = head.predictor.pointwise if hasattr(head.predictor, "pointwise") else head.predictor
            final.convolution.weight.zero_()
            bias = final.convolution.bias
            bias.zero_()
            bias[4::outputs] = 10.0  # background logit of every anchor
        anchor = model.ssd.anchors([(1, 1)] * 6)[-4]  # the global level's first anchor: (0.5, 0.5, s, s)
        x1, y1, x2, y2 = KNOWN_BOX
        box = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        regression = model.ssd.box_coder.encode(box, anchor)
        bias = model.ssd.heads[-1].predictor.convolution.bias
        bias[:4], bias[4], bias[5] = regression, -10.0, 10.0
        assert math.isclose(float(model.ssd.box_coder.decode(regression[None], anchor[None])[0, 0]), box[0], abs_tol=1e-6)
    folder = tmp_path_factory.mktemp("known_box")
    model.save_pretrained(folder)
    auto.image_processor_for(config, "object-detection").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("size", [(240, 120), (120, 240)], ids=["wide", "tall"])
def test_detection_draws_the_box_on_the_objects_pixels(known_box_detector, tmp_path, capsys, size):
    """A photo (wide or tall) with a red rectangle exactly where the detector finds its object: the JSON box is
    the rectangle's pixels, and the picture's outline is drawn on its edge in the class's colour."""
    from mobilevit.predict import box_line_width

    width, height = size
    x1, y1, x2, y2 = (round(v * s) for v, s in zip(KNOWN_BOX, (width, height, width, height)))
    photo = np.full((height, width, 3), 200, dtype=np.uint8)
    photo[y1:y2, x1:x2] = (220, 30, 30)
    Image.fromarray(photo).save(tmp_path / "scene.png")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, tmp_path / "scene.png", "--model", known_box_detector, "--output-dir", out_dir,
                         "--json", "--threshold", 0.05)
    assert code == 0, err
    (result,) = json.loads(out)
    assert [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()] == [result]
    (found,) = result["detections"]
    assert found["label"] == "square" and found["score"] > 0.99
    assert [found["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == pytest.approx([x1, y1, x2, y2], abs=0.01)

    picture = np.asarray(Image.open(result["figure"]).convert("RGB"))
    assert picture.shape == photo.shape  # the photo at its own size
    colour = tuple(int(c) for c in color_palette(2)[1])
    line = box_line_width(height, width)
    middle_x, middle_y = (x1 + x2) // 2, (y1 + y2) // 2
    for x, y in [(x1, middle_y), (x2 - 1, middle_y), (middle_x, y2 - 1), (x1 + line - 1, middle_y + 5)]:
        assert tuple(picture[y, x]) == colour, (x, y)  # the outline lies on the rectangle's edge pixels
    assert tuple(picture[middle_y, x1 + line + 2]) == (220, 30, 30)  # inside: the object itself
    assert tuple(picture[middle_y, x1 - 2]) == (200, 200, 200)  # outside: the background
    assert tuple(picture[middle_y, x2 + 1]) == (200, 200, 200)


def test_detection_prints_boxes_and_respects_threshold_and_cap(saved_detector, images, tmp_path, capsys):
    code, out, err = run(capsys, images / "photo.jpg", "--model", saved_detector, "--output-dir", tmp_path,
                         "--threshold", 0.2, "--max-detections", 3)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(images / "photo.jpg") and lines[-1].strip().startswith("figure:")
    scores = [float(line.split()[0]) for line in lines[1:-1]]
    assert 0 < len(scores) <= 3 and all(s > 0.2 for s in scores) and scores == sorted(scores, reverse=True)
    assert sorted(os.listdir(tmp_path)) == ["photo_detections.png", "predictions.jsonl"]
    code, _, err = run(capsys, images / "photo.jpg", "--model", saved_detector, "--output-dir", tmp_path)
    assert code == 1 and "already exists" in err  # nothing replaced without --overwrite


def test_an_output_folder_is_claimed_and_a_failed_run_keeps_its_results(saved_detector, images, tmp_path, capsys,
                                                                         monkeypatch):
    """The merge of issue 27's output claims with streaming: a folder another run writes is refused in one line
    before anything is written there; predict's own results stream into its claimed folder, so a run that fails
    at its second image keeps the first one's result and picture, and --resume completes them."""
    shutil.copy(images / "photo.jpg", tmp_path / "second.jpg")
    out_dir = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mobilevit.file_utils import claim_output; "
                               "claim = claim_output(sys.argv[1], '--output-dir'); print('claimed', flush=True); "
                               "time.sleep(120)", str(out_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        code, line = one_line_error(capsys, images / "photo.jpg", "--model", saved_detector, "--output-dir", out_dir)
        assert code == 1 and "is being written by another run, process" in line and str(out_dir) in line
        assert not out_dir.exists() or not any(out_dir.iterdir())  # nothing written there
    finally:
        holder.kill()
        holder.wait()
    drawn = []

    def second_fails(photo, detections, palette):
        drawn.append(photo)
        if len(drawn) == 2:
            raise PredictError("image 'second.jpg': cannot be drawn (as a full disk would end it)")
        return b"first picture"

    monkeypatch.setattr(predict_module, "detections_picture", second_fails)
    code, out, err = run(capsys, images / "photo.jpg", tmp_path / "second.jpg", "--model", saved_detector,
                         "--output-dir", out_dir, "--batch-size", 1, "--workers", 0)
    assert code == EXIT_DATA and err.strip().splitlines()[-1].startswith("mobilevit predict: error: ")
    assert "cannot be drawn" in err and "Traceback" not in err and out.startswith(str(images / "photo.jpg"))
    assert [r["image"] for r in _lines(out_dir / "predictions.jsonl.partial")] == [str(images / "photo.jpg")]
    assert (out_dir / "photo_detections.png").read_bytes() == b"first picture"
    assert not (out_dir / "predictions.jsonl").exists() and not (out_dir / "second_detections.png").exists()
    monkeypatch.setattr(predict_module, "detections_picture", lambda *a: b"second picture")
    code, _, err = run(capsys, images / "photo.jpg", tmp_path / "second.jpg", "--model", saved_detector,
                       "--output-dir", out_dir, "--resume")
    assert code == 0, err
    assert [r["image"] for r in _lines(out_dir / "predictions.jsonl")] == [str(images / "photo.jpg"),
                                                                        str(tmp_path / "second.jpg")]
    assert (out_dir / "photo_detections.png").read_bytes() == b"first picture"  # finished: not redone
    assert (out_dir / "second_detections.png").read_bytes() == b"second picture"
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".out")]  # the claim's lock is gone


@pytest.mark.parametrize("setting, message", [
    ({"detections_per_image": 10**9}, "detection_postprocessing.detections_per_image: expected an integer from 1 to "
                                      "100000"),
    ({"candidates_per_class": 0}, "detection_postprocessing.candidates_per_class: expected an integer from 1 to"),
    ({"score_threshold": float("nan")}, "detection_postprocessing.score_threshold: expected a number in [0, 1]"),
])
def test_a_detection_rule_outside_the_limits_is_one_line(saved_detector, images, tmp_path, capsys, setting,
                                                         message):
    folder = tmp_path / "detector"
    shutil.copytree(saved_detector, folder)
    file = folder / "preprocessor_config.json"
    config = json.loads(file.read_text())
    config["detection_postprocessing"] = {**(config.get("detection_postprocessing") or {}), **setting}
    file.write_text(json.dumps(config))
    code, line = one_line_error(capsys, images / "photo.jpg", "--model", folder)
    assert code == EXIT_DATA and message in line and str(file) in line


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "1.5"], "--threshold: expected a finite number in [0, 1], got 1.5"),
    (["--threshold", "nan"], "--threshold: expected a finite number in [0, 1], got nan"),
    (["--max-detections", "0"], "--max-detections: expected an integer from 1 to 100000 (more than a picture or a "
                                "JSON file of results can usefully hold), got 0"),
    (["--max-detections", "100001"], "can usefully hold), got 100001"),
    (["--top-k", "10000000000000000000000"], "--top-k: expected an integer from 1 to 100000 (more than a picture or a "
                                             "JSON file of results can usefully hold), got 10000000000000000000000"),
])
def test_bad_detection_arguments(saved_detector, images, capsys, argv, message):
    code, _, err = run(capsys, images / "photo.jpg", "--model", saved_detector, *argv)
    assert code == 2 and err.strip().endswith(message) and len(err.strip().splitlines()) == 1


def test_detection_streams_a_folder_in_batches_and_resumes(saved_detector, folder, tmp_path, capsys):
    """Detection goes through the streaming engine like the other tasks: images of three sizes (each squashed to
    the model's size, so they share batches) find the same boxes at batch 1 and 7, each picture named after the
    image's path below the folder; a run cut off after 5 results (a 6th line half written) continued with
    --resume gives the uninterrupted run's results file, and writes only the pictures of the images it redoes."""
    argv = [folder, "--model", saved_detector, "--threshold", 0.2, "--skip-bad-images"]
    results = {}
    for batch in (1, 7):
        code, out, err = run(capsys, *argv, "--batch-size", batch, "--output-dir", tmp_path / f"b{batch}")
        assert code == 0, err
        results[batch] = _lines(tmp_path / f"b{batch}" / "predictions.jsonl")
    assert len(results[1]) == 12 and sum(len(r["detections"]) for r in results[1]) > 12
    assert [r["image"] for r in results[7]] == [r["image"] for r in results[1]]
    for got, expected in zip(results[7], results[1]):
        assert [d["label"] for d in got["detections"]] == [d["label"] for d in expected["detections"]]
        np.testing.assert_allclose([d["score"] for d in got["detections"]],
                                   [d["score"] for d in expected["detections"]], atol=1e-5)
        np.testing.assert_allclose([list(d["box"].values()) for d in got["detections"]],
                                   [list(d["box"].values()) for d in expected["detections"]], atol=0.011)  # 0.01 px
        relative = Path(got["image"]).relative_to(folder).with_suffix("")
        assert got["figure"] == str(tmp_path / "b7" / f"{relative}_detections.png")
        assert Image.open(got["figure"]).size == Image.open(got["image"]).size

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    whole = (tmp_path / "b1" / "predictions.jsonl").read_bytes().replace(str(tmp_path / "b1").encode(),
                                                                        str(resumed).encode())
    lines = whole.splitlines(keepends=True)
    (resumed / "predictions.jsonl.partial").write_bytes(b"".join(lines[:5]) + lines[5][:40])
    code, out, err = run(capsys, *argv, "--batch-size", 1, "--output-dir", resumed, "--resume")
    assert code == 0, err
    assert "resuming: 5 of 13 images already have results" in err
    assert (resumed / "predictions.jsonl").read_bytes() == whole
    redone = sorted(str(p.relative_to(resumed)) for p in resumed.rglob("*.png"))
    assert redone == sorted(str(Path(r["figure"]).relative_to(tmp_path / "b1")) for r in results[1][5:])
    assert len([line for line in out.splitlines() if not line.startswith(" ")]) == 7  # only the images redone


def test_a_detections_picture_takes_uint8_or_float_photos_alike():
    """Notebooks pass photos as floats in [0, 1], predict and training as uint8: the same picture either way."""
    from mobilevit.predict import color_palette, detections_picture

    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    found = [{"label": "cat", "class_id": 3, "score": 0.9, "box": {"xmin": 5, "ymin": 8, "xmax": 30, "ymax": 35}}]
    as_bytes = detections_picture(photo, found, color_palette(81))
    assert as_bytes == detections_picture(photo / 255.0, found, color_palette(81))
    assert as_bytes != detections_picture(photo, [], color_palette(81))  # the box was drawn
