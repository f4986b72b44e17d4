"""`mobilevit export`: an ONNX file with dynamic batch and size that ONNX Runtime runs like PyTorch."""

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from mobilevit import MobileViTConfig, MobileViTForImageClassification  # noqa: E402
from mobilevit.cli import main as cli_main  # noqa: E402
from mobilevit.export import ort_session  # noqa: E402
from mobilevit.testing_utils import fill_realistic_weights_  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """xx-small saved to a folder and exported once through the command line."""
    root = tmp_path_factory.mktemp("export")
    model = fill_realistic_weights_(MobileViTForImageClassification(MobileViTConfig.from_variant("xx-small"))).eval()
    model.save_pretrained(root / "model")
    output = root / "model.onnx"
    assert cli_main(["export", "--format", "onnx", "--model", str(root / "model"), "--output", str(output)]) == 0
    return model, output


def test_onnx_matches_pytorch_at_two_sizes(exported):
    model, output = exported
    session = ort_session(output, threads=2)
    generator = torch.Generator().manual_seed(0)  # inputs that do not depend on which tests ran before
    for shape in [(1, 3, 256, 256), (3, 3, 130, 98)]:  # another batch and an odd size than the export's checks
        pixel_values = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = model(pixel_values).logits
        (got,) = session.run(None, {"pixel_values": pixel_values.numpy()})
        assert got.shape == tuple(expected.shape)
        # logits at a real scale (0.29-0.58 over 200 random inputs), so 1e-4 is a meaningful tolerance
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


def test_refuses_to_overwrite(exported, capsys):
    _, output = exported
    before = output.stat().st_mtime_ns
    model_dir = output.parent / "model"
    assert cli_main(["export", "--model", str(model_dir), "--output", str(output)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert output.stat().st_mtime_ns == before
    assert not [p for p in output.parent.iterdir() if p.name.endswith(".tmp")]  # no half-written leftovers


def test_bad_model_folder(tmp_path, capsys):
    assert cli_main(["export", "--model", str(tmp_path), "--output", str(tmp_path / "x.onnx")]) == 1
    assert "config.json" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
