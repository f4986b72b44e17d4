"""What the demo leaves a newcomer: pictures that mark its mistakes in `predict`'s class colours, and next steps
that name only files the demo wrote and commands the CLI takes. Tiny cases, no training: the demo itself runs
in tests/test_training_demo.py (slow)."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilevit import auto, predict
from mobilevit.cli import build_parser
from mobilevit.cli import main as cli_main
from mobilevit.training import demo_report
from mobilevit.training.demo_report import (MISTAKE_RGB, classification_picture, mistake_map, next_steps,
                                            pick_examples, segmentation_picture, write_example_images)

RED = MISTAKE_RGB


def test_pick_examples_shows_the_worst_then_the_first_in_their_order():
    assert pick_examples([0, 0.5, 0, 0.9, 0, 0, 0.1], 4) == [0, 1, 2, 3]  # 3 and 1 the worst, then 0 and 2
    assert pick_examples([0.2, 0.5, 0, 0.9, 0, 0, 0.1], 4) == [1, 2, 3, 4]  # then the right ones first
    assert pick_examples([0, 0, 0, 0, 0, 1], 2) == [0, 5]
    assert pick_examples([0] * 10, 3) == [0, 1, 2]
    assert pick_examples([1, 1, 1, 1], 3) == [0, 1, 2]  # no right ones: the worst (all equal), then the first
    assert pick_examples([1, 1], 24) == [0, 1]


def test_mistake_map_paints_exactly_the_wrong_pixels_and_never_ignored_ones():
    photo = np.random.default_rng(0).uniform(size=(4, 5, 3)).astype(np.float32)
    truth = np.zeros((4, 5), dtype=np.int64)
    truth[0, 0] = 255  # ignored: whatever is predicted there is no mistake
    predicted = truth.copy()
    predicted[0, 0], predicted[2, 3], predicted[3, 1] = 1, 2, 1
    shown = mistake_map(photo, predicted, truth)
    red = np.all(shown == MISTAKE_RGB, axis=-1)
    assert np.argwhere(red).tolist() == [[2, 3], [3, 1]]
    grey = shown[~red]
    assert np.allclose(grey[:, 0], grey[:, 1]) and np.allclose(grey[:, 1], grey[:, 2])  # the rest in grey


def _digit(value: int) -> Image.Image:
    return Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8))


def test_classification_picture_marks_a_known_mistake_with_true_and_predicted_labels():
    examples = [(_digit(10 * i), str(i), str(i)) for i in range(6)]
    examples[4] = (_digit(40), "3", "5")  # the one mistake: a 5 taken for a 3
    figure = classification_picture(examples, "digits", count=4, columns=2)
    shown = [axis for axis in figure.axes if axis.images]
    assert len(shown) == 4
    titles = [axis.get_title() for axis in shown]
    assert "true 5\npred 3" in titles  # picked although it lies past the first four
    for axis in shown:
        mistake = axis.get_title() == "true 5\npred 3"
        assert (axis.title.get_color() == RED) == mistake  # matplotlib keeps the colour as given
        assert axis.axison == mistake  # the frame (spines) only around the mistake
        if mistake:
            assert all(spine.get_edgecolor()[:3] == RED and spine.get_linewidth() == 3
                       for spine in axis.spines.values())
    assert figure._suptitle.get_text() == "digits: 1 of 6 wrong (red, framed; 1 shown)"


def test_segmentation_picture_colours_classes_as_predict_does_and_marks_wrong_pixels():
    labels = ["background", "circle", "square", "triangle"]
    truth = np.zeros((6, 6), dtype=np.int64)
    truth[1:4, 1:4] = 2
    wrong = truth.copy()
    wrong[1, 1] = 3  # one wrong pixel
    image = Image.fromarray(np.full((6, 6, 3), 200, dtype=np.uint8))
    figure = segmentation_picture([(image, truth.copy(), truth), (image, wrong, truth)], labels, "shapes")
    # rows: image, true, predicted, mistakes
    grid = np.array([axis for axis in figure.axes if axis.images]).reshape(4, 2)
    palette = predict.color_palette(len(labels))
    for column, predicted in enumerate((truth, wrong)):
        assert np.allclose(grid[1, column].images[0].get_array(), palette[truth] / 255)
        assert np.allclose(grid[2, column].images[0].get_array(), palette[predicted] / 255)
        marked = np.all(np.asarray(grid[3, column].images[0].get_array()) == np.array(RED), axis=-1)
        assert np.argwhere(marked).tolist() == ([[1, 1]] if column else [])
    assert grid[3, 1].get_title() == "2.8% wrong" and grid[3, 1].title.get_color() == RED
    legend = {text.get_text() for text in figure.legends[0].get_texts()}
    assert set(labels) < legend and "mistake (predicted != true)" in legend


def test_the_demo_and_predict_share_one_palette():
    import mobilevit.training.demo as demo

    assert demo_report.color_palette is predict.color_palette
    assert not [name for name in vars(demo) if "palette" in name.lower()]  # the demo keeps no colours of its own


@pytest.fixture
def demo_output(tmp_path, monkeypatch):
    """A folder laid out as the demo leaves it (untrained xx-small models at 64x64), as a relative path from the
    current folder, as a user types it."""
    import datasets

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo-output"
    for task, folder, names in (("image-classification", "classification", [str(d) for d in range(10)]),
                                ("semantic-segmentation", "segmentation", ["background", "circle"])):
        config = auto.new_config("xx-small", task, num_labels=len(names), image_size=64,
                                 id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        auto.new_model(config, task).save_pretrained(out / folder)
        auto.image_processor_for(config, task).save_pretrained(out / folder)
    digit_features = datasets.Features({"image": datasets.Image(),
                                        "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    digits = datasets.Dataset.from_dict({"image": [_digit(d) for d in range(10)] * 11, "label": list(range(10)) * 11},
                                        features=digit_features)
    scenes = datasets.Dataset.from_dict({"image": [_digit(100)] * 5},
                                        features=datasets.Features({"image": datasets.Image()}))
    write_example_images(out / "images", digits, scenes)
    for name in ("classification_predictions.png", "segmentation_predictions.png", "training_history.png"):
        (out / name).write_bytes(b"png")
    return "demo-output"


def test_example_images_form_an_image_folder_of_every_class(demo_output, tmp_path):
    digits = tmp_path / demo_output / "images" / "digits"
    assert sorted(p.name for p in digits.iterdir()) == [str(d) for d in range(10)]
    assert all(len(list(folder.glob("*.png"))) == demo_report.DIGITS_PER_CLASS for folder in digits.iterdir())
    assert len(list((tmp_path / demo_output / "images" / "shapes").glob("*.png"))) == demo_report.SCENES


def test_next_steps_name_only_files_the_demo_wrote_and_commands_the_cli_takes(demo_output, capsys):
    text = next_steps(demo_output)
    named = set(re.findall(rf"{demo_output}/[^\s\"'):]*", text))
    assert len(named) >= 8
    for path in named:
        assert Path(path.rstrip("/.")).exists(), path
    commands = [line for line in text.splitlines() if line.startswith("mobilevit ")]
    assert [c.split()[1] for c in commands] == ["predict", "predict", "train", "export"]
    for command in commands:  # every option named exists (argparse exits on an unknown one)
        argv = shlex.split(command)[1:]
        parser, _ = build_parser(argv)
        parser.parse_args(argv)
    assert cli_main(shlex.split(commands[0])[1:]) == 0  # and predict really runs on what the demo wrote
    assert re.search(r"^\s+\d\.\d{4}\s+\d$", capsys.readouterr().out, re.MULTILINE)
    pipeline = shlex.split(next(line for line in text.splitlines() if line.startswith("python -c ")))[2]
    exec(pipeline)
    assert "'label':" in capsys.readouterr().out
    assert "python - <<'EOF'" in text and text.splitlines()[-2] == "EOF"  # the artefact's heredoc closes at column 0


def test_next_steps_refuse_a_folder_the_demo_did_not_finish(tmp_path):
    (tmp_path / "images" / "digits" / "0").mkdir(parents=True)
    (tmp_path / "images" / "digits" / "0" / "000.png").write_bytes(b"")
    (tmp_path / "images" / "shapes").mkdir()
    (tmp_path / "images" / "shapes" / "scene-0.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="classification"):
        next_steps(tmp_path)


def test_next_steps_say_how_to_install_the_export_extra_only_when_it_is_missing(demo_output, monkeypatch):
    install = 'pip install -e ".[export]"'
    assert (install in next_steps(demo_output)) == (not demo_report._onnx_ready())
    monkeypatch.setattr(demo_report, "_onnx_ready", lambda: False)
    lines = next_steps(demo_output).splitlines()
    assert lines.index(next(line for line in lines if line.startswith(install))) < lines.index(
        next(line for line in lines if line.startswith("mobilevit export")))
