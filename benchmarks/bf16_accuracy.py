"""What bfloat16 costs: `model.to(torch.bfloat16)` against the same model in float32.

    python benchmarks/bf16_accuracy.py [--fixtures ../shared/fixtures] [--trained MODEL_DIR DATA_DIR ...]

- ml-cvnets' fixture checkpoints (v1 and v2, classification and segmentation; `../shared/fixtures`):
  each converted into a folder, run on the fixture's inputs in float32 and in bfloat16; the table gives the
  largest logit error against ml-cvnets' own float32 logits, relative to their largest magnitude, and the
  arg-max agreement (per image for classification, per pixel of the low-resolution logits for segmentation).
- trained models (`--trained MODEL_DIR DATA_DIR`, repeatable; e.g. the demo's digits classifier and shapes
  segmenter with the datasets they were trained on): top-1 or mean IoU on the `test` split in float32 and in
  bfloat16, through the model's own processor (the same evaluation as `mobilevit export --eval-data`).

Prints a markdown table; `--output FILE` also writes it there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

from mobilevit import auto
from mobilevit.conversion import convert_checkpoint
from mobilevit.export.common import input_size
from mobilevit.export.data import evaluate, read_split
from mobilevit.tasks import CLASSIFICATION, SEGMENTATION
from mobilevit.testing_utils import fixture_state_dict

FIXTURE_FOLDERS = ("mlcvnets", "mlcvnets_v2")


def compare_on_fixture(folder: Path, name: str, workdir: Path) -> dict:
    checkpoint = workdir / f"{name}.pt"
    torch.save(fixture_state_dict(folder, name), checkpoint)
    result = convert_checkpoint(checkpoint, workdir / name, progress=False)
    model, _, _ = auto.load_model_and_processor(workdir / name)
    expected = load_file(str(folder / f"{name}.expected.safetensors"))
    segmentation = "logits_lowres" in expected
    reference = expected["logits_lowres" if segmentation else "logits"]
    row = {"model": f"{name} ({result.variant})", "data": "fixture inputs (ml-cvnets fp32 logits)"}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = model.to(dtype).eval()
        with torch.inference_mode():
            logits = model(expected["pixel_values"].to(dtype)).logits.float()
        row[f"{label} rel. error"] = float((logits - reference).abs().max() / reference.abs().max())
        row[f"{label} arg-max agreement"] = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    return row


def compare_on_data(model_dir: Path, data_dir: Path) -> dict:
    model, processor, task = auto.load_model_and_processor(model_dir)
    images = read_split(data_dir, "test", "--trained", labelled=True, task=task)
    size = input_size(processor, model.config)
    align_corners = auto.family_of(model).segmentation_align_corners
    metric = "accuracy" if task == CLASSIFICATION else "mean_iou"
    row = {"model": f"{model_dir.name} ({model.config.variant})", "data": images.description}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = model.to(dtype).eval()

        def run(pixel_values, model=model, dtype=dtype):
            with torch.inference_mode():
                return [model(torch.from_numpy(pixel_values).to(dtype)).logits.float().numpy()]

        row[f"{label} {metric}"] = evaluate(run, images, processor, size, task, model.config, align_corners)[metric]
    return row


def markdown(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.2e}" if "error" in c and c in row else f"{row[c]:.4f}" if isinstance(row.get(c), float)
                 else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures")
    parser.add_argument("--trained", nargs=2, action="append", type=Path, default=[], metavar=("MODEL_DIR", "DATA_DIR"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bf16-accuracy-") as workdir:
        for sub in FIXTURE_FOLDERS:
            folder = args.fixtures / sub
            if not folder.is_dir():
                print(f"skipped: {folder} not found", file=sys.stderr)
                continue
            for manifest in sorted(folder.glob("*.json")):
                rows.append(compare_on_fixture(folder, manifest.stem, Path(workdir)))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    fixture_rows, trained_rows = rows, [compare_on_data(model_dir, data_dir) for model_dir, data_dir in args.trained]
    table = "\n\n".join(markdown(part) for part in (fixture_rows, trained_rows) if part)
    print("\n" + table)
    if args.output is not None:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
