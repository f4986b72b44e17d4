"""The `mobilevit export` command line over `mobilevit.export.export`."""

from __future__ import annotations

import argparse
import json
import sys

from ..file_utils import json_text
from . import FORMATS, PRECISIONS, export
from .data import DEFAULT_CALIBRATION_SIZE, DEFAULT_CALIBRATION_SPLIT, DEFAULT_EVALUATION_SPLIT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=list(FORMATS),
                        help="deployment format (each needs its extra, e.g. pip install \"mobilevit[executorch]\")")
    parser.add_argument("--quantize", choices=[p for p in PRECISIONS if p != "fp32"], default=None,
                        help="reduced precision (default: none, float32); which ones a format has: docs/deployment.md")
    parser.add_argument("--model", required=True, help="folder written by save_pretrained (ours or stock transformers')")
    parser.add_argument("--output", required=True,
                        help="artefact to write: .onnx, .pte, .tflite, .mlpackage or .xml (with .bin beside)")
    parser.add_argument("--calibration-data", default=None,
                        help="int8: your images to calibrate on, a folder of images or a datasets.save_to_disk folder")
    parser.add_argument("--calibration-split", default=DEFAULT_CALIBRATION_SPLIT,
                        help=f"split of --calibration-data (default: {DEFAULT_CALIBRATION_SPLIT})")
    parser.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE,
                        help=f"images drawn from the calibration split (default: {DEFAULT_CALIBRATION_SIZE})")
    parser.add_argument("--eval-data", default=None,
                        help="labelled held-out data (class sub-folders, or a datasets folder with labels or masks): "
                        "top-1 or mean IoU of PyTorch and of the artefact")
    parser.add_argument("--eval-split", default=DEFAULT_EVALUATION_SPLIT,
                        help=f"split of --eval-data (default: {DEFAULT_EVALUATION_SPLIT})")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side of fixed-size formats (default: the model processor's crop size)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the runtimes' checks (default: the runtime's own)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--json", action="store_true", help="print the sidecar as JSON at the end")


def run(args: argparse.Namespace) -> int:
    sidecar = export(args.model, args.format, args.output, args.quantize, calibration_data=args.calibration_data,
                     calibration_split=args.calibration_split, calibration_size=args.calibration_size,
                     eval_data=args.eval_data, eval_split=args.eval_split, image_size=args.image_size,
                     overwrite=args.overwrite, threads=args.threads,
                     log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json_text(sidecar))
        return 0
    check = sidecar["check"]
    print(f"wrote {args.output} ({sidecar['format']}, {sidecar['precision']}, {sidecar['size_bytes'] / 1e6:.2f} MB) "
          f"and its sidecar {sidecar['artefact']}.json")
    accepts = sidecar["input"]["accepts"]
    print(f"  input {sidecar['input']['name']} ({sidecar['input']['layout']}): "
          + ", ".join(f"{axis} {_span(value)}" for axis, value in accepts.items()))
    if "runtime_config" in sidecar:
        print(f"  runtime settings that reproduce the checked numbers: {json.dumps(sidecar['runtime_config'])} "
              "(core.compile_model(xml, \"CPU\", settings); without them OpenVINO's CPU default may be bfloat16)")
    for comparison in check.get("comparisons", []):
        print(f"  {check['runtime']} vs PyTorch on {comparison['inputs']}: max abs error "
              f"{comparison['max_abs_error']:.2e}" + (f", arg-max agreement {comparison['agreement']:.1%}"
                                                      if comparison["agreement"] is not None else ""))
    if check.get("runtime") is None:
        print(f"  no runtime here: checked inputs, outputs, {sum(check['ops'].values())} operations and "
              f"{check['weights_compared']} weight tensors; unverified: {check['unverified']}")
    if "delegation" in sidecar:
        d = sidecar["delegation"]
        print(f"  {d['delegate']}: {d['pieces']} piece(s); outside the delegate: {d['ops_outside'] or 'nothing'}")
    if "evaluation" in sidecar:
        e = sidecar["evaluation"]
        metric = e["metric"]
        print(f"  {metric} on {e['data']}: PyTorch {e['pytorch'][metric]:.4f}, artefact {e['artefact'][metric]:.4f} "
              f"({e['change_points']:+.2f} points)")
    return 0


def _span(value) -> str:
    """An accepted size: one number, or 'min-max'."""
    return str(value) if isinstance(value, int) else f"{value[0]}-{value[1]}"
