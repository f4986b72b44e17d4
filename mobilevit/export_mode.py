"""Export-only forms of a few operations, switched on by `mobilevit.export` while it traces a model.

The model files call `attention`, `must_resize` and `sum_last` where they would call
`F.scaled_dot_product_attention`, decide whether a block resizes its map to whole patches, or sum over the
patches. Outside `exporting(...)` each is exactly what eager PyTorch does;
inside, the traced graph takes a form the deployment runtimes handle better, with the same outputs (to
float rounding):

- attention, in graphs of one fixed size, as an explicit softmax (q k^T * scale -> softmax -> @ v, as
  batched matrix products).
  `scaled_dot_product_attention` exports with `where`/`any`/`eq` masking ops, and a 4-D matmul with
  `expand` copies, that ExecuTorch's XNNPACK delegate cannot take: they split the graph into ~40 pieces and
  made the `.pte` slower than eager PyTorch;
- LayerNorm and MobileViTv2's GroupNorm(1), on request (`explicit_layer_norm=True`), spelled as means over
  the last two axes of a 4-D view, subtraction, `rsqrt` and an affine step: XNNPACK has neither norm, and
  its mean only averages the two innermost axes of a 4-D tensor. The norm modules are swapped for the time
  of the export and put back after;
- in graphs of one fixed size, MobileViTv2's context vector's sum over the patches as a 4-D mean times the
  count (XNNPACK has no `sum`). Its q/k/v `split` stays outside XNNPACK on purpose: taken apart with slices
  inside the delegate instead, the softmax over the patches that follows came out wrong (ExecuTorch 1.5.1:
  max error 2-3 on logits of ~3; with the split outside, 1e-5);
- the patch-size resize only where the map needs it. A graph that must serve every input size (ONNX with
  dynamic height and width) cannot ask whether the size divides by the patch, so it always resizes (a
  same-size bilinear resize is the identity); a graph exported for one fixed size knows the answer and
  carries no resize where none is needed.

An export that is not ours (`torch.export` called directly) keeps the safe default: always resize.

Under `torch.compile` none of this applies, and the switch is not even read: TorchDynamo cannot trace a
`ContextVar` (each read was a graph break, and `fullgraph=True` failed). `_fixed_size` answers "not exporting"
there before touching it; the exporters trace with `strict=False` (plain Python), where it is read as usual.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import torch
from torch import nn
from torch.nn import functional as F

# None: not inside `exporting`; otherwise whether the graph is traced for one fixed input size
_FIXED_SIZE: contextvars.ContextVar[bool | None] = contextvars.ContextVar("mobilevit_export_fixed_size", default=None)


@contextlib.contextmanager
def exporting(model: nn.Module, fixed_size: bool, explicit_layer_norm: bool = False):
    """Trace `model` with the export forms; `fixed_size`: the graph serves only the example's input size."""
    swapped = _swap_layer_norms(model) if explicit_layer_norm else []
    token = _FIXED_SIZE.set(bool(fixed_size))
    try:
        yield model
    finally:
        _FIXED_SIZE.reset(token)
        for parent, name, original in swapped:
            setattr(parent, name, original)


def _mean_of_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows.mean(dim=(2, 3), keepdim=True)  # the two innermost axes of a 4-D tensor: what XNNPACK averages


class ExplicitGroupNorm(nn.Module):
    """`nn.GroupNorm(1, C)` on (B, C, ...) from ops XNNPACK delegates: each sample as one 4-D row of means."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rows = features.reshape(features.shape[0], 1, features.shape[1], -1)
        centred = rows - _mean_of_rows(rows)
        normed = (centred * torch.rsqrt(_mean_of_rows(centred * centred) + self.eps)).reshape(features.shape)
        if self.weight is None:
            return normed
        affine = (1, -1) + (1,) * (features.dim() - 2)
        return normed * self.weight.reshape(affine) + self.bias.reshape(affine)


class ExplicitLayerNorm(nn.Module):
    """`nn.LayerNorm` over the last axis from ops XNNPACK delegates (4-D means over the two innermost axes)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, 1, hidden.shape[-1], 1)  # the normalised axis as a 4-D map's height
        centred = rows - rows.mean(dim=(2, 3), keepdim=True)
        variance = (centred * centred).mean(dim=(2, 3), keepdim=True)
        normed = (centred * torch.rsqrt(variance + self.eps)).reshape(hidden.shape)
        return normed * self.weight + self.bias if self.weight is not None else normed


def _swap_layer_norms(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm and len(child.normalized_shape) == 1:
                replacement = ExplicitLayerNorm(child)
            elif type(child) is nn.GroupNorm and child.num_groups == 1:
                replacement = ExplicitGroupNorm(child)
            else:
                continue
            swapped.append((parent, name, child))
            setattr(parent, name, replacement)
    return swapped


def _fixed_size() -> bool | None:
    """The switch of `exporting` (None outside it). Under TorchDynamo (`torch.compile`, which never exports
    through `exporting`) it is None without reading the ContextVar, which Dynamo cannot trace; the condition
    is a constant to Dynamo, so the read is not even in the traced code."""
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        return None
    return _FIXED_SIZE.get()


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention over the last two axes (no mask): SDPA, or its explicit form in a fixed-size
    export and where the explicit products are faster on CPU (`_explicit_is_faster`)."""
    if not _fixed_size() and not (dropout_p == 0.0 and _explicit_is_faster(query)):
        # eager, compiled, and dynamic-shape graphs (ONNX decomposes SDPA well itself)
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)
    *batch, tokens, head_size = query.shape
    query, key, value = (t.reshape(-1, t.shape[-2], t.shape[-1]) for t in (query, key, value))
    scores = torch.bmm(query, key.transpose(1, 2)) * (1.0 / math.sqrt(head_size))
    return torch.bmm(torch.softmax(scores, dim=-1), value).reshape(*batch, tokens, value.shape[-1])


# Below this many tokens SDPA's flash kernel loses to the explicit products on CPU when autograd is on.
EXPLICIT_ATTENTION_BELOW_TOKENS = 64


def _explicit_is_faster(query: torch.Tensor) -> bool:
    """On CPU, SDPA's flash kernel lost to the explicit products at MobileViT's sizes in bfloat16 (3-8x, forward
    and backward, 16-256 tokens, heads of 16-60) and, in training, below 64 tokens (1.3-1.6x forward and backward
    at 16-36 tokens; even at 64, faster from 256). Measured with benchmarks/profile_training.py's models."""
    if query.device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False  # exporters and compilers choose their own kernels (and must not branch on sizes)
    return query.dtype == torch.bfloat16 or (query.requires_grad and query.shape[-2] < EXPLICIT_ATTENTION_BELOW_TOKENS)


def sum_last(features: torch.Tensor) -> torch.Tensor:
    """`features.sum(dim=-1, keepdim=True)` of a 4-D tensor; a 4-D mean times the count in a fixed-size export."""
    if not _fixed_size():
        return features.sum(dim=-1, keepdim=True)
    batch, channels, rows, count = features.shape
    mean = _mean_of_rows(features.reshape(batch, channels * rows, count, 1))
    return (mean * float(count)).reshape(batch, channels, rows, 1)  # a float constant: int8 observers reject ints


def must_resize(size: tuple[int, int], patched_size: tuple[int, int]) -> bool:
    """Whether a block resizes its `size` map to `patched_size` (whole patches) and back."""
    if torch.compiler.is_exporting() and not _fixed_size():
        return True  # a graph for every input size: the check cannot be made at trace time
    # under torch.compile with dynamic shapes, a guard on the sizes' parity (a recompile when it changes)
    return tuple(patched_size) != tuple(size)


__all__ = ["exporting", "attention", "sum_last", "must_resize", "ExplicitLayerNorm", "ExplicitGroupNorm"]
