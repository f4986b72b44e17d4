"""How long decoding and NMS take next to a batch-1 forward of a MobileViT SSDLite detector (goal: at most 10 %).

A detector at 320x320 (3232 anchors, 80 classes) runs its forward (this package's default eval path) and
its post-processing (`post_process_object_detection` with the family's rule, target size given: softmax, box
corners, thresholds, class-wise NMS, caps, pixels) interleaved in one process; both are medians over
`--repeats` calls, each after an untimed call of itself. Post-processing is timed on three kinds of outputs,
since its cost grows with the candidates above the threshold:

- `fixture`: ml-cvnets' stored raw outputs of the chelsea photo (../shared/fixtures/mlcvnets_ssd, random
  weights with the background favoured; 2,800-7,400 candidates at 0.05, 56,000-67,000 at 0.01): a worst case;
- `confident`: the same logits with the background 4 units higher, about what a trained detector leaves above
  the thresholds (150 candidates at 0.05, 4,700 at 0.01);
- `model`: the timed model's own outputs on the photo (realistic random weights, no background bias).

    python benchmarks/bench_detection_postprocessing.py --variants xx-small mobilevitv2-0.5 --threads 1

The machine's load is printed beside the numbers; the ratio is what to compare between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from mobilevit import auto
from mobilevit.benchmark import build_mobilevit, machine_load
from mobilevit.testing_utils import shared_fixtures_dir

FIXTURE_OF = {"mobilevit": "ssdlite_mobilevit_xx_small_320", "mobilevitv2": "ssdlite_mobilevitv2_050_320"}
CONFIDENT_SHIFT = 4.0  # added to the background logit for the `confident` outputs


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        function()  # the untimed lead-in call
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def outputs_to_time(model, photo: torch.Tensor) -> dict:
    """name -> an outputs object (logits, pred_boxes) of one image at 320x320."""
    from safetensors.torch import load_file

    from mobilevit.ssd import ObjectDetectionOutput

    with torch.inference_mode():
        own = model(photo)
    cases = {"model": ObjectDetectionOutput(logits=own.logits, pred_boxes=own.pred_boxes)}
    folder = shared_fixtures_dir("mlcvnets_ssd")
    if folder is not None:
        expected = load_file(folder / f"{FIXTURE_OF[model.config.model_type]}.expected.safetensors")
        boxes = model.ssd.box_coder.decode(expected["photo_box_regression"], expected["anchors"])
        cases["fixture"] = ObjectDetectionOutput(logits=expected["photo_cls_logits"], pred_boxes=boxes)
        confident = expected["photo_cls_logits"].clone()
        confident[..., 0] += CONFIDENT_SHIFT
        cases["confident"] = ObjectDetectionOutput(logits=confident, pred_boxes=boxes)
    return cases


def measure(variant: str, repeats: int) -> list[dict]:
    model = build_mobilevit(variant, "object-detection")
    processor = auto.image_processor_for(model.config, "object-detection")
    rule = processor.detection_postprocessing
    photo = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    cases = outputs_to_time(model, photo)

    def forward():
        with torch.inference_mode():
            model(photo)

    def post_process(outputs):
        return processor.post_process_object_detection(outputs, target_sizes=[(300, 451)])

    rows = []
    for _ in range(3):  # warm-up: the fast path's derived weights, the anchors
        forward()
    for _ in range(repeats):
        forward_ms_round = median_ms(forward, 1)
        for name, outputs in cases.items():
            post_ms = median_ms(lambda: post_process(outputs), 1)
            rows.append({"variant": variant, "case": name, "forward_ms": forward_ms_round, "post_ms": post_ms})
    summary = []
    for name, outputs in cases.items():
        mine = [r for r in rows if r["case"] == name]
        scores = outputs.logits.softmax(-1)[0, :, 1:]
        summary.append({
            "variant": variant, "case": name,
            "candidates": int((scores > rule["score_threshold"]).sum()),
            "detections": len(post_process(outputs)[0]["scores"]),
            "forward_ms": statistics.median(r["forward_ms"] for r in mine),
            "post_ms": statistics.median(r["post_ms"] for r in mine),
            "ratio": statistics.median(r["post_ms"] / r["forward_ms"] for r in mine),
        })
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["xx-small", "mobilevitv2-0.5"])
    parser.add_argument("--repeats", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive integer, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if shared_fixtures_dir("mlcvnets_ssd") is None:
        print("note: ../shared/fixtures/mlcvnets_ssd not found: only the model's own outputs are timed",
              file=sys.stderr)
    results = [row for variant in args.variants for row in measure(variant, args.repeats)]
    print(f"\n320x320, batch 1, {torch.get_num_threads()} threads, torch {torch.__version__}; {machine_load()}; "
          f"pid {os.getpid()}\n")
    print("| variant | outputs | candidates | detections | forward ms | decode + NMS ms | share of the forward |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['case']} | {r['candidates']} | {r['detections']} | {r['forward_ms']:.1f} | "
              f"{r['post_ms']:.2f} | {100 * r['ratio']:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
