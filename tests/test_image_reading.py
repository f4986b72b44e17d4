"""The image-reading rules (one table, docs/reading-images.md), row by row: PIL modes, dtypes, layouts,
segmentation maps, and image files."""

from __future__ import annotations

import io
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from sklearn.datasets import load_sample_image

from mobilevit.errors import UserError
from mobilevit.image_reading import ImageError, image_pixels, label_map, open_image


@pytest.fixture(scope="module")
def flower() -> np.ndarray:
    return load_sample_image("flower.jpg")[:60, :80].copy()  # 60 x 80 RGB uint8


def rgb(image, **kwargs) -> torch.Tensor:
    return image_pixels(image, "images[0]", **kwargs)


# -- PIL modes ---------------------------------------------------------------------------------------------------
def test_rgb_modes_drop_alpha_and_padding(flower):
    reference = torch.from_numpy(flower)
    rgba = np.concatenate([flower, np.full((60, 80, 1), 7, np.uint8)], axis=2)
    for image in (PIL.Image.fromarray(flower), PIL.Image.fromarray(rgba), PIL.Image.fromarray(flower).convert("RGBX")):
        assert torch.equal(rgb(image), reference), image.mode
    # the fourth byte may stay for callers that read channels 0-2 only (the processor), never as a channel
    assert torch.equal(rgb(PIL.Image.fromarray(rgba), spare_channel=True)[..., :3], reference)
    assert rgb(PIL.Image.fromarray(rgba), convert_rgb=False).shape == (60, 80, 4)
    assert rgb(PIL.Image.fromarray(flower).convert("RGBX"), convert_rgb=False).shape == (60, 80, 3)


def test_premultiplied_alpha_is_undone_before_it_is_dropped():
    image = PIL.Image.new("RGBa", (4, 4), (10, 20, 30, 128))
    assert rgb(image)[0, 0].tolist() == list(image.convert("RGBA").getpixel((0, 0))[:3])


@pytest.mark.parametrize("mode", ["L", "1", "LA", "La"])
def test_grey_modes_repeat_to_rgb_or_stay_one_channel(flower, mode):
    grey = PIL.Image.fromarray(flower).convert("L")
    image = grey.convert(mode) if mode != "La" else grey.convert("LA").convert("La")
    expected = torch.from_numpy(np.asarray(image.getchannel(0) if mode != "1" else image.convert("L")))
    assert torch.equal(rgb(image), expected[:, :, None].expand(-1, -1, 3))
    assert torch.equal(rgb(image, convert_rgb=False), expected[:, :, None])
    if mode == "1":
        assert set(rgb(image).unique().tolist()) <= {0, 255}


def test_palette_modes_give_their_colours_without_transparency(flower):
    palette = PIL.Image.fromarray(flower).convert("P")
    palette.info["transparency"] = 0
    expected = torch.from_numpy(np.asarray(palette.convert("RGB")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning about palette transparency either
        assert torch.equal(rgb(palette), expected)
        assert torch.equal(rgb(palette, convert_rgb=False), expected)
    with_alpha = PIL.Image.fromarray(np.concatenate([flower, np.full((60, 80, 1), 9, np.uint8)], axis=2)).convert("PA")
    assert rgb(with_alpha).shape == (60, 80, 3) and rgb(with_alpha, convert_rgb=False).shape == (60, 80, 4)


def test_16bit_modes_are_scaled_to_8_bits():
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    for mode, order in (("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2")):
        image = PIL.Image.frombytes(mode, (4, 1), values.astype(order).tobytes())
        assert rgb(image)[0, :, 0].tolist() == [0, 1, 128, 255], mode


def test_mode_I_reads_by_its_values():
    """The issue's case: mode "I" holding 8-bit values came out nearly black (read as 16-bit)."""
    eight = PIL.Image.fromarray(np.array([[0, 100, 255]], np.int32))
    assert eight.mode == "I" and rgb(eight)[0, :, 0].tolist() == [0, 100, 255]
    sixteen = PIL.Image.fromarray(np.array([[0, 256, 65535]], np.int32))
    assert rgb(sixteen)[0, :, 0].tolist() == [0, 1, 255]
    for bad in (-1, 65536):
        with pytest.raises(ImageError, match=r"images\[0\]: expected integer pixels in 0\.\.255 \(8-bit\) or 0\.\.65535"):
            rgb(PIL.Image.fromarray(np.array([[0, bad]], np.int32)))


def test_mode_F_follows_the_float_rules():
    assert rgb(PIL.Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ImageError, match=r"float pixels in \[0, 1\].*\[0, 200\]"):
        rgb(PIL.Image.fromarray(np.array([[0.0, 200.0]], np.float32)))
    unscaled = rgb(PIL.Image.fromarray(np.array([[0.0, 200.0]], np.float32)), quantise=False)
    assert unscaled.dtype == torch.float32 and unscaled[0, 1, 0] == 200


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV"])
def test_colour_spaces_become_rgb_by_pillow(flower, mode):
    image = PIL.Image.fromarray(flower).convert(mode) if mode != "LAB" else PIL.Image.new("LAB", (8, 6), (50, 10, 20))
    expected = torch.from_numpy(np.asarray(image.convert("RGB")))
    assert torch.equal(rgb(image), expected) and torch.equal(rgb(image, convert_rgb=False), expected)


# -- dtypes ------------------------------------------------------------------------------------------------------
def test_integer_dtypes_without_a_stated_depth_read_like_mode_I():
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64):
        assert rgb(np.full((6, 5, 3), 100, dtype))[0, 0].tolist() == [100] * 3, dtype
    assert rgb(np.full((6, 5, 3), 65535, np.int64))[0, 0].tolist() == [255] * 3
    assert rgb(torch.full((3, 4, 5), 100, dtype=torch.int32))[0, 0].tolist() == [100] * 3
    with pytest.raises(ImageError, match=r"got values in \[-3, -3\]"):
        rgb(np.full((6, 5, 3), -3, np.int16))


def test_uint16_states_16_bits_and_warns_when_it_holds_8_bit_values():
    assert rgb(np.full((6, 5, 3), 65535, np.uint16))[0, 0].tolist() == [255] * 3
    assert rgb(np.full((6, 5, 3), 32896, ">u2"))[0, 0].tolist() == [128] * 3  # big-endian too
    assert rgb(torch.full((6, 5, 3), 257, dtype=torch.uint16))[0, 0].tolist() == [1] * 3  # no "min_all" error
    with pytest.warns(UserWarning, match=r"images\[0\]: 16-bit pixels whose largest value is 200 come out nearly black"):
        assert rgb(np.full((6, 5, 3), 200, np.uint16))[0, 0].tolist() == [1] * 3


def test_bool_reads_as_black_and_white():
    image = np.zeros((4, 5), bool)
    image[0, 0] = True
    assert rgb(image)[..., 0].unique().tolist() == [0, 255] and rgb(image)[0, 0].tolist() == [255] * 3


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, torch.float16, torch.bfloat16, torch.float64])
def test_floats_are_quantised_from_unit_range(dtype):
    values = [0.0, 0.25, 1.0]
    image = torch.tensor(values, dtype=dtype) if isinstance(dtype, torch.dtype) else np.array(values, dtype)
    assert rgb(image[None, :])[0, :, 0].tolist() == [0, 64, 255]
    assert rgb(image[None, :], quantise=False).dtype == torch.float32


def test_non_finite_floats_are_refused_with_and_without_rescale():
    for quantise in (True, False):
        with pytest.raises(ImageError, match=r"images\[0\]: expected finite pixel values, got NaN or infinity"):
            rgb(np.array([[0.5, np.inf]]), quantise=quantise)


def test_other_dtypes_are_refused():
    for image in (np.zeros((4, 5), np.complex64), np.zeros((4, 5), object), np.zeros((4, 5), "U1"),
                  torch.zeros(4, 5, dtype=torch.complex64)):
        with pytest.raises(TypeError, match=r"images\[0\]: expected integer, bool or float pixels"):
            rgb(image)
    with pytest.raises(TypeError, match=r"images\[0\]: expected a PIL image, a NumPy array or a torch tensor, got str"):
        rgb("photo.jpg")


# -- layouts -----------------------------------------------------------------------------------------------------
def test_layouts_find_the_channel_axis(flower):
    hwc = torch.from_numpy(flower)
    assert torch.equal(rgb(flower), hwc)
    planar = torch.from_numpy(np.ascontiguousarray(flower.transpose(2, 0, 1)))  # C x H x W memory
    assert torch.equal(rgb(planar), hwc) and rgb(planar).is_contiguous()  # torch's uint8 resize asserts otherwise
    grey = flower[:, :, 0]
    for image in (grey, grey[None], grey[:, :, None]):
        assert torch.equal(rgb(image), torch.from_numpy(grey)[:, :, None].expand(-1, -1, 3))
    assert rgb(np.zeros((3, 3, 100), np.uint8)).shape == (3, 100, 3)  # 3 x 3 x N, N not a channel count: C x H x W


@pytest.mark.parametrize("shape", [(3, 3, 3), (3, 3, 4), (4, 50, 4), (1, 50, 3), (3, 7, 1)])
def test_shapes_that_fit_both_layouts_ask_which(shape):
    with pytest.raises(ImageError, match=rf"images\[0\]: shape \({shape[0]}, {shape[1]}, {shape[2]}\) is ambiguous"):
        rgb(np.zeros(shape, np.uint8))
    assert rgb(np.zeros(shape, np.uint8), input_data_format="channels_last").shape[:2] == shape[:2]
    assert rgb(np.zeros(shape, np.uint8), input_data_format="channels_first").shape[:2] == shape[1:]


@pytest.mark.parametrize("shape, match", [
    ((10, 12, 2), r"expected 1 \(grey\), 3 \(RGB\) or 4 \(RGBA\) channels"),
    ((5, 10, 12), r"expected 1 \(grey\), 3 \(RGB\) or 4 \(RGBA\) channels"),
    ((12,), r"expected an image with 2 or 3 dimensions"),
    ((2, 3, 10, 12), r"expected an image with 2 or 3 dimensions"),
    ((0, 12, 3), r"the image is empty"),
])
def test_impossible_layouts_are_refused(shape, match):
    with pytest.raises(ImageError, match=match):
        rgb(np.zeros(shape, np.uint8))


def test_image_errors_are_value_errors_and_user_errors():
    assert issubclass(ImageError, ValueError) and issubclass(ImageError, UserError)


# -- segmentation maps -------------------------------------------------------------------------------------------
def test_label_maps_keep_class_ids_in_every_form():
    ids = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    expected = torch.from_numpy(ids.astype(np.int64))
    forms = [ids, ids[None], ids[:, :, None], torch.from_numpy(ids), PIL.Image.fromarray(ids),
             PIL.Image.fromarray(ids).convert("P"), PIL.Image.fromarray(ids.astype(np.int32)),
             PIL.Image.fromarray(ids.astype(np.uint16)), ids.astype(np.float32), PIL.Image.fromarray(ids).convert("LA"),
             np.repeat(ids[:, :, None], 3, axis=2), PIL.Image.fromarray(np.repeat(ids[:, :, None], 3, axis=2))]
    for form in forms:
        assert torch.equal(label_map(form, "segmentation_maps[0]"), expected), type(form)
    assert label_map(np.full((2, 2), 300, np.uint16))[0, 0] == 300  # never rescaled
    assert label_map(np.ones((2, 2), bool))[0, 0] == 1


def test_label_maps_that_are_not_class_ids_are_refused():
    coloured = np.zeros((6, 5, 3), np.uint8)
    coloured[1, 1] = (128, 0, 0)
    with pytest.raises(ImageError, match=r"mask: expected a map of class ids, got a colour-coded map"):
        label_map(PIL.Image.fromarray(coloured), "mask")
    with pytest.raises(ImageError, match=r"mask: expected whole-number class ids"):
        label_map(np.full((4, 5), 0.5), "mask")
    with pytest.raises(ImageError, match=r"mask: expected a map of class ids \(PIL mode L, P, I or I;16\), got mode CMYK"):
        label_map(PIL.Image.new("CMYK", (4, 5)), "mask")
    with pytest.raises(ImageError, match=r"mask: expected a H x W map of class ids, got shape \(2, 4, 5\)"):
        label_map(np.zeros((2, 4, 5), np.uint8), "mask")


# -- files ---------------------------------------------------------------------------------------------------------
def test_files_are_decoded_whole_and_named_in_errors(tmp_path, flower):
    photo = tmp_path / "photo.jpg"
    PIL.Image.fromarray(flower).save(photo, quality=95)
    (tmp_path / "truncated.jpg").write_bytes(photo.read_bytes()[:-300])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    assert open_image(photo).size == (80, 60)
    for name, message in [("truncated.jpg", "cannot be decoded, the file is truncated or corrupt"),
                          ("notes.txt", "is not an image file Pillow can read"), ("missing.png", "does not exist"),
                          ("folder.png", "is a folder, expected an image file")]:
        for quick in (False, True):
            with pytest.raises(ImageError, match=message) as caught:
                open_image(tmp_path / name, quick=quick)
            assert str(tmp_path / name) in str(caught.value)
    with pytest.raises(ImageError, match="image 'data\\[train\\]\\[3\\]' cannot be decoded"):
        open_image(photo.read_bytes()[:-300], "'data[train][3]'")


def test_exif_orientation_is_applied(tmp_path, flower):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise when shown
    PIL.Image.fromarray(flower).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert open_image(tmp_path / "rotated.jpg").size == (60, 80)


def test_decompression_bombs_are_refused_by_name(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    PIL.Image.new("L", (100, 100)).save(buffer, format="PNG")
    (tmp_path / "huge.png").write_bytes(buffer.getvalue())
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels: over twice the limit
    with pytest.raises(ImageError, match=r"huge\.png' is too large to decode safely.*decompression bomb"):
        open_image(tmp_path / "huge.png")


# -- Pillow's memory read in place (the processor's fast path) ----------------------------------------------------
def test_pil_pixels_are_read_in_place_and_stay_valid():
    import gc

    from mobilevit.image_reading import _arrow_view, _pyarrow

    if _pyarrow() is None:
        pytest.skip("pyarrow is not installed (it comes with datasets): PIL images are copied with np.asarray")
    flower = load_sample_image("flower.jpg")
    image = PIL.Image.fromarray(flower)
    view = _arrow_view(image)
    assert view.shape == (*flower.shape[:2], 4) and torch.equal(view[..., :3], torch.from_numpy(flower))
    del image
    gc.collect()
    PIL.Image.fromarray(np.zeros_like(flower))  # new image memory, which might reuse the freed block
    assert torch.equal(view[..., :3], torch.from_numpy(flower))
    rgba = np.concatenate([flower, np.full(flower.shape[:2] + (1,), 9, np.uint8)], axis=2)
    assert torch.equal(_arrow_view(PIL.Image.fromarray(rgba)), torch.from_numpy(rgba))
    assert _arrow_view(PIL.Image.new("RGB", (4000, 3000))) is None  # 48 MB: several blocks in Pillow
    assert _arrow_view(PIL.Image.fromarray(flower).convert("L")) is None  # other modes are decoded as before


def test_images_between_the_pixel_limit_and_twice_it_are_refused_too(tmp_path, monkeypatch):
    """README says images above MAX_IMAGE_PIXELS are refused; Pillow itself only warns up to twice that."""
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    PIL.Image.new("RGB", (40, 30)).save(tmp_path / "over.png")  # 1,200 pixels: over the limit, under twice it
    PIL.Image.new("RGB", (25, 40)).save(tmp_path / "at.png")  # 1,000 pixels: at the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning on the way
        with pytest.raises(ImageError, match=r"too large to decode safely \(40x30 = 1,200 pixels, more than Pillow's "
                                             r"MAX_IMAGE_PIXELS 1,000\)"):
            open_image(tmp_path / "over.png")
        assert open_image(tmp_path / "at.png").size == (25, 40)
