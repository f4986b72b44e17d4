"""`mobilevit export`: a saved model folder -> a deployment artefact, run in its own runtime and compared with
PyTorch before it is kept.

    mobilevit export --format onnx|executorch|litert|coreml|openvino [--quantize int8|fp16|bf16]
                     --model DIR --output PATH [--calibration-data DIR] [--eval-data DIR] [--overwrite]

| format      | artefact            | runtime checked here         | precisions              | extra          |
|-------------|---------------------|------------------------------|-------------------------|----------------|
| onnx        | `.onnx`, dynamic    | ONNX Runtime                 | fp32, int8              | `[export]`     |
| executorch  | `.pte`, XNNPACK     | ExecuTorch Python runtime    | fp32, int8              | `[executorch]` |
| litert      | `.tflite`           | LiteRT interpreter           | fp32, int8              | `[litert]` (own venv) |
| coreml      | `.mlpackage`        | none off macOS: program, op set, weights | fp32, fp16, int8 (weights) | `[coreml]` |
| openvino    | `.xml` + `.bin`     | OpenVINO CPU                 | fp32, fp16, bf16, int8  | `[openvino]`   |

Every task (classification, segmentation, the bare backbone) of every family registered in `mobilevit.auto`
exports. One module per format (`onnx.py`, ...) holds what differs; this front end validates the
arguments before any work, loads the model, prepares calibration and evaluation images, stages the outputs,
runs the checks and writes the sidecar `<artefact>.json` (e.g. `model.onnx.json`) (preprocessing, labels, outputs, measured
error, accuracy, size). Fixed-size formats take the model processor's crop size at batch 1 (`--image-size`
to change it); ONNX keeps batch, height and width dynamic.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import __version__, auto, limits
from ..file_utils import check_output_files, claim_output, staged_outputs
from ..tasks import CLASSIFICATION, OBJECT_DETECTION, SEGMENTATION, a_task
from . import coreml, executorch, litert, onnx, openvino
from .base import ExportJob, Format
from .common import (
    Comparison,
    ExportCheckError,
    ExportError,
    MainOutputs,
    check_inputs,
    compare,
    enforce_bound,
    input_size,
    is_inside,
    load_model,
    preprocess,
    preprocessing_of,
    quiet_exporters,
    sample_photos,
    sidecar_path,
    write_sidecar,
)
from .data import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_CALIBRATION_SPLIT,
    DEFAULT_EVALUATION_SPLIT,
    calibration_batches,
    evaluate,
    read_split,
)
from .onnx import ort_session

FORMATS: dict[str, Format] = {f.name: f for f in (onnx.FORMAT, executorch.FORMAT, litert.FORMAT, coreml.FORMAT,
                                                  openvino.FORMAT)}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
ODD_SIZE = (250, 310)  # a dynamic float graph is also checked at a size that takes the patch resize


def validate(format: str, output, model_dir, quantize: str | None = None, calibration_data=None,
             eval_data=None, calibration_size: int = DEFAULT_CALIBRATION_SIZE, image_size: int | None = None,
             overwrite: bool = False, threads: int | None = None) -> tuple[Format, str, Path]:
    """Every argument checked before any work: (format, precision, output path), or a one-line `ExportError`
    (exit 2 for a wrong argument, 1 for an input that cannot be used)."""
    if format not in FORMATS:
        raise ExportError(f"--format: expected one of {list(FORMATS)}, got {format!r}", usage=True)
    chosen = FORMATS[format]
    precision = quantize or "fp32"
    if precision not in chosen.precisions:
        offered = ", ".join(p for p in chosen.precisions if p != "fp32") or "float32 only"
        raise ExportError(f"--quantize: {chosen.title} exports {offered}, got {precision!r}", usage=True)
    output = Path(output)
    if output.suffix.lower() != chosen.suffix:
        raise ExportError(f"--output: expected a path ending in {chosen.suffix} for {chosen.title}, got {str(output)!r}",
                          usage=True)
    if not output.parent.is_dir():
        raise ExportError(f"--output: the folder {str(output.parent)!r} does not exist", usage=True)
    inputs = [source for source in (model_dir, calibration_data, eval_data) if source is not None]
    check_output_files(output_paths(chosen, output), "--output", inputs, overwrite=overwrite,
                       folders=[output] if chosen.is_folder else [], error=ExportError)
    for argument, source in (("--model", model_dir), ("--calibration-data", calibration_data),
                             ("--eval-data", eval_data)):
        if source is None:
            continue
        if not Path(source).exists():
            raise ExportError(f"{argument}: expected an existing folder, got {str(source)!r} (no such file or folder)")
        if is_inside(output, Path(source)) or is_inside(Path(source), output):
            raise ExportError(f"--output: {str(output)!r} would be inside or equal to the input {argument} "
                              f"{str(source)!r}; write it elsewhere", usage=True)
    if precision in chosen.calibrated and calibration_data is None:
        raise ExportError(f"--calibration-data: {chosen.title} --quantize {precision} quantizes activations and "
                          "needs a folder of your images (or a datasets folder) to calibrate on", usage=True)
    limits.check_int("--calibration-size", calibration_size, 1, error=ExportError)
    if image_size is not None:
        limits.check_image_side("--image-size", image_size, ExportError)
    if threads is not None:
        limits.check_threads("--threads", threads, ExportError)
    chosen.require(precision)
    return chosen, precision, output


def output_paths(chosen: Format, output: Path) -> list[Path]:
    """Everything an export writes, in commit order: the artefact, its companions, the sidecar (the manifest,
    which appears last)."""
    return [output, *chosen.companion_paths(output), sidecar_path(output)]


def _check_memory(model, task: str, size: tuple[int, int], calibration_images: int | None = None) -> None:
    """A forward at the export size, and the calibration images prepared at that size (what calibration keeps),
    must fit in memory."""
    per_image = auto.memory_per_image(model.config, task, *size, training=False)
    limits.check_fits_in_memory("--image-size", 1, per_image, f"{_described(model)} at {size[0]}x{size[1]} takes about",
                                ExportError)
    if calibration_images is not None:
        pixels = model.config.num_channels * size[0] * size[1] * 4
        limits.check_fits_in_memory("--calibration-size", calibration_images, pixels, f"calibration at {size[0]}x"
                                    f"{size[1]} keeps about", ExportError, fixed_bytes=per_image)


def _described(model) -> str:
    return f"{auto.family_of(model).title} {getattr(model.config, 'variant', None) or 'custom'}"


def export(model_dir, format: str, output, quantize: str | None = None, *, calibration_data=None,
           calibration_split: str = DEFAULT_CALIBRATION_SPLIT, calibration_size: int = DEFAULT_CALIBRATION_SIZE,
           eval_data=None, eval_split: str = DEFAULT_EVALUATION_SPLIT, image_size: int | None = None,
           overwrite: bool = False, threads: int | None = None, log=print) -> dict:
    """Export the saved model in `model_dir` to `output`; returns the sidecar's content (also written beside
    the artefact as `<artefact>.json`). Raises `ExportError` for bad arguments or inputs and
    `ExportCheckError` when the runtime's outputs are outside the precision's bound (nothing is kept then)."""
    chosen, precision, output = validate(format, output, model_dir, quantize, calibration_data, eval_data,
                                         calibration_size, image_size, overwrite, threads)
    started = time.perf_counter()
    targets = output_paths(chosen, output)
    with claim_output(targets, "--output", error=ExportError):
        # under the claim, again: another run may have written these since the check
        check_output_files(targets, "--output", overwrite=overwrite, folders=[output] if chosen.is_folder else [],
                           error=ExportError)
        return _export(chosen, precision, output, targets, model_dir, calibration_data, calibration_split,
                       calibration_size, eval_data, eval_split, image_size, overwrite, threads, log, started)


def _export(chosen, precision, output, targets, model_dir, calibration_data, calibration_split, calibration_size,
            eval_data, eval_split, image_size, overwrite, threads, log, started) -> dict:
    model, processor, task = load_model(model_dir)
    if eval_data is not None and task not in (CLASSIFICATION, SEGMENTATION):  # before any data is read
        raise ExportError(f"--eval-data: accuracy is measured for classification and segmentation, the model is "
                          f"{a_task(task)} model (detection: compare the artefact's boxes and scores, as the export's "
                          "own check does)", usage=True)
    graph = MainOutputs(model).eval()
    size = (image_size, image_size) if image_size else input_size(processor, model.config)
    _check_memory(model, task, size)
    calibration = evaluation = None
    if precision in chosen.calibrated:
        images = read_split(calibration_data, calibration_split, "--calibration-data", labelled=False,
                            limit=calibration_size)
        _check_memory(model, task, size, len(images))
        calibration = calibration_batches(images, processor, size)
        log(f"calibration: {images.description}")
    if eval_data is not None:
        evaluation = read_split(eval_data, eval_split, "--eval-data", labelled=True, task=task,
                                id2label=model.config.id2label, model=str(model_dir))
    job = ExportJob(graph, processor, size, precision, calibration, threads, Path(model_dir))

    with staged_outputs(targets, overwrite=overwrite, argument="--output", error=ExportError) as staged:
        log(f"exporting {task} model ({model.config.model_type}) to {chosen.title} {precision} at "
            f"{'dynamic size' if not chosen.fixed_size else f'{size[0]}x{size[1]}'} ...")
        with quiet_exporters():
            facts = chosen.write(job, staged.path(output))
        sidecar = _sidecar(chosen, job, output, model, task, facts, staged)
        runner = chosen.runner(staged.path(output), job)
        if runner is None:
            log(f"checking the {chosen.title} program without a runtime (none on this machine) ...")
            sidecar["check"] = {"runtime": None, **chosen.verify_without_runtime(staged.path(output), job)}
        else:
            log(f"running it in {chosen.runtime} on real photos ...")
            sidecar["check"] = _check_in_runtime(chosen, job, runner)
            if evaluation is not None:
                log(f"measuring accuracy on {evaluation.description} ...")
                sidecar["evaluation"] = _accuracy(job, task, runner, evaluation, processor, size)
        sidecar["export_seconds"] = round(time.perf_counter() - started, 1)
        write_sidecar(staged.path(sidecar_path(output)), sidecar)
    return sidecar


def _check_in_runtime(chosen: Format, job: ExportJob, runner) -> dict:
    """Real photos (and, for a dynamic graph, another batch and an odd size) through artefact and PyTorch."""
    channels = job.graph.config.num_channels
    cases = [check_inputs(job.processor, job.size, channels)]
    if not chosen.fixed_size and job.precision == "fp32":  # int8 is checked at the size it was calibrated at
        cases.append(check_inputs(job.processor, ODD_SIZE, channels)[:2])
    results = []
    for pixel_values in cases:
        with torch.no_grad():
            expected = job.graph(pixel_values)
        described = f"{len(pixel_values)} photos at {pixel_values.shape[-2]}x{pixel_values.shape[-1]}"
        comparison = compare(expected, runner(pixel_values.numpy()), job.graph.task, described)
        enforce_bound(comparison, job.precision, chosen.runtime)
        results.append(comparison.as_dict())
    return {"runtime": chosen.runtime, "comparisons": results}


def _accuracy(job: ExportJob, task: str, runner, evaluation, processor, size) -> dict:
    """The metric of PyTorch and of the artefact on the held-out split, and the change."""
    align = auto.family_of(job.graph.model).segmentation_align_corners

    def pytorch(pixel_values):
        with torch.no_grad():
            return [t.numpy() for t in job.graph(torch.from_numpy(pixel_values))]

    reference = evaluate(pytorch, evaluation, processor, size, task, job.graph.config, align)
    artefact = evaluate(runner, evaluation, processor, size, task, job.graph.config, align)
    metric = "accuracy" if task == CLASSIFICATION else "mean_iou"
    for name, result in (("PyTorch", reference), ("the artefact", artefact)):
        if result[metric] is None:
            raise ExportCheckError(f"--eval-data: the {metric} of {name} on {evaluation.description} is undefined "
                                   "(no labelled pixels or images to count)")
    return {"data": evaluation.description, "metric": metric, "pytorch": reference, "artefact": artefact,
            "change_points": round(100 * (artefact[metric] - reference[metric]), 2)}


def _sidecar(chosen: Format, job: ExportJob, output: Path, model, task: str, facts: dict, staged) -> dict:
    files = [output, *chosen.companion_paths(output)]
    size_bytes = sum(_size(staged.path(f)) for f in files)
    config = model.config
    return {
        "artefact": output.name,
        "companions": [f.name for f in files[1:]],
        "format": chosen.name,
        "precision": job.precision,
        "size_bytes": size_bytes,
        "task": task,
        "model_type": config.model_type,
        "variant": getattr(config, "variant", None),
        "source_model": str(Path(job.model_dir).resolve()) if job.model_dir else None,
        "input": {"name": "pixel_values", "layout": "NCHW", "dtype": "float32",
                  "shape": ["batch", config.num_channels, "height", "width"] if not chosen.fixed_size
                  else [1, config.num_channels, *job.size]},
        "outputs": job.graph.output_names(),
        "preprocessing": preprocessing_of(job.processor),
        "id2label": {str(k): v for k, v in config.id2label.items()} if task in (CLASSIFICATION, SEGMENTATION,
                                                                               OBJECT_DETECTION) else None,
        "postprocessing": _postprocessing(task, config),
        **({"detection_postprocessing": _detection_rule(job.processor, model)} if task == OBJECT_DETECTION else {}),
        **facts,
        "versions": {"mobilevit": __version__, "torch": torch.__version__},
    }


def _detection_rule(processor, model) -> dict:
    """The NMS rule that follows the graph: the processor's (the folder's preprocessor_config.json), else the
    family's."""
    return dict(processor.detection_postprocessing or auto.family_of(model).detection_postprocessing.to_dict())


def _postprocessing(task: str, config) -> str:
    if task == OBJECT_DETECTION:
        return ("the graph ends before non-maximum suppression. scores (batch, anchors, classes): softmax over all "
                "classes, column 0 the background (id2label); boxes (batch, anchors, 4): corners (x1, y1, x2, y2) "
                "normalised to the input (multiply by the image's width and height), not clipped. Then, per image and "
                "class c >= 1, keep scores above detection_postprocessing.score_threshold (the best "
                "candidates_per_class of them when set), greedy NMS per class at IoU > nms_iou_threshold, keep "
                "detections_per_class / detections_per_image when set; mobilevit's "
                "MobileViTImageProcessor.post_process_object_detection does exactly this")
    if task == CLASSIFICATION:
        return "logits (batch, num_labels): softmax for probabilities, arg-max for the class (id2label)"
    if task == SEGMENTATION:
        stride = getattr(config, "output_stride", "output_stride")
        return (f"logits (batch, num_labels, height/{stride}, width/{stride}): upsample bilinearly to the image size, "
                "then arg-max per pixel (id2label)")
    return "last_hidden_state (batch, channels, height/32, width/32) and, when present, pooler_output (batch, channels)"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def export_model(model, format: str, output, precision: str = "fp32", image_size: int | None = None,
                 calibration_images=None, overwrite: bool = False) -> dict:
    """Export an in-memory model (no folder, no sidecar), checked in its runtime on the shipped photos; what
    `mobilevit benchmark` times. int8 calibrates on `calibration_images` (default: the shipped photos)."""
    chosen, output = FORMATS[format], Path(output)
    targets = [output, *chosen.companion_paths(output)]
    check_output_files(targets, "output", overwrite=overwrite, folders=[output] if chosen.is_folder else [],
                       error=ExportError)
    graph = MainOutputs(model.eval()).eval()
    processor = auto.image_processor_for(model.config, auto.task_of_model(model))
    size = (image_size, image_size) if image_size else input_size(processor, model.config)
    calibration = None
    if precision in chosen.calibrated:
        images = calibration_images if calibration_images is not None else sample_photos()
        calibration = [preprocess(processor, images, size)]
    job = ExportJob(graph, processor, size, precision, calibration)
    with claim_output(targets, "output", error=ExportError), \
            staged_outputs(targets, overwrite=overwrite, argument="output", error=ExportError) as staged, \
            quiet_exporters():
        facts = chosen.write(job, staged.path(output))
        _check_in_runtime(chosen, job, chosen.runner(staged.path(output), job))
    return facts


def export_onnx(model, output, overwrite: bool = False, image_size: int | None = None) -> None:
    """A float32 ONNX file of an in-memory model, checked with ONNX Runtime (`mobilevit benchmark`'s graph)."""
    export_model(model, "onnx", output, image_size=image_size, overwrite=overwrite)


def artefact_runner(format: str, path, precision: str = "fp32", threads: int | None = None):
    """A callable NCHW float32 array -> output arrays for a written artefact (no model needed)."""
    return FORMATS[format].load(Path(path), precision, threads)


__all__ = ["FORMATS", "PRECISIONS", "ExportError", "ExportCheckError", "Comparison", "export", "validate",
           "export_model", "export_onnx", "artefact_runner", "ort_session"]
