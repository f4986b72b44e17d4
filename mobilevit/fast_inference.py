"""The eval-mode fast path shared by the model families: same weights, same math, less work.

Each family's plain forward (its `modeling_*.py`) is the reference and the only path used for training.
When a model is in eval mode and autograd is not needed, it hands its input to its fast path instead
(`models/<family>/fast_<family>.py`), which walks the same modules with the pieces below:

- BatchNorm is folded into the convolution before it (w' = w * gamma / sqrt(var + eps), b' = ...),
- on CPU in float32 and bfloat16, each convolution runs as one oneDNN call on a weight prepacked into
  oneDNN's blocked layout, with its activation (or, at the end of an inverted residual, the skip addition)
  fused in: the same fused operator PyTorch's own compiler emits for CPU convolutions,
- activations stay channels_last (NHWC) from the stem to the head, which oneDNN convolves fastest and
  which turns unfold/fold into one copy each,
- activations and residual additions happen in place on tensors this path owns,
- large batches run as micro-batches small enough for the allocator to reuse memory (`micro_batch_size`),
  and on glibc the first call raises malloc's adaptive mmap threshold above them (`settle_allocator`).

The MobileNetV2 inverted residual, the DeepLabV3 head and the SSDLite detector's extra layers and heads are the
same in every family (same module names), so they are walked here; the families' own blocks are walked in
their folders.

Derived weights (folded convolutions, fused projections) are cached on the module they come from, under
the attribute `_fast_inference_cache`, never as parameters or buffers, so the state dict does not change.
Each entry is keyed on the identity, storage address, version counter and dtype of every source tensor: an
optimizer step, `load_state_dict`, an in-place edit, a replaced parameter or a dtype/device move changes
the key and the entry is rebuilt on its next use. `model.train()` and `.to()`/`.half()`/... drop every
entry outright (`FastInferenceMixin`). Cached tensors are computed without autograd and are never used
when gradients are wanted, so no gradient can flow through them.

A CPU forward without autograd also runs under the thread policy (`thread_policy.py`): one thread for a
forward while other processes hold the CPUs, where a team of threads would wait at every operator's barrier.

Switching it off (to debug, or to compare): `model.set_fast_inference(False)`, or `MOBILEVIT_FAST=0` in the
environment (read at every call). Outputs returned to the caller are NCHW-contiguous, like the plain path's.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from transformers.activations import SiLUActivation

from . import thread_policy
from .ssd.modeling import BOX_VALUES, flatten_predictions

ENV_SWITCH = "MOBILEVIT_FAST"
CACHE_ATTR = "_fast_inference_cache"
CHANNELS_LAST = torch.channels_last
MICRO_BATCH_BYTES = 16 << 20  # below glibc's largest dynamic mmap threshold (32 MiB), so blocks get reused
SETTLING_BLOCK_BYTES = 31 << 20  # see settle_allocator: just under that 32 MiB cap

# oneDNN convolution with a fused epilogue (inductor's CPU lowering target). A private operator: without it
# (a build without oneDNN) every convolution takes the F.conv2d route, with the same results.
_ONEDNN_CONV = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if torch.backends.mkldnn.is_available() else None
# below this many pixels a pointwise conv is faster as a plain GEMM (oneDNN's fixed cost per call dominates)
ONEDNN_MIN_PIXELS_POINTWISE = 32 * 32
ONEDNN_DTYPES = (torch.float32, torch.bfloat16)  # bfloat16: the CPU's BF16 instructions where it has them
MAX_PACKED_SHAPES = 4  # per layer: packed weights kept for this many input shapes
_ONEDNN_ACTIVATIONS = {SiLUActivation: "swish", nn.SiLU: "swish", nn.ReLU: "relu", type(None): "none"}


# --------------------------------------------------------------------------------------------------------
# When the fast path runs
# --------------------------------------------------------------------------------------------------------
def is_enabled(model: nn.Module) -> bool:
    """The user's switches: `model.set_fast_inference(...)` and the environment variable."""
    return getattr(model, "_fast_inference_enabled", True) and os.environ.get(ENV_SWITCH, "1").strip() != "0"


def applies(model: nn.Module, pixel_values: torch.Tensor) -> bool:
    """True when `model` may run the fast path on `pixel_values` right now."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False  # exporters and compilers see the plain graph (and fold it themselves): docs/compile.md
    if not is_enabled(model) or _any_in_training_mode(model):
        return False  # a submodule in train mode (say BatchNorm for test-time adaptation) needs the plain path
    if torch.is_grad_enabled():
        # someone may want gradients (saliency maps, eval-mode fine-tuning): only the plain path has them
        if pixel_values.requires_grad or any(p.requires_grad for p in model.parameters()):
            return False
    return True


def _any_in_training_mode(model: nn.Module) -> bool:
    """`any(m.training for m in model.modules())`, a quarter of the cost (no names, no memo): it runs per call."""
    pending = [model]
    while pending:
        module = pending.pop()
        if module.training:
            return True
        pending.extend(child for child in module._modules.values() if child is not None)
    return False


# --------------------------------------------------------------------------------------------------------
# The cache of derived weights
# --------------------------------------------------------------------------------------------------------
def _signature(tensors) -> tuple:
    # a dtype or device change means new storage, so the address covers it (and .to() clears the cache anyway)
    return tuple([None if t is None else (id(t), t.data_ptr(), t._version) for t in tensors])


class _Entry(tuple):
    """(key, value) of a cache entry. Copies of the model start without it: oneDNN's packed weights can be
    neither pickled nor deep-copied, and everything in an entry is rebuilt from the parameters anyway."""

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return (type(None), ())


def cached(module: nn.Module, sources: tuple, build, extra: tuple = ()):
    """`build()` for `module`, recomputed only when one of `sources` (or `extra`) changed since the last call."""
    key = _signature(sources) + extra
    entry = module.__dict__.get(CACHE_ATTR)
    if entry is not None and entry[0] == key:
        return entry[1]
    # plain tensors even when the caller runs under inference_mode, so the cache is usable outside it too
    with torch.inference_mode(False), torch.no_grad():
        value = build()
    module.__dict__[CACHE_ATTR] = _Entry((key, value))
    return value


def clear_cache(model: nn.Module) -> None:
    """Drop every derived weight under `model` (they are rebuilt on the next fast call)."""
    for module in model.modules():
        module.__dict__.pop(CACHE_ATTR, None)


class FoldedConvolution(NamedTuple):
    weight: torch.Tensor  # BatchNorm folded in, channels_last
    bias: torch.Tensor
    packed: dict | None  # input shape -> `weight` in oneDNN's blocked layout, where the fused operator applies
    geometry: tuple  # (padding, stride, dilation, groups) as oneDNN's operator takes them
    pointwise: bool  # a 1x1, stride-1, ungrouped convolution: a GEMM over pixels


def folded_convolution(layer: nn.Module) -> FoldedConvolution:
    """The convolution of a `MobileViTConvLayer` with its BatchNorm (if any) folded in."""
    conv, norm = layer._modules["convolution"], layer._modules.get("normalization")
    # read through the registries rather than nn.Module.__getattr__: this runs for every layer of every call
    sources = (conv._parameters["weight"], conv._parameters.get("bias"))
    if norm is not None:
        # the BatchNorm kernel updates running statistics without bumping their version counters; the
        # batch counter next to them is bumped by every training-mode forward
        parameters, buffers = norm._parameters, norm._buffers
        sources += (parameters.get("weight"), parameters.get("bias"), buffers.get("running_mean"))
        sources += (buffers.get("running_var"), buffers.get("num_batches_tracked"))

    def build():
        weight = conv.weight.double()
        bias = conv.bias.double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        if norm is not None:
            scale = torch.rsqrt(norm.running_var.double() + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight.double()
            shift = -norm.running_mean.double() * scale
            if norm.bias is not None:
                shift = shift + norm.bias.double()
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = bias * scale + shift
        dtype = conv.weight.dtype
        weight, bias = weight.to(dtype).contiguous(memory_format=CHANNELS_LAST), bias.to(dtype)
        fusable = _ONEDNN_CONV is not None and weight.dtype in ONEDNN_DTYPES and weight.device.type == "cpu"
        geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        pointwise = weight.shape[-2:] == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
        return FoldedConvolution(weight, bias, {} if fusable else None, geometry, pointwise)

    return cached(layer, sources, build, extra=(norm.eps,) if norm is not None else ())


# --------------------------------------------------------------------------------------------------------
# The layers every family shares (module names as in stock transformers)
# --------------------------------------------------------------------------------------------------------
def activate_(activation: nn.Module | None, features: torch.Tensor) -> torch.Tensor:
    """Apply `activation` in place where it has an in-place form (features belong to this path)."""
    if activation is None:
        return features
    if isinstance(activation, (SiLUActivation, nn.SiLU)):
        return F.silu(features, inplace=True)
    if isinstance(activation, nn.ReLU):
        return features.relu_()
    return activation(features)


def packed_weight(folded: FoldedConvolution, features: torch.Tensor) -> torch.Tensor:
    """`folded.weight` prepacked by oneDNN for inputs of `features`' shape. Packing needs the shape: packed
    for "any" shape, some layers (3x3, 96 channels, 8x8 maps) ran 20x slower."""
    shape = tuple(features.shape)
    packed = folded.packed.get(shape)
    if packed is None:
        if len(folded.packed) >= MAX_PACKED_SHAPES:
            folded.packed.pop(next(iter(folded.packed), None), None)  # the oldest shape (another thread may race us)
        with torch.inference_mode(False), torch.no_grad():
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(folded.weight.to_mkldnn(), *folded.geometry, list(shape))
        folded.packed[shape] = packed
    return packed


def conv_layer(layer: nn.Module, features: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """`MobileViTConvLayer`: folded conv (+ bias) and activation, then `+ residual` if given."""
    folded = folded_convolution(layer)
    onednn_activation = _ONEDNN_ACTIVATIONS.get(type(layer.activation))
    batch, _, height, width = features.shape
    if (
        folded.packed is not None
        and onednn_activation is not None
        and (residual is None or onednn_activation == "none")
        and not (folded.pointwise and batch * height * width < ONEDNN_MIN_PIXELS_POINTWISE)
        and features.dtype == folded.weight.dtype
        and features.is_contiguous(memory_format=CHANNELS_LAST)
    ):
        weight = packed_weight(folded, features)
        if residual is None:
            return _ONEDNN_CONV(features, weight, folded.bias, *folded.geometry, onednn_activation, [], None)
        # the skip addition rides along as a binary post-op
        return _ONEDNN_CONV.binary(features, residual, weight, folded.bias, *folded.geometry, "add", None, None, [], None)

    weight, bias = folded.weight, folded.bias
    if folded.pointwise and features.is_contiguous(memory_format=CHANNELS_LAST):
        # a pointwise conv on NHWC is one GEMM over the pixels, without the conv machinery's overhead
        out = F.linear(features.permute(0, 2, 3, 1), weight.view(weight.shape[0], -1), bias).permute(0, 3, 1, 2)
    else:
        conv = layer.convolution
        out = F.conv2d(features, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    out = activate_(layer.activation, out)
    return out if residual is None else out.add_(residual)


def inverted_residual(block: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, 1x1 reduce with the skip addition fused in."""
    expanded = conv_layer(block.conv_3x3, conv_layer(block.expand_1x1, features))
    return conv_layer(block.reduce_1x1, expanded, residual=features if block.use_residual else None)


def micro_batch_size(model: nn.Module, pixel_values: torch.Tensor) -> int:
    """Images per micro-batch such that the widest map stays under MICRO_BATCH_BYTES: glibc malloc serves
    larger blocks with fresh, page-faulting mmap'd memory on every call, which made batch 32 slower per image
    than batch 1. Eval outputs do not depend on batching."""
    _, _, height, width = pixel_values.shape
    per_image = widest_map_elements(model, height, width) * pixel_values.element_size()
    return max(1, MICRO_BATCH_BYTES // per_image)


def widest_map_elements(model: nn.Module, height: int, width: int) -> int:
    """Elements per image of the largest map the backbone makes: an inverted residual's expansion, at the
    resolution of its input (in MobileViT-S, layer_2's first block: 128 channels at half resolution). Only the
    stem and the inverted residuals stride, and `modules()` visits them in the order they run."""
    height, width = -(-height // 2), -(-width // 2)  # the stem strides by 2 (3x3, padding 1: ceil)
    widest = 0
    for block in model.encoder.modules():
        if _is_inverted_residual(block):
            widest = max(widest, block.expand_1x1.convolution.out_channels * height * width)
            stride = block.conv_3x3.convolution.stride[0]
            height, width = -(-height // stride), -(-width // stride)
    return widest


def _is_inverted_residual(module: nn.Module) -> bool:
    # by its parts: the families' classes differ in name, not in shape
    return all(name in module._modules for name in ("expand_1x1", "conv_3x3", "reduce_1x1"))


_allocator_settled = False


def settle_allocator() -> None:
    """Let glibc malloc reuse memory for every map of this path, once per process.

    glibc serves a block above its mmap threshold with fresh pages from the kernel, and gives freed heap memory
    above twice that threshold back to the kernel. The threshold starts at 128 KiB and rises to the size of the
    largest mmap'd block freed so far (glibc's own adaptation, capped at 32 MiB). Until some large block has
    raised it, a forward page-faults its larger maps in again on every call (xx-small: 1,250 faults, 13 ms
    instead of 11). Freeing one block larger than our maps raises it once and for all: one just under the cap,
    above MICRO_BATCH_BYTES and above DeepLabV3's largest map at 512x512 (its ASPP branches concatenated,
    20 MiB). A threshold set by the user (mallopt, MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES) turns glibc's
    adaptation off, so theirs stays."""
    global _allocator_settled
    if _allocator_settled:
        return
    _allocator_settled = True
    if _is_glibc():
        block = torch.empty(SETTLING_BLOCK_BYTES, dtype=torch.uint8)  # mmap'd, never touched
        del block


def _is_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or one that does not know the name
        return False


def walk_backbone(model: nn.Module, pixel_values: torch.Tensor, keep_stages: bool, attention_stage,
                  keep_stem: bool = False):
    """A family's backbone, channels_last: stem, the MobileNetV2 stages, the attention stages (each through
    `attention_stage(stage, features)`, the family's own block), then v1's final 1x1 expansion if the model has
    one. Returns (last feature map, stage outputs if `keep_stages`, led by the stem's if `keep_stem`)."""
    features = conv_layer(model.conv_stem, pixel_values.contiguous(memory_format=CHANNELS_LAST))
    stages = [features] if keep_stages and keep_stem else []
    for stage in model.encoder.layer:
        if "transformer" in stage._modules:  # an attention stage; the others are MobileNetV2 stages
            features = attention_stage(stage, features)
        else:
            for block in stage.layer:
                features = inverted_residual(block, features)
        if keep_stages:
            stages.append(features)
    expansion = model._modules.get("conv_1x1_exp")
    if expansion is not None:
        features = conv_layer(expansion, features)
    return features, stages


def run_backbone(walk, model: nn.Module, pixel_values: torch.Tensor, keep_stages: bool, keep_stem: bool = False):
    """`walk(model, pixel_values, keep_stages, keep_stem)` -> (last feature map, stage outputs), a family's
    backbone, run in micro-batches where the batch is large (see `micro_batch_size`), with the allocator settled
    first."""
    if pixel_values.device.type == "cpu":
        settle_allocator()
    batch = pixel_values.shape[0]
    size = batch if batch == 1 else micro_batch_size(model, pixel_values)  # one image: nothing to split
    if batch <= size:
        return walk(model, pixel_values, keep_stages, keep_stem)
    parts = [walk(model, chunk, keep_stages, keep_stem) for chunk in pixel_values.split(size)]
    features = torch.cat([last for last, _ in parts])
    stages = [torch.cat(maps) for maps in zip(*(stages for _, stages in parts))]
    return features, stages


def deeplab_head(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The DeepLabV3 head: ASPP (the image-pooling branch as a broadcast) and the per-pixel classifier."""
    features = features.contiguous(memory_format=CHANNELS_LAST)
    batch, _, height, width = features.shape
    branches = []
    for branch in head.aspp.convs:
        if "global_pool" in branch._modules:  # the image-pooling branch
            pooled = conv_layer(branch.conv_1x1, features.mean(dim=(2, 3), keepdim=True))
            # bilinear resizing of a 1x1 map is a broadcast
            branches.append(pooled.expand(batch, pooled.shape[1], height, width))
        else:
            branches.append(conv_layer(branch, features))
    projected = conv_layer(head.aspp.project, torch.cat(branches, dim=1))
    return conv_layer(head.classifier, projected).contiguous()


def ssd_head(head: nn.Module, backbone_maps: list[torch.Tensor]):
    """SSDLite's extra layers and heads (`mobilevit.ssd.SSDLite`) on channels_last maps, BatchNorm folded into
    every convolution: (box regressions, class logits, level maps). A head's NHWC output is already the
    (B, H*W*A, 4 + classes) layout the predictions take, so flattening it copies nothing."""
    features = [level.contiguous(memory_format=CHANNELS_LAST) for level in backbone_maps]
    for layer in head.extra_layers:  # separable convolutions of stride 2
        features.append(conv_layer(layer.pointwise, conv_layer(layer.depthwise, features[-1])))
    if head.global_pool is not None:  # average pooling to 1x1, then a 1x1 convolution
        features.append(conv_layer(head.global_pool.projection, features[-1].mean(dim=(2, 3), keepdim=True)))
    outputs = []
    for level_head, level in zip(head.heads, features):
        if level_head.projection is not None:
            level = conv_layer(level_head.projection, level)
        predictor = level_head.predictor
        if "depthwise" in predictor._modules:
            predictions = conv_layer(predictor.pointwise, conv_layer(predictor.depthwise, level))
        else:
            predictions = conv_layer(predictor, level)
        outputs.append(flatten_predictions(predictions, level_head.num_outputs))
    predictions = torch.cat(outputs, dim=1)
    regression, logits = predictions.split([BOX_VALUES, predictions.shape[-1] - BOX_VALUES], dim=-1)
    return regression, logits, features


# --------------------------------------------------------------------------------------------------------
# What a family's PreTrainedModel mixes in
# --------------------------------------------------------------------------------------------------------
class FastInferenceMixin:
    """The switch, and cache hygiene: `train()` and `.to()`/`.half()`/... drop the derived weights."""

    def set_fast_inference(self, enabled: bool = True):
        """Turn the eval-mode fast path on or off for this model (`MOBILEVIT_FAST=0` turns it off everywhere)."""
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
        for module in self.modules():
            if isinstance(module, FastInferenceMixin):
                module._fast_inference_enabled = enabled
        return self

    def __call__(self, *args, **kwargs):
        # a CPU forward without autograd runs under the thread policy (thread_policy.py), head included; a model
        # nested in another one (the base model in a head) finds the policy taken by the outer one. A compiled
        # graph has no place for it (it reads clocks and sets threads): compilers see the plain call
        if torch.compiler.is_compiling() or self.training or torch.is_grad_enabled() or not is_enabled(self) \
                or self.device.type != "cpu":
            return super().__call__(*args, **kwargs)
        with thread_policy.POLICY.forward():
            return super().__call__(*args, **kwargs)

    def train(self, mode: bool = True):
        if mode:  # training changes BatchNorm statistics: derived weights are rebuilt at the next eval call
            clear_cache(self)
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .half(), .cuda(), ...: derived weights follow the new ones
        clear_cache(self)
        return super()._apply(fn, *args, **kwargs)
