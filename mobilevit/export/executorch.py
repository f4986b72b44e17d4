"""ExecuTorch (`.pte`) with the XNNPACK delegate, run with ExecuTorch's Python runtime; int8 by PT2E.

The graph is `torch.export`ed at one input size (batch 1, the processor's crop) with the export forms of
`mobilevit.export_mode`: explicit-softmax attention and LayerNorm spelled in ops XNNPACK takes. Before
those, `scaled_dot_product_attention`'s masking ops and the LayerNorms stayed outside the delegate and split
the graph into 41 pieces; now the whole network is one or two XNNPACK pieces, and the export refuses to
finish when more than `MAX_OUTSIDE` of the compute ops stay outside the delegate.

int8 (`--quantize int8`): PT2E with ExecuTorch's XNNPACK quantizer (weights int8 per channel, activations
int8 per tensor, calibrated on the user's images), then lowered to XNNPACK's int8 kernels.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .base import ExportJob, Format
from .common import ExportCheckError, Runner, per_image

MAX_OUTSIDE = 0.05  # share of the graph's compute ops allowed to run outside XNNPACK
_BOOKKEEPING = {"getitem", "executorch_call_delegate", "alloc", "view_copy", "_to_dim_order_copy"}


def quiet_imports() -> None:
    """ExecuTorch pulls in torchao, which logs failed loads of CUDA kernels on a CPU machine."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is an Enum subclass.*")
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")


def _op_name(node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.replace("aten.", "").replace(".default", "")


def delegation(graph_module, ops_before: int) -> dict:
    """How much of the graph XNNPACK took: pieces handed over and the compute ops left outside."""
    outside = Counter()
    pieces = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node)
        if name == "executorch_call_delegate":
            pieces += 1
        elif name not in _BOOKKEEPING:
            outside[name] += 1
    left = sum(outside.values())
    return {"delegate": "XNNPACK", "pieces": pieces, "ops_outside": dict(outside),
            "share_outside": left / max(ops_before, 1), "ops_before_lowering": ops_before}


def _count_ops(program) -> int:
    return sum(1 for node in program.graph_module.graph.nodes if node.op == "call_function"
               and _op_name(node) not in _BOOKKEEPING)


def quantize_int8(program, calibration: list[torch.Tensor]):
    """PT2E int8 of an exported program, calibrated image by image (the graph takes batch 1)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            for image in batch.split(1):
                prepared(image)
    converted = convert_pt2e(prepared)
    example = next(iter(calibration))[:1]
    return torch.export.export(converted, (example,), strict=False)


class ExecuTorchFormat(Format):
    name, title, suffix, extra = "executorch", "ExecuTorch", ".pte", "executorch"
    modules = ("executorch",)
    precisions = ("fp32", "int8")
    calibrated = ("int8",)
    runtime = "ExecuTorch (XNNPACK)"
    explicit_layer_norm = True

    def write(self, job: ExportJob, path: Path) -> dict:
        quiet_imports()
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        program = self.trace(job)
        facts = {"input_shape": [1, job.graph.config.num_channels, *job.size]}
        if job.precision == "int8":
            program = quantize_int8(program, job.calibration)
            facts["quantization"] = {"method": "PT2E, ExecuTorch XNNPACKQuantizer", "weights": "int8 per channel",
                                     "activations": "int8 per tensor (min/max calibration)"}
        ops_before = _count_ops(program)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        facts["delegation"] = delegation(edge.exported_program().graph_module, ops_before)
        if facts["delegation"]["share_outside"] > MAX_OUTSIDE:
            raise ExportCheckError(
                f"XNNPACK took too little of the graph: {facts['delegation']['ops_outside']} stay outside "
                f"({facts['delegation']['share_outside']:.0%} of the compute ops, at most {MAX_OUTSIDE:.0%} allowed)")
        path.write_bytes(edge.to_executorch().buffer)
        return facts

    def load(self, path: Path, precision: str, threads: int | None) -> Runner:
        return executorch_runner(path)


def executorch_runner(path: Path) -> Runner:
    quiet_imports()
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return per_image(lambda image: [np.asarray(o) for o in method.execute([torch.from_numpy(image)])])


FORMAT = ExecuTorchFormat()

__all__ = ["FORMAT", "ExecuTorchFormat", "delegation", "executorch_runner", "MAX_OUTSIDE"]
