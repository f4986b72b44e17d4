"""Every notebook under notebooks/ runs top to bottom (offline, CPU) without raising."""

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
# Notebooks that need data from outside the repository, and which fixture folder (05_mobilevitv2 skips its
# conversion part by itself without ../shared/fixtures/mlcvnets_v2 and trains and compares in any case).
NEEDS_FIXTURES = {"04_convert_mlcvnets.ipynb": "mlcvnets", "07_object_detection.ipynb": "mlcvnets_ssd"}


def kernel_for_this_interpreter(tmp_path_factory) -> tuple[str, dict]:
    """A kernelspec that runs *this* Python (the venv under test), written to a private Jupyter path."""
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path_factory.mktemp("jupyter")
    spec_dir = kernels / "kernels" / "mobilevit-test"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "mobilevit tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    manager = KernelSpecManager(kernel_dirs=[str(kernels / "kernels")])
    return "mobilevit-test", manager


def test_there_are_notebooks():
    names = [path.name for path in NOTEBOOKS]
    assert {"01_quickstart.ipynb", "02_finetune_classification.ipynb", "03_semantic_segmentation.ipynb",
            "04_convert_mlcvnets.ipynb", "05_mobilevitv2.ipynb", "07_object_detection.ipynb"} <= set(names), names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path_factory, tmp_path):
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    if path.name in NEEDS_FIXTURES:
        from mobilevit.testing_utils import shared_fixtures_dir

        folder = NEEDS_FIXTURES[path.name]
        if shared_fixtures_dir(folder) is None:
            pytest.skip(f"../shared/fixtures/{folder} not found (set MOBILEVIT_FIXTURES to the mlcvnets folder beside "
                        "it to run this notebook)")
    kernel_name, spec_manager = kernel_for_this_interpreter(tmp_path_factory)
    notebook = nbformat.read(path, as_version=4)
    repo_root = str(NOTEBOOKS_DIR.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    kernel_manager = KernelManager(kernel_name=kernel_name, kernel_spec_manager=spec_manager)
    client = NotebookClient(notebook, timeout=1500, km=kernel_manager, resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    # the kernel runs this interpreter in notebooks/, with the repository on its path and no network;
    # a failing cell raises CellExecutionError with the cell and its traceback
    client.execute(env=env)
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
    assert any(output.get("output_type") in ("display_data", "execute_result") for cell in notebook.cells
               if cell.cell_type == "code" for output in cell.get("outputs", [])), "expected at least one plot"
