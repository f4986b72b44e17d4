"""Core ML (`.mlpackage`, an ML program) by coremltools from the `torch.export`ed program.

The input is a Core ML image (`ImageType`) with the preprocessing embedded where Core ML has a place for it:
BGR channel order and the 1/255 scale; resizing and cropping to the input size stay with the app (the
sidecar states them). Precisions: fp32 (float32 compute), fp16 (float16 compute, Core ML's default for the
Neural Engine), int8 (weights stored as int8, linear symmetric per channel, float16 compute).

Only macOS runs Core ML, so on other machines the export checks what can be checked (`verify_without_runtime`):
the program's inputs (image, BGR, scale, size) and outputs (names, shapes), its operation set, and that the
weights read back from the saved package equal PyTorch's. What remains unverified there is the prediction
itself (numerics of Core ML's CPU, GPU and Neural Engine back ends).
"""

from __future__ import annotations

import logging
import platform
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .base import ExportJob, Format
from .common import INPUT_NAME, ExportCheckError, Runner, per_image

# the operations a MobileViT program is made of; anything else means the conversion took a path not checked
EXPECTED_OPS = {"const", "reshape", "transpose", "linear", "conv", "silu", "relu", "add", "sub", "mul",
                "layer_norm", "matmul", "softmax", "concat", "reduce_mean", "upsample_bilinear", "resize_bilinear",
                "avg_pool", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "cast", "squeeze",
                "expand_dims", "tile", "real_div", "batch_norm", "rsqrt", "sqrt", "slice_by_index",
                # MobileViTv2: the q/k/v split, the context sum over the patches, GroupNorm's statistics
                "split", "reduce_sum", "square",
                # SSDLite: the box decoding's exp (sizes from regressions), its corners, the scores' softmax
                "exp"}


INT8_MIN_ELEMENTS = 2048  # coremltools' default: smaller weights (a small classifier) stay float16


class CoreMLFormat(Format):
    name, title, suffix, extra = "coreml", "Core ML", ".mlpackage", "coreml"
    modules = ("coremltools",)
    precisions = ("fp32", "fp16", "int8")
    runtime = "Core ML" if platform.system() == "Darwin" else ""
    is_folder = True

    def write(self, job: ExportJob, path: Path) -> dict:
        import coremltools as ct

        logging.getLogger("coremltools").setLevel(logging.ERROR)
        program = self.trace(job).run_decompositions({})
        config = job.graph.config
        shape = (1, config.num_channels, *job.size)
        if config.num_channels == 3:
            bgr = job.processor.setting("do_flip_channel_order")
            scale = float(job.processor.rescale_factor) if job.processor.setting("do_rescale") else 1.0
            image = ct.ImageType(name=INPUT_NAME, shape=shape, scale=scale,
                                 color_layout=ct.colorlayout.BGR if bgr else ct.colorlayout.RGB)
            facts = {"coreml_input": f"image, {'BGR' if bgr else 'RGB'}, scale {scale:.6g}, {job.size[0]}x{job.size[1]}"}
        else:  # Core ML images are grey or colour; other channel counts take a float tensor
            image = ct.TensorType(name=INPUT_NAME, shape=shape)
            facts = {"coreml_input": f"float32 tensor {list(shape)}"}
        precision = ct.precision.FLOAT32 if job.precision == "fp32" else ct.precision.FLOAT16
        model = ct.convert(program, inputs=[image], outputs=[ct.TensorType(name=n) for n in job.graph.output_names()],
                           convert_to="mlprogram", compute_precision=precision,
                           minimum_deployment_target=ct.target.iOS16)
        if job.precision == "int8":
            import coremltools.optimize.coreml as optimize

            config = optimize.OptimizationConfig(global_config=optimize.OpLinearQuantizerConfig(
                mode="linear_symmetric", weight_threshold=INT8_MIN_ELEMENTS))
            model = optimize.linear_quantize_weights(model, config)
            facts["quantization"] = {"method": "coremltools linear_quantize_weights", "weights": "int8 per channel",
                                     "activations": "float16"}
        model.save(str(path))
        facts["compute_precision"] = "float32" if job.precision == "fp32" else "float16"
        return facts

    def runner(self, path: Path, job: ExportJob) -> Runner | None:
        if platform.system() != "Darwin":
            return None
        import coremltools as ct

        model = ct.models.MLModel(str(path))
        names = job.graph.output_names()

        def run_one(image: np.ndarray) -> list:
            from PIL import Image

            # back to the 8-bit picture an app would hand over
            pixels = np.clip(np.round(image[0].transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
            if job.processor.setting("do_flip_channel_order"):
                pixels = pixels[..., ::-1]
            result = model.predict({INPUT_NAME: Image.fromarray(np.ascontiguousarray(pixels))})
            return [np.asarray(result[n]) for n in names]

        return per_image(run_one)

    def verify_without_runtime(self, path: Path, job: ExportJob) -> dict:
        """Inputs, outputs, op set and the weights' round trip of the saved package."""
        import coremltools as ct
        from coremltools.optimize.coreml import get_weights_metadata

        saved = ct.models.MLModel(str(path), skip_model_load=True)
        spec = saved.get_spec()
        inputs = spec.description.input
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise ExportCheckError(f"Core ML program: expected one input {INPUT_NAME!r}, got {[i.name for i in inputs]}")
        image = inputs[0].type
        if image.HasField("imageType"):
            size = (image.imageType.height, image.imageType.width)
            if size != tuple(job.size):
                raise ExportCheckError(f"Core ML program: input image is {size}, expected {tuple(job.size)}")
        outputs = [o.name for o in spec.description.output]
        if outputs != job.graph.output_names():
            raise ExportCheckError(f"Core ML program: outputs {outputs}, expected {job.graph.output_names()}")

        ops = Counter(op.type for function in spec.mlProgram.functions.values()
                      for block in function.block_specializations.values() for op in block.operations)
        unexpected = sorted(set(ops) - EXPECTED_OPS)
        if unexpected:
            raise ExportCheckError(f"Core ML program: unexpected operations {unexpected}")

        # Core ML renames weights (float16 ones become const_N_to_fp16), so each layer's weight is found by shape
        # and value: linear layers, and convolutions with a bias of their own (those without one have a BatchNorm
        # after them, folded into their weights, so their stored values differ from PyTorch's)
        stored = [entry.val for entry in get_weights_metadata(saved, weight_threshold=1).values()
                  if entry.val.ndim in (2, 4)]
        linears = [m.weight.detach().numpy() for m in job.graph.modules()
                   if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.bias is not None)]
        if job.precision == "int8":
            checked, worst = sum(1 for value in stored if value.dtype == np.int8), 0.0
            expected = sum(1 for weight in linears if weight.size >= INT8_MIN_ELEMENTS)
            if checked < expected:
                raise ExportCheckError(f"Core ML package: {checked} int8 weight matrices stored, expected at least "
                                       f"{expected} (one per linear or biased convolution of "
                                       f"{INT8_MIN_ELEMENTS}+ weights)")
        else:
            checked, worst = 0, 0.0
            for reference in linears:
                scale = max(float(np.abs(reference).max()), 1e-12)
                errors = [float(np.abs(value.astype(np.float32) - reference).max()) / scale
                          for value in stored if value.shape == reference.shape and value.dtype != np.int8]
                if not errors:
                    raise ExportCheckError(f"Core ML package: no stored weight of shape {list(reference.shape)} "
                                           "(a layer of PyTorch's) was found")
                worst, checked = max(worst, min(errors)), checked + 1
            bound = 1e-6 if job.precision == "fp32" else 1e-3  # float16 keeps 11 significant bits
            if worst > bound:
                raise ExportCheckError(f"Core ML package: stored weights differ from PyTorch's by {worst:.2e} "
                                       f"(relative, bound {bound})")
        return {"inputs": [INPUT_NAME], "outputs": outputs, "ops": dict(ops), "weights_compared": checked,
                "weights_max_relative_error": worst,
                "unverified": "predictions: Core ML runs only on macOS; the program, its op set and its weights "
                              "were checked here"}


FORMAT = CoreMLFormat()

__all__ = ["FORMAT", "CoreMLFormat", "EXPECTED_OPS"]
