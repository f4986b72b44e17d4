"""How an image becomes pixels: the one set of rules that the image processor, training and `predict` share.

`image_pixels` turns a PIL image, a NumPy array or a torch tensor into H x W x C pixels; `label_map` turns a
segmentation map into H x W class ids; `open_image` reads an image file whole (a truncated file fails here,
named; EXIF orientation applied; decompression bombs refused). docs/reading-images.md states every
rule; the ones that needed a decision:

- alpha is dropped, never composited onto white (ml-cvnets' `cv2.imread` and transformers' pipelines drop it);
- 16-bit data (uint16, PIL "I;16*") is divided by 257; integers of no stated depth (PIL "I", int32, ...) are
  read by their values: 0..255 as 8-bit, up to 65535 as 16-bit, anything else is an error;
- floats must lie in [0, 1] when rescaled (quantised to 8 bits, like the uint8 image they came from);
- bool reads as 0 / 255, like PIL mode "1";
- a shape whose first and last axes could both be channels (3 x 3 x 4, 4 x H x 4, 1 x H x 3) is an error
  asking for `input_data_format`, where transformers silently takes channels first;
- `convert_rgb=False` keeps 1 and 4 channels (for models with `num_channels` 1 or 4); palettes and colour
  spaces (CMYK, YCbCr, LAB, HSV) become RGB either way;
- segmentation maps: an RGB map is read when its colour channels are equal (a grey map saved as RGB) and
  refused when colour-coded; class ids are never rescaled.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers.image_utils import ChannelDimension

from .errors import UserError

CHANNEL_COUNTS = (1, 3, 4)
# Pillow modes holding 16-bit samples (the depth is stated by the mode)
PIL_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Pillow modes that are a colour space of their own: converted to RGB whatever `convert_rgb` says
_PIL_COLOUR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")
_MAX_8BIT, _MAX_16BIT = 255, 65535


class ImageError(UserError):
    """An image (or segmentation map, or image file) that cannot be read by the rules above; the message names
    it ("images[3]", a file path, ...), says what was expected and what came."""


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------
def open_image(source: str | os.PathLike | bytes, name: str | None = None, *, quick: bool = False) -> PIL.Image.Image:
    """An image file (a path, or its bytes) decoded whole and turned upright (EXIF orientation); one-line
    `ImageError`s naming `name` (default: the path). `quick` decodes JPEGs at a reduced scale, which still
    reads every byte of the file (a truncated file still fails) at about half the cost: for checks."""
    name = name or repr(str(source))
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"image {name} does not exist")
        if path.is_dir():
            raise ImageError(f"image {name} is a folder, expected an image file")
    try:
        with warnings.catch_warnings():  # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refused below
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            opened = PIL.Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with opened as image:
            limit = PIL.Image.MAX_IMAGE_PIXELS
            if limit is not None and image.width * image.height > limit:
                raise ImageError(f"image {name} is too large to decode safely ({image.width}x{image.height} = "
                                 f"{image.width * image.height:,} pixels, more than Pillow's MAX_IMAGE_PIXELS "
                                 f"{limit:,}); shrink it first")
            if quick and image.format == "JPEG":
                image.draft(None, (1, 1))
            image.load()
            return PIL.ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except PIL.UnidentifiedImageError:
        raise ImageError(f"image {name} is not an image file Pillow can read") from None
    except PermissionError:
        raise ImageError(f"image {name} cannot be read (permission denied)") from None
    except PIL.Image.DecompressionBombError as err:
        raise ImageError(f"image {name} is too large to decode safely ({err}); shrink it first") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:  # truncated or corrupt data
        raise ImageError(f"image {name} cannot be decoded, the file is truncated or corrupt ({err})") from None


# ---------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------
def image_pixels(image, name: str = "image", *, convert_rgb: bool = True, input_data_format=None,
                 quantise: bool = True, spare_channel: bool = False) -> torch.Tensor:
    """One image -> H x W x C pixels by the rules of the module docstring.

    8-bit data stays uint8 (0..255); float data is quantised to uint8 when `quantise` (it must lie in [0, 1]),
    else returned as float32 in its own units. C is 3 with `convert_rgb`, else the image's own 1, 3 or 4.
    `spare_channel` (for callers that only ever read channels 0-2): an 8-bit image stored with four bytes per
    pixel may keep its fourth channel (alpha or padding), so that nothing is copied; 4-byte pixels also
    resize fastest. Raises `ImageError` (a ValueError) or TypeError, naming `name`.
    """
    if isinstance(image, PIL.Image.Image):
        pixels, stated_16bit = _as_tensor(_pil_pixels(image, name, convert_rgb), name)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        pixels, stated_16bit = _as_tensor(image, name)
        pixels = _to_channels_last(pixels, name, input_data_format)
    else:
        raise TypeError(f"{name}: expected a PIL image, a NumPy array or a torch tensor, got {type(image).__name__}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError(f"{name}: the image is empty (height x width = {pixels.shape[0]} x {pixels.shape[1]})")
    pixels = _to_8bit_or_float(pixels, name, quantise, stated_16bit)
    if pixels.stride(-1) != 1:  # planar (C x H x W) memory: torch's uint8 resize kernels assert on such views
        pixels = pixels.contiguous()
    channels = pixels.shape[-1]
    if not convert_rgb:
        return pixels
    if channels == 1:
        return pixels.expand(-1, -1, 3)
    if channels == 4 and not (spare_channel and pixels.dtype == torch.uint8):
        return pixels[:, :, :3]
    return pixels


def _pil_pixels(image: PIL.Image.Image, name: str, convert_rgb: bool):
    """A PIL image as an H x W x C NumPy array or tensor of its own dtype (uint8, bool, uint16, int32, float32)."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "RGBX"):
        view = _arrow_view(image)  # RGB and RGBX keep a 4th byte per pixel there: never a channel of the image
        if view is not None:
            return view if mode == "RGBA" or convert_rgb else view[:, :, :3]
        pixels = np.asarray(image)
        return pixels[:, :, :3] if mode == "RGBX" else pixels
    if mode in ("L", "1", "I", "F") or mode in PIL_16BIT_MODES:
        pixels = np.asarray(image)
        return pixels.astype(pixels.dtype.newbyteorder("=")) if not pixels.dtype.isnative else pixels
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0))
    # "RGBa" is un-premultiplied and "PA" keeps its alpha (dropped later unless convert_rgb=False); a palette's
    # colours are its pixels; colour spaces and other modes become RGB
    converted = "RGBA" if mode in ("RGBa", "PA") else "RGB"
    try:
        return np.asarray(image.convert(converted))
    except ValueError as err:
        raise ImageError(f"{name}: PIL mode {mode!r} cannot be converted to {converted} ({err})") from None


def _arrow_view(image) -> torch.Tensor | None:
    """The H x W x 4 uint8 pixels of an RGB(A/X) Pillow image without copying them, or None where that is
    not possible (no pyarrow, a Pillow without Arrow export, an image stored in several memory blocks).

    Pillow keeps such images as 4 bytes per pixel; its Arrow export (Pillow >= 11.2) hands out that memory
    itself, where `np.asarray` copies it byte by byte into 3 bytes per pixel (a third of the processor's
    time on 500x375 photos). The tensor keeps the Arrow array alive, which keeps the image memory alive.
    """
    pyarrow = _pyarrow()
    if pyarrow is None or not hasattr(image, "__arrow_c_array__"):
        return None
    try:
        pixels = pyarrow.array(image)
    except (ValueError, TypeError, NotImplementedError, pyarrow.ArrowException):
        return None
    kind = pixels.type
    four_bytes = pyarrow.types.is_fixed_size_list(kind) and kind.list_size == 4 and kind.value_type == pyarrow.uint8()
    if not four_bytes or pixels.offset or len(pixels) != image.width * image.height:
        return None  # not 4 x uint8 per pixel: modes other than RGB, RGBA and RGBX
    return _from_numpy(pixels.values.to_numpy(zero_copy_only=True)).view(image.height, image.width, 4)


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """`torch.from_numpy` without a copy, also of read-only memory (Pillow's): pixels are only ever read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


@functools.cache
def _pyarrow():
    try:
        import pyarrow
    except ImportError:  # installed with `datasets`; without it PIL images are read with np.asarray
        return None
    return pyarrow


def _as_tensor(image, name: str) -> tuple[torch.Tensor, bool]:
    """A NumPy array or tensor as a tensor torch computes with (uint16 widened to int32, wider unsigned
    integers to int64), and whether its dtype stated 16 bits (uint16)."""
    if isinstance(image, np.ndarray):
        if image.dtype.kind not in "buif":
            raise TypeError(f"{name}: expected integer, bool or float pixels, got a NumPy array of dtype {image.dtype}")
        if not image.dtype.isnative:
            image = image.astype(image.dtype.newbyteorder("="))
        if image.dtype == np.uint16:
            return _from_numpy(image.astype(np.int32)), True
        if image.dtype == np.uint64:
            image = np.minimum(image, np.uint64(np.iinfo(np.int64).max))  # > 65535 is refused anyway
        if image.dtype.kind == "u" and image.dtype.itemsize > 2:
            image = image.astype(np.int64)
        return _from_numpy(image), False
    tensor = image.detach()
    if tensor.dtype.is_complex:
        raise TypeError(f"{name}: expected integer, bool or float pixels, got dtype {tensor.dtype}")
    if tensor.dtype == torch.uint16:
        return tensor.to(torch.int32), True
    if tensor.dtype in (torch.uint32, torch.uint64):
        return tensor.to(torch.int64), False
    return tensor, False


def _to_channels_last(tensor: torch.Tensor, name: str, input_data_format) -> torch.Tensor:
    if tensor.ndim == 2:
        return tensor[:, :, None]
    if tensor.ndim != 3:
        raise ImageError(f"{name}: expected an image with 2 or 3 dimensions (H x W, H x W x C or C x H x W), got "
                         f"shape {tuple(tensor.shape)}")
    first, last = tensor.shape[0] in CHANNEL_COUNTS, tensor.shape[-1] in CHANNEL_COUNTS
    if input_data_format is not None:
        layout = ChannelDimension(input_data_format)
        if not (first if layout == ChannelDimension.FIRST else last):
            raise ImageError(f"{name}: expected 1, 3 or 4 channels along the {layout.value} axis, got shape "
                             f"{tuple(tensor.shape)}")
    elif first and last:
        raise ImageError(
            f"{name}: shape {tuple(tensor.shape)} is ambiguous, its channels may come first ({tensor.shape[0]}) or "
            f"last ({tensor.shape[-1]}); pass input_data_format='channels_first' or 'channels_last'")
    elif first or last:
        layout = ChannelDimension.FIRST if first else ChannelDimension.LAST
    else:
        raise ImageError(f"{name}: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, as H x W x C or C x H x W, "
                         f"got shape {tuple(tensor.shape)}")
    return tensor.permute(1, 2, 0) if layout == ChannelDimension.FIRST else tensor


def _to_8bit_or_float(pixels: torch.Tensor, name: str, quantise: bool, stated_16bit: bool) -> torch.Tensor:
    """The dtype rules: uint8 out (float32 when not `quantise` and the pixels are floats)."""
    if pixels.dtype == torch.uint8:
        return pixels
    if pixels.dtype == torch.bool:
        return pixels.to(torch.uint8) * _MAX_8BIT
    if pixels.dtype.is_floating_point:
        values = pixels.float()
        if not torch.isfinite(values).all():
            raise ImageError(f"{name}: expected finite pixel values, got NaN or infinity")
        if not quantise:
            return values
        low, high = values.min().item(), values.max().item()
        if not (0 <= low and high <= 1):
            raise ImageError(
                f"{name}: expected float pixels in [0, 1] (with do_rescale=True), got values in [{low:g}, {high:g}]; "
                "pass uint8 pixels (0..255), or do_rescale=False for images already in their final scale")
        return torch.round(values * _MAX_8BIT).to(torch.uint8)
    wide = pixels.to(torch.int64)
    low, high = wide.min().item(), wide.max().item()
    if stated_16bit:
        if 0 < high <= _MAX_8BIT:
            warnings.warn(f"{name}: 16-bit pixels whose largest value is {high} come out nearly black (divided by "
                          "257); if they are 8-bit values, pass them as uint8", stacklevel=3)
    elif low < 0 or high > _MAX_16BIT:
        raise ImageError(f"{name}: expected integer pixels in 0..255 (8-bit) or 0..65535 (16-bit), got values in "
                         f"[{low}, {high}] (dtype {pixels.dtype})")
    elif high <= _MAX_8BIT:
        return wide.to(torch.uint8)
    return torch.div(wide * 2 + 257, 514, rounding_mode="floor").to(torch.uint8)  # round(x / 257)


# ---------------------------------------------------------------------------------------------------------
# Segmentation maps
# ---------------------------------------------------------------------------------------------------------
def label_map(seg, name: str = "segmentation_map") -> torch.Tensor:
    """One segmentation map -> H x W int64 class ids, by the rules of the module docstring."""
    if isinstance(seg, PIL.Image.Image):
        if seg.mode in ("LA", "PA"):
            seg = seg.getchannel(0)
        elif seg.mode in ("RGB", "RGBA"):
            seg = np.asarray(seg)
        elif seg.mode not in ("L", "P", "I", "1", "F") + PIL_16BIT_MODES:
            raise ImageError(f"{name}: expected a map of class ids (PIL mode L, P, I or I;16), got mode {seg.mode}")
        seg = np.asarray(seg)
    if isinstance(seg, np.ndarray):
        if seg.dtype.kind not in "buif":
            raise TypeError(f"{name}: expected integer class ids, got a NumPy array of dtype {seg.dtype}")
        seg = torch.from_numpy(np.ascontiguousarray(seg.astype(np.int64) if seg.dtype.kind == "u" else seg))
    if not isinstance(seg, torch.Tensor):
        raise TypeError(f"{name}: expected a PIL image, a NumPy array or a torch tensor, got {type(seg).__name__}")
    if seg.ndim == 3 and seg.shape[0] == 1:
        seg = seg[0]
    elif seg.ndim == 3 and seg.shape[-1] == 1:
        seg = seg[..., 0]
    elif seg.ndim == 3 and seg.shape[-1] in (3, 4):
        colours = seg[..., :3]
        if not (torch.equal(colours[..., 0], colours[..., 1]) and torch.equal(colours[..., 0], colours[..., 2])):
            raise ImageError(f"{name}: expected a map of class ids, got a colour-coded map (RGB values differ); map "
                             "each colour to its class id first (a grey map saved as RGB is fine)")
        seg = colours[..., 0]
    if seg.ndim != 2:
        raise ImageError(f"{name}: expected a H x W map of class ids, got shape {tuple(seg.shape)}")
    if seg.dtype.is_floating_point:
        if not (torch.isfinite(seg).all() and torch.equal(seg, seg.round())):
            raise ImageError(f"{name}: expected whole-number class ids, got other values (dtype {seg.dtype})")
    elif seg.dtype.is_complex:
        raise TypeError(f"{name}: expected integer class ids, got dtype {seg.dtype}")
    return seg.to(torch.int64)


__all__ = ["ImageError", "open_image", "image_pixels", "label_map", "CHANNEL_COUNTS", "PIL_16BIT_MODES"]
