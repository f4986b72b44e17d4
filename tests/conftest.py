import os

import pytest
import torch

# No test may reach the network: the Hub is not reachable from CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Under pytest-xdist (`-n 2`, README's test command) the workers share the cores: each gets its share, so two
# workers on 2 cores do not run 4 OpenMP threads that wait for each other at every operator. Subprocesses the
# tests start (CLI runs) inherit the same share through OMP_NUM_THREADS.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test():
    """Unseeded `torch.rand` inputs are the same in every run, whichever tests ran before: a magnitude check
    on such inputs failed once in CI, where the global state it met was not reproducible."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def load_benchmark_script():
    """`load_benchmark_script("name")`: benchmarks/name.py imported as a module (the folder is not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name):
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def mlcvnets_v2_fixtures():
    """Path of ../shared/fixtures/mlcvnets_v2, or skip the test with the reason."""
    from mobilevit.testing_utils import shared_fixtures_dir

    path = shared_fixtures_dir("mlcvnets_v2")
    if path is None:
        pytest.skip("../shared/fixtures/mlcvnets_v2 not found (set MOBILEVIT_FIXTURES to the v1 folder beside it)")
    return path


@pytest.fixture(scope="session")
def mlcvnets_fixtures():
    """Path of ../shared/fixtures/mlcvnets, or skip the test with the reason."""
    from mobilevit.testing_utils import shared_fixtures_dir

    path = shared_fixtures_dir()
    if path is None:
        pytest.skip("../shared/fixtures/mlcvnets not found (set MOBILEVIT_FIXTURES to its path to run this test)")
    return path


# -- small saved model folders (pipelines, predict, hub): xx-small widths at 64x64 so they run in a second ------
SMALL_IMAGE_SIZE = 64
CLASS_NAMES = ["cat", "dog", "bird"]
SHAPE_NAMES = ["background", "circle", "square", "triangle"]


def _save_small_model(folder, task, names, seed, variant="xx-small"):
    from mobilevit import auto
    from mobilevit.testing_utils import fill_realistic_weights_

    config = auto.new_config(variant, task, image_size=SMALL_IMAGE_SIZE, id2label=dict(enumerate(names)),
                             label2id={n: i for i, n in enumerate(names)})
    model = fill_realistic_weights_(auto.new_model(config, task), seed=seed).eval()
    model.save_pretrained(folder)
    auto.image_processor_for(config, task).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def saved_classifier(tmp_path_factory):
    """A folder with a 3-class xx-small classifier (realistic random weights) and its processor config."""
    return _save_small_model(tmp_path_factory.mktemp("classifier"), "image-classification", CLASS_NAMES, seed=1)


@pytest.fixture(scope="session")
def saved_segmenter(tmp_path_factory):
    """A folder with a 4-class xx-small DeepLabV3 segmenter (realistic random weights) and its processor config."""
    return _save_small_model(tmp_path_factory.mktemp("segmenter"), "semantic-segmentation", SHAPE_NAMES, seed=2)


@pytest.fixture(scope="session")
def saved_v2_classifier(tmp_path_factory):
    """The same for MobileViTv2 (width 0.5): a 3-class classifier folder."""
    return _save_small_model(tmp_path_factory.mktemp("v2_classifier"), "image-classification", CLASS_NAMES, seed=3,
                             variant="mobilevitv2-0.5")


@pytest.fixture(scope="session")
def saved_v2_segmenter(tmp_path_factory):
    """The same for MobileViTv2 (width 0.5): a 4-class DeepLabV3 segmenter folder."""
    return _save_small_model(tmp_path_factory.mktemp("v2_segmenter"), "semantic-segmentation", SHAPE_NAMES, seed=4,
                             variant="mobilevitv2-0.5")


@pytest.fixture
def stock_v2_folder(saved_v2_classifier, tmp_path):
    """A MobileViTv2 classifier folder as stock transformers' converter writes it: its processor flips to BGR and
    resizes bilinearly."""
    import shutil

    from transformers.models.mobilevit.image_processing_pil_mobilevit import MobileViTImageProcessorPil

    folder = tmp_path / "stock-v2"
    shutil.copytree(saved_v2_classifier, folder)
    (folder / "preprocessor_config.json").unlink()
    MobileViTImageProcessorPil(size={"shortest_edge": 96}, crop_size={"height": 64, "width": 64}, resample=2,
                               do_reduce_labels=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def photo():
    """A real photo (scikit-learn's china.jpg, 640x427 RGB), shrunk to keep the tests quick."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg")).resize((160, 107), Image.BILINEAR)


@pytest.fixture(scope="session")
def mlcvnets_ssd_fixtures():
    """Path of ../shared/fixtures/mlcvnets_ssd, or skip the test with the reason."""
    from mobilevit.testing_utils import shared_fixtures_dir

    path = shared_fixtures_dir("mlcvnets_ssd")
    if path is None:
        pytest.skip("../shared/fixtures/mlcvnets_ssd not found (set MOBILEVIT_FIXTURES to the v1 folder beside it)")
    return path


@pytest.fixture(scope="session")
def converted_ssd(mlcvnets_ssd_fixtures, tmp_path_factory):
    """`converted_ssd(name)`: the folder `mobilevit convert` writes for an SSD fixture's checkpoint (made once per
    session), with the fixture's expected tensors: (folder, expected)."""
    import importlib.util

    from safetensors.torch import load_file

    from mobilevit.conversion import convert_checkpoint

    spec = importlib.util.spec_from_file_location("weights_ssd", mlcvnets_ssd_fixtures / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    done = {}

    def convert(name):
        if name not in done:
            manifest = mlcvnets_ssd_fixtures / f"{name}.json"
            state_dict = weights.state_dict(str(manifest))
            assert weights.check(str(manifest), state_dict)
            work = tmp_path_factory.mktemp(name)
            torch.save(state_dict, work / f"{name}.pt")
            convert_checkpoint(work / f"{name}.pt", work / "converted", progress=False)
            done[name] = (work / "converted", load_file(mlcvnets_ssd_fixtures / f"{name}.expected.safetensors"))
        return done[name]

    return convert


# -- a small detector folder (pipelines, predict): xx-small at 64x64, 3 classes after the background ------------
DETECTION_NAMES = ["background", "cat", "dog", "bird"]


@pytest.fixture(scope="session")
def saved_detector(tmp_path_factory):
    """A folder with a 3-class xx-small SSDLite detector (realistic random weights) and its processor config."""
    return _save_small_model(tmp_path_factory.mktemp("detector"), "object-detection", DETECTION_NAMES, seed=5)


def pytest_collection_modifyitems(config, items):
    """Slow tests first (a stable sort: the rest keep their order, which a documentation page's blocks rely on).
    On two workers (`-n 2`) the long end-to-end runs then start at once, side by side, and the fast tests fill
    the gaps, instead of a 10-minute demo run starting when the other worker is nearly done."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
