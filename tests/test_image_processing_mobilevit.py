"""MobileViTImageProcessor: ml-cvnets exactness, every input form, segmentation geometry, configs, errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from sklearn.datasets import load_sample_image
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.mobilevit.image_processing_pil_mobilevit import MobileViTImageProcessorPil

from mobilevit import MobileViTImageProcessor
from mobilevit.image_processing_mobilevit import reduce_labels
from mobilevit.testing_utils import shared_fixtures_dir

ONE_LEVEL = 1 / 255
# The Hub checkpoints' settings, for stock transformers' processor (its class defaults differ: 224, bicubic).
HUB_SETTINGS = dict(size={"shortest_edge": 288}, crop_size={"height": 256, "width": 256}, resample=2)


@pytest.fixture(scope="module")
def flower() -> np.ndarray:
    return load_sample_image("flower.jpg")  # 427 x 640 RGB uint8


@pytest.fixture(scope="module")
def china() -> np.ndarray:
    return load_sample_image("china.jpg")


def pixels(processor, images, **kwargs) -> torch.Tensor:
    return processor(images, return_tensors="pt", **kwargs)["pixel_values"]


# ------------------------------------------------------------------------------------------------
# Exactness against ml-cvnets (fixture), OpenCV and stock transformers


@pytest.fixture(scope="module")
def photo_fixture():
    fixtures = shared_fixtures_dir()
    if fixtures is None:
        pytest.skip("../shared/fixtures/mlcvnets not found: the ml-cvnets preprocessing fixture is unavailable")
    from safetensors.torch import load_file

    return load_file(str(fixtures / "photo.expected.safetensors"))


def test_default_is_within_one_level_of_mlcvnets(photo_fixture):
    image = photo_fixture["image_rgb_uint8"].numpy()
    out = pixels(MobileViTImageProcessor(), PIL.Image.fromarray(image))
    assert out.shape == photo_fixture["pixel_values"].shape == (1, 3, 256, 256)
    assert out.dtype == torch.float32
    difference = (out - photo_fixture["pixel_values"]).abs()
    assert difference.max().item() <= ONE_LEVEL + 1e-6
    # and it is the BGR crop, not merely close on average: a channel flip would move it by far more
    assert (pixels(MobileViTImageProcessor(do_flip_channel_order=False), image) - photo_fixture["pixel_values"]).abs().max() > 0.1


def test_bit_exact_option_reproduces_mlcvnets_exactly(photo_fixture):
    image = photo_fixture["image_rgb_uint8"].numpy()
    out = pixels(MobileViTImageProcessor(resize_bit_exact=True), [image, image])
    assert torch.equal(out[0], photo_fixture["pixel_values"][0])
    assert torch.equal(out[1], photo_fixture["pixel_values"][0])


@pytest.mark.parametrize(
    "in_hw, shortest_edge",
    [((427, 640), 288), ((375, 500), 288), ((90, 61), 288), ((120, 200), 37), ((576, 768), 288), ((41, 300), 100),
     ((300, 41), 100), ((288, 301), 288), ((33, 33), 64)],
)
def test_resize_matches_opencv_inter_linear(flower, in_hw, shortest_edge):
    """Downscaling, upscaling, exact 2x, unchanged side, both orientations: bit-exact vs cv2, default within 1."""
    cv2 = pytest.importorskip("cv2")
    source = np.ascontiguousarray(
        PIL.Image.fromarray(flower).resize(in_hw[::-1], PIL.Image.BILINEAR) if max(in_hw) > 427 else flower[: in_hw[0], : in_hw[1]]
    )
    source = np.asarray(source)
    h, w = in_hw
    out_h, out_w = (shortest_edge, int(shortest_edge * w / h)) if h <= w else (int(shortest_edge * h / w), shortest_edge)
    expected = torch.from_numpy(cv2.resize(source, (out_w, out_h), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1).float()
    options = dict(size={"shortest_edge": shortest_edge}, do_center_crop=False, do_rescale=False, do_flip_channel_order=False)
    exact = pixels(MobileViTImageProcessor(resize_bit_exact=True, **options), source)[0]
    default = pixels(MobileViTImageProcessor(**options), source)[0]
    assert exact.shape == expected.shape == default.shape
    assert torch.equal(exact, expected)
    assert (default - expected).abs().max() <= 1


def test_bit_exact_crop_window_matches_full_resize_then_crop(china):
    """The bit-exact path computes only the cropped window; it must equal resizing everything then cropping."""
    full = pixels(MobileViTImageProcessor(resize_bit_exact=True, do_center_crop=False), china)[0]
    crop = pixels(MobileViTImageProcessor(resize_bit_exact=True, crop_size={"height": 200, "width": 150}), china)[0]
    top, left = (full.shape[1] - 200) // 2, (full.shape[2] - 150) // 2
    assert torch.equal(crop, full[:, top : top + 200, left : left + 150])


@pytest.mark.parametrize("resample, tolerance_levels", [(2, 1), (3, 2)])
def test_antialias_option_matches_stock_transformers_pil(flower, china, resample, tolerance_levels):
    """torch's antialiased uint8 resize vs Pillow's: at most 1 level (bilinear) / 2 levels (bicubic) apart, because
    both use 8-bit fixed-point filters but round their intermediate sums slightly differently."""
    settings = dict(HUB_SETTINGS, resample=resample)
    stock = MobileViTImageProcessorPil(**settings)(
        [PIL.Image.fromarray(flower), PIL.Image.fromarray(china)], return_tensors="pt"
    )["pixel_values"]
    ours = pixels(MobileViTImageProcessor(resize_antialias=True, **settings), [flower, china])
    assert ours.shape == stock.shape
    assert (ours - stock).abs().max().item() <= tolerance_levels * ONE_LEVEL + 1e-6
    # without the option, ours follows ml-cvnets and visibly differs from stock transformers
    assert (pixels(MobileViTImageProcessor(**settings), [flower, china]) - stock).abs().max() > 0.05


@pytest.mark.parametrize("resample, antialias", [(2, False), (2, True), (3, False), (3, True)])
def test_resize_equals_torch_interpolate_then_crop(resample, antialias, monkeypatch):
    """The crop-aware resize (the width pass skips input rows the crop never reads, intermediates live in reused
    scratch memory) gives F.interpolate's pixels exactly. The scratch memory is filled with noise before every
    use, so a row the resize wrongly skipped would show."""
    from mobilevit import image_processing_mobilevit as module

    scratch = module._scratch
    monkeypatch.setattr(module, "_scratch", lambda *args: scratch(*args).random_(0, 256))
    mode = {2: "bilinear", 3: "bicubic"}[resample]
    generator = torch.Generator().manual_seed(0)
    cases = [((375, 500), 288, 256), ((500, 375), 288, 256), ((301, 457), 288, 256), ((97, 61), 64, 48),
             ((288, 300), 288, 256), ((30, 40), 288, 256), ((1000, 333), 100, 90), ((333, 1000), 100, 100)]
    for (height, width), shortest_edge, crop in cases:
        image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        short, long = sorted((height, width))
        long_out = int(shortest_edge * long / short)
        out_h, out_w = (shortest_edge, long_out) if height <= width else (long_out, shortest_edge)
        resized = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(out_h, out_w), mode=mode,
                                                  antialias=antialias, align_corners=False)[0]
        top, left = (out_h - crop) // 2, (out_w - crop) // 2
        expected = resized[:, top : top + crop, left : left + crop].flip(0) / 255
        processor = MobileViTImageProcessor(size={"shortest_edge": shortest_edge}, resample=resample,
                                            crop_size={"height": crop, "width": crop}, resize_antialias=antialias)
        for form in (image, PIL.Image.fromarray(image.numpy())):  # 3 channels, and Pillow's 4-byte pixels
            assert torch.equal(pixels(processor, form)[0], expected), (height, width, type(form))


def test_without_arrow_pil_images_give_the_same_pixels(flower, monkeypatch):
    from mobilevit import image_reading as module

    images = [PIL.Image.fromarray(flower), PIL.Image.fromarray(flower).convert("RGBA")]
    reference = pixels(MobileViTImageProcessor(), images)
    monkeypatch.setattr(module, "_arrow_view", lambda image: None)
    assert torch.equal(pixels(MobileViTImageProcessor(), images), reference)


# ------------------------------------------------------------------------------------------------
# Each family's preprocessing: MobileViT v1 as ml-cvnets v0.1 (OpenCV, BGR), MobileViTv2 as v0.2 (Pillow, RGB)


@pytest.fixture(scope="module")
def real_photos() -> dict[str, np.ndarray]:
    """Landscape, portrait-free square and small photos shipped with scikit-learn and scikit-image."""
    from skimage import data

    photos = {"flower": load_sample_image("flower.jpg"), "china": load_sample_image("china.jpg")}
    photos.update({name: getattr(data, name)() for name in ("chelsea", "astronaut", "coffee")})
    photos["portrait"] = np.ascontiguousarray(photos["china"][:, 100:400])  # 427 x 300: taller than wide
    return photos


def pillow_resize(pil: PIL.Image.Image, width: int, height: int, resample=PIL.Image.BICUBIC) -> PIL.Image.Image:
    """Pillow's `Image.resize` as ml-cvnets v0.2 ran it (Pillow 9, 2022; the same through Pillow 12): the width
    pass first into 8 bits, then the height pass, each one Pillow's own one-axis resize. Pillow 13.0 runs the
    height pass first for some sizes (a portrait photo stretched to a square), which moves up to 7/255."""
    if width != pil.width:
        pil = pil.resize((width, pil.height), resample)
    return pil.resize((width, height), resample) if height != pil.height else pil


def pillow_evaluation_pixels(image: np.ndarray, size: dict, crop: int | None) -> torch.Tensor:
    """ml-cvnets v0.2's evaluation transforms, with Pillow itself: RGB, `Image.resize(BICUBIC)` to the shortest
    edge (long side truncated) or to height x width, a centre crop with floor offsets, pil_to_tensor / 255."""
    pil = PIL.Image.fromarray(image).convert("RGB")
    if "shortest_edge" in size:
        short, (w, h) = size["shortest_edge"], pil.size
        out_w, out_h = (short, int(short * h / w)) if w < h else (int(short * w / h), short)
    else:
        out_w, out_h = size["width"], size["height"]
    pil = pillow_resize(pil, out_w, out_h)
    if crop is not None:
        top, left = (out_h - crop) // 2, (out_w - crop) // 2
        pil = pil.crop((left, top, left + crop, top + crop))
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float().div(255.0)


def family_processor(variant: str, task: str, **config):
    from mobilevit import auto

    config_task = task if task in ("image-classification", "semantic-segmentation") else "image-classification"
    return auto.image_processor_for(auto.new_config(variant, config_task, **config), task)


def test_a_v2_classifiers_processor_reproduces_mlcvnets_v02_evaluation_pixels(real_photos):
    """MobileViTv2's ImageNet evaluation (ml-cvnets v0.2): RGB, shortest edge 288 with Pillow's bicubic, centre
    crop 256, / 255. The default (torch's antialiased bicubic) is within 1/255, `resize_bit_exact` bit for bit."""
    processor = family_processor("mobilevitv2-1.0", "image-classification")
    assert processor.do_flip_channel_order is False and processor.resample == 3 and processor.resize_antialias is True
    for name, image in real_photos.items():
        expected = pillow_evaluation_pixels(image, {"shortest_edge": 288}, 256)
        out = pixels(processor, PIL.Image.fromarray(image))[0]
        assert out.shape == expected.shape == (3, 256, 256)
        difference = (out - expected).abs()
        assert difference.max().item() <= ONE_LEVEL + 1e-6, name
        assert (difference > 1e-6).float().mean().item() < 0.01, name  # a few values in a thousand
        assert torch.equal(pixels(processor, image, resize_bit_exact=True)[0], expected), name
        assert (out - expected.flip(0)).abs().max() > 0.1  # BGR would be far off: the order is really RGB


def test_the_384_fine_tuned_v2_classifiers_resize_to_384_and_crop_384(real_photos):
    """The fine-tuning recipe at 384 (config/classification/finetune_higher_res_in1k/mobilevit_v2.yaml): shortest
    edge 384, centre crop 384; not 384 + 32."""
    processor = family_processor("mobilevitv2-0.5", "image-classification", image_size=384)
    assert dict(processor.size) == {"shortest_edge": 384} and dict(processor.crop_size) == {"height": 384, "width": 384}
    image = real_photos["flower"]
    expected = pillow_evaluation_pixels(image, {"shortest_edge": 384}, 384)
    assert torch.equal(pixels(processor, image, resize_bit_exact=True)[0], expected)


@pytest.mark.parametrize("variant, task, size, crop, bgr, resample, antialias", [
    ("xx-small", "image-classification", {"shortest_edge": 288}, 256, True, 2, False),
    ("xx-small", "image-feature-extraction", {"shortest_edge": 288}, 256, True, 2, False),
    ("xx-small", "semantic-segmentation", {"shortest_edge": 544}, 512, True, 2, False),
    ("xx-small", "object-detection", {"height": 320, "width": 320}, None, True, 2, False),
    ("mobilevitv2-0.5", "image-classification", {"shortest_edge": 288}, 256, False, 3, True),
    ("mobilevitv2-0.5", "semantic-segmentation", {"height": 512, "width": 512}, None, False, 3, True),
    ("mobilevitv2-0.5", "object-detection", {"height": 320, "width": 320}, None, False, 3, True),
])
def test_each_family_and_task_gets_its_release_preprocessing(variant, task, size, crop, bgr, resample, antialias):
    image_size = {"semantic-segmentation": 512, "object-detection": 320}.get(task, 256)
    processor = family_processor(variant, task, image_size=image_size)
    assert dict(processor.size) == size
    assert processor.do_center_crop is (crop is not None)
    if crop is not None:
        assert dict(processor.crop_size) == {"height": crop, "width": crop}
    assert processor.do_flip_channel_order is bgr and processor.resample == resample
    assert processor.resize_antialias is antialias and processor.setting("do_normalize") is False
    shape = pixels(processor, np.zeros((300, 451, 3), np.uint8)).shape
    assert shape == (1, 3, image_size, image_size)


def test_the_task_comes_from_the_configs_architectures():
    from mobilevit import auto

    config = auto.new_config("mobilevitv2-0.5", "semantic-segmentation")
    assert dict(auto.image_processor_for(config).size) == {"shortest_edge": 544}  # a new config names no head
    config.architectures = ["MobileViTV2ForSemanticSegmentation"]
    assert dict(auto.image_processor_for(config).size) == {"height": 512, "width": 512}
    assert dict(auto.image_processor_for(config, "image-classification").size) == {"shortest_edge": 544}
    with pytest.raises(ValueError, match="task: expected one of"):
        auto.image_processor_for(config, "depth-estimation")


@pytest.fixture(scope="module")
def ssd_inputs():
    fixtures = shared_fixtures_dir("mlcvnets_ssd")
    if fixtures is None:
        pytest.skip("../shared/fixtures/mlcvnets_ssd not found: the SSDLite preprocessing fixture is unavailable")
    from safetensors.torch import load_file

    return load_file(str(fixtures / "inputs.safetensors"))


@pytest.mark.parametrize("variant, key", [("xx-small", "photo_pixel_values_v1"),
                                          ("mobilevitv2-0.5", "photo_pixel_values_v2")])
def test_the_detection_processor_reproduces_mlcvnets_ssd_pixels(ssd_inputs, variant, key):
    """ml-cvnets' COCO evaluation of SSDLite (the fixture photo through its own transforms): v0.1 BGR with
    cv2.resize(INTER_LINEAR) to 320x320, v0.2 RGB with Pillow's bicubic to 320x320; no crop, aspect not kept."""
    processor = family_processor(variant, "object-detection", image_size=320)
    photo, expected = ssd_inputs["image_rgb_uint8"].numpy(), ssd_inputs[key]
    out = pixels(processor, PIL.Image.fromarray(photo))
    assert out.shape == expected.shape == (1, 3, 320, 320)
    assert (out - expected).abs().max().item() <= ONE_LEVEL + 1e-6
    assert torch.equal(pixels(processor, photo, resize_bit_exact=True), expected)
    other = "photo_pixel_values_v2" if key.endswith("v1") else "photo_pixel_values_v1"
    assert (out - ssd_inputs[other]).abs().max() > 0.1  # the other release's pixels are far off


@pytest.mark.parametrize("resample", [2, 3])
def test_bit_exact_antialiased_resize_is_pillows_shrinking_and_enlarging(real_photos, resample):
    """Pillow's fixed-point filters emulated: bit for bit on every photo, shrinking, enlarging, one side only,
    odd sizes, mixed directions and crop windows. torch's native antialiased kernel (it rounds its weights to
    fewer bits) stays within 1/255 when shrinking with bicubic, within 2/255 otherwise."""
    filter_ = {2: PIL.Image.BILINEAR, 3: PIL.Image.BICUBIC}[resample]
    shrinking, enlarging = [], []
    for name in ("flower", "coffee", "portrait"):
        image = real_photos[name]
        h, w = image.shape[:2]
        for out_h, out_w in [(h // 2 + 1, w // 3), (37, 41), (2 * h + 3, 2 * w - 5), (h, w // 2), (h * 3 // 2, w),
                             (h // 3, 2 * w), (320, 320), (512, 512)]:
            resized = pillow_resize(PIL.Image.fromarray(image), out_w, out_h, filter_)
            expected = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float()
            options = dict(size={"height": out_h, "width": out_w}, do_center_crop=False, do_rescale=False,
                           do_flip_channel_order=False, resample=resample, resize_antialias=True)
            exact = pixels(MobileViTImageProcessor(resize_bit_exact=True, **options), image)[0]
            assert torch.equal(exact, expected), (name, out_h, out_w)
            crop = {"height": max(1, out_h // 2), "width": max(1, out_w // 3)}
            window = pixels(MobileViTImageProcessor(resize_bit_exact=True, **dict(options, do_center_crop=True,
                                                                                   crop_size=crop)), image)[0]
            top, left = (out_h - crop["height"]) // 2, (out_w - crop["width"]) // 2
            assert torch.equal(window, expected[:, top : top + crop["height"], left : left + crop["width"]])
            native = (pixels(MobileViTImageProcessor(**options), image)[0] - expected).abs().max().item()
            (enlarging if out_h > h or out_w > w else shrinking).append(native)
    assert max(shrinking) <= (1 if resample == 3 else 2) and max(enlarging) <= 2


def test_torch_antialiased_bicubic_has_pillows_kernel():
    """Pillow's bicubic uses a = -0.5; torch's antialiased bicubic the same, its plain bicubic a = -0.75. An
    impulse enlarged 4x traces each kernel."""
    def cubic(x, a):
        x = x.abs()
        return torch.where(x < 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                           torch.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, torch.zeros_like(x)))

    impulse = torch.zeros(1, 1, 1, 17, dtype=torch.float64)
    impulse[..., 8] = 1
    offsets = (torch.arange(68, dtype=torch.float64) + 0.5) / 4 - 0.5 - 8
    for antialias, a in ((True, -0.5), (False, -0.75)):
        traced = torch.nn.functional.interpolate(impulse, size=(1, 68), mode="bicubic", antialias=antialias)[0, 0, 0]
        torch.testing.assert_close(traced, cubic(offsets, a), rtol=0, atol=1e-12)


def test_bit_exact_resizes_only_what_it_can_emulate():
    with pytest.raises(ValueError, match=r"resize_bit_exact: an exact emulation exists for .*got resample=3 \(bicubic\) "
                                         r"with resize_antialias=False"):
        MobileViTImageProcessor(resample=3, resize_bit_exact=True)
    with pytest.raises(ValueError, match=r"resize_bit_exact:.*got resample=0 \(nearest-exact\)"):
        MobileViTImageProcessor()(np.zeros((20, 30, 3), np.uint8), resample=0, resize_bit_exact=True)


# ------------------------------------------------------------------------------------------------
# Every input form gives the RGB PIL result


def test_pil_modes_match_the_rgb_path(flower):
    processor = MobileViTImageProcessor()
    rgb = PIL.Image.fromarray(flower)
    reference = pixels(processor, rgb)
    grey = rgb.convert("L")
    grey_reference = pixels(processor, grey.convert("RGB"))
    assert torch.equal(pixels(processor, rgb.convert("RGBA")), reference)
    assert torch.equal(pixels(processor, grey), grey_reference)
    assert torch.equal(pixels(processor, grey.convert("LA")), grey_reference)
    sixteen_bit = PIL.Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    assert sixteen_bit.mode == "I;16"
    assert torch.equal(pixels(processor, sixteen_bit), grey_reference)
    palette = rgb.convert("P")
    assert torch.equal(pixels(processor, palette), pixels(processor, palette.convert("RGB")))
    # grey really is grey in the output: all three channels equal
    out = pixels(processor, grey)[0]
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_numpy_and_tensor_inputs_match_pil(flower):
    processor = MobileViTImageProcessor()
    reference = pixels(processor, PIL.Image.fromarray(flower))
    rgba = np.concatenate([flower, np.full(flower.shape[:2] + (1,), 7, np.uint8)], axis=2)
    chw = torch.from_numpy(flower).permute(2, 0, 1)
    for image in [flower, flower.astype(np.float32) / 255, flower.astype(np.float64) / 255, rgba,
                  chw, chw.contiguous(), torch.from_numpy(flower), chw.float() / 255]:
        assert torch.equal(pixels(processor, image), reference), type(image)
    grey = np.asarray(PIL.Image.fromarray(flower).convert("L"))
    grey_reference = pixels(processor, PIL.Image.fromarray(grey).convert("RGB"))
    for image in [grey, grey[:, :, None], grey[None], torch.from_numpy(grey)]:
        assert torch.equal(pixels(processor, image), grey_reference)


def test_input_data_format_settles_an_ambiguous_layout():
    processor = MobileViTImageProcessor(do_resize=False, do_center_crop=False, do_rescale=False)
    # 3 x 4 x 3 could be either layout: an error asks which (transformers silently takes channels first)
    image = torch.arange(36, dtype=torch.uint8).reshape(3, 4, 3)
    with pytest.raises(ValueError, match=r"images\[0\]: shape \(3, 4, 3\) is ambiguous.*input_data_format"):
        pixels(processor, image)
    forced = pixels(processor, image, do_flip_channel_order=False, input_data_format="channels_last")
    assert torch.equal(forced[0], image.permute(2, 0, 1).float())
    first = pixels(processor, image, do_flip_channel_order=False, input_data_format="channels_first")
    assert torch.equal(first[0], image.float())


@pytest.mark.parametrize("crop", [256, 400])
def test_planar_uint8_tensors_resize_like_pil_images(flower, crop):
    """A contiguous C x H x W uint8 tensor (upscaled, and with a crop larger than the resized image) crashed inside
    torch's resize kernel (INTERNAL ASSERT FAILED); it now gives the PIL image's pixels."""
    small = np.ascontiguousarray(flower[:40, :50])
    planar = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))
    for half in (False, True):
        image = planar.half() / 255 if half else planar
        processor = MobileViTImageProcessor(crop_size={"height": crop, "width": crop})
        assert torch.equal(pixels(processor, image), pixels(processor, PIL.Image.fromarray(small)))


def test_portrait_landscape_and_mixed_sizes_in_one_batch(flower, china):
    processor = MobileViTImageProcessor()
    portrait = np.ascontiguousarray(flower.transpose(1, 0, 2))
    small = flower[100:350, 200:500]
    images = [flower, portrait, small, china]
    batch = pixels(processor, images)
    assert batch.shape == (4, 3, 256, 256)
    for image, row in zip(images, batch):
        assert torch.equal(pixels(processor, image)[0], row)
    # the portrait crop is the landscape crop transposed (up to the resize's rounding, which is not symmetric)
    assert (batch[1] - batch[0].transpose(1, 2)).abs().max() <= ONE_LEVEL + 1e-6
    # a list without return_tensors: one tensor per image
    listed = processor(images)["pixel_values"]
    assert isinstance(listed, list) and all(torch.equal(a, b) for a, b in zip(listed, batch))


def test_switches_and_output_layout(flower):
    out = pixels(MobileViTImageProcessor(do_resize=False, do_rescale=False, do_flip_channel_order=False), flower)[0]
    top, left = (427 - 256) // 2, (640 - 256) // 2
    assert torch.equal(out, torch.from_numpy(flower[top : top + 256, left : left + 256]).permute(2, 0, 1).float())
    assert pixels(MobileViTImageProcessor(do_center_crop=False), flower).shape == (1, 3, 288, 431)
    assert pixels(MobileViTImageProcessor(size={"height": 100, "width": 120}, do_center_crop=False), flower).shape == (1, 3, 100, 120)
    bgr = pixels(MobileViTImageProcessor(), flower)
    rgb = pixels(MobileViTImageProcessor(do_flip_channel_order=False), flower)
    assert torch.equal(bgr, rgb.flip(1))
    last = pixels(MobileViTImageProcessor(), flower, data_format="channels_last")
    assert torch.equal(last, bgr.permute(0, 2, 3, 1))
    assert pixels(MobileViTImageProcessor(), flower, device="cpu").device.type == "cpu"


def test_float_images_without_rescale_keep_their_units(flower):
    processor = MobileViTImageProcessor(do_rescale=False, do_center_crop=False, do_resize=False, do_flip_channel_order=False)
    signed = torch.linspace(-1, 1, 3 * 20 * 30).reshape(3, 20, 30)
    assert torch.equal(pixels(processor, signed)[0], signed)
    as_uint8 = pixels(MobileViTImageProcessor(do_rescale=False), flower)
    assert as_uint8.max() > 200 and torch.equal(as_uint8, as_uint8.round())


def test_crop_larger_than_the_image_pads_with_zeros_and_ignored_labels():
    image = np.full((20, 30, 3), 200, np.uint8)
    seg = np.ones((20, 30), np.uint8)
    processor = MobileViTImageProcessor(do_resize=False, crop_size={"height": 26, "width": 30})
    out = processor(image, segmentation_maps=seg, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 26, 30) and out["labels"].shape == (1, 26, 30)
    # floor offset (20 - 26) // 2 = -3: three padded rows on top, three below
    assert out["pixel_values"][0, :, :3].eq(0).all() and out["pixel_values"][0, :, -3:].eq(0).all()
    assert out["pixel_values"][0, :, 3:23].gt(0.7).all()
    assert out["labels"][0, :3].eq(255).all() and out["labels"][0, 3:23].eq(1).all()


# ------------------------------------------------------------------------------------------------
# Segmentation maps


PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def synthetic_scene(height: int, width: int) -> np.ndarray:
    """A label map with regions whose positions are known: background, two rectangles, a disc, a stripe."""
    y, x = np.mgrid[:height, :width]
    labels = np.zeros((height, width), np.uint8)
    labels[height // 5 : height // 2, width // 6 : width // 2] = 1
    labels[height // 2 :, width // 2 : (4 * width) // 5] = 2
    labels[(y - height * 0.3) ** 2 + (x - width * 0.75) ** 2 < (height * 0.15) ** 2] = 3
    labels[:, (9 * width) // 10 :] = 4
    return labels


@pytest.mark.parametrize("height, width", [(333, 517), (517, 333), (200, 260)])
def test_segmentation_maps_stay_aligned_with_their_images(height, width):
    labels = synthetic_scene(height, width)
    image = PALETTE[labels]  # each region painted in its own colour
    out = MobileViTImageProcessor(do_flip_channel_order=False)(image, segmentation_maps=labels, return_tensors="pt")
    assert out["labels"].dtype == torch.int64 and out["labels"].shape == (1, 256, 256)
    # read the label back from the resized pixel colour (nearest palette colour)
    rgb = out["pixel_values"][0].permute(1, 2, 0) * 255
    distances = (rgb[:, :, None, :] - torch.from_numpy(PALETTE).float()).abs().sum(-1)
    from_colour = distances.argmin(-1)
    agree = from_colour == out["labels"][0]
    # away from region borders (where bilinear mixes colours) the two agree everywhere
    label_map = out["labels"][0]
    interior = torch.ones_like(agree)
    for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
        interior &= label_map == torch.roll(label_map, (dy, dx), (0, 1))
    interior[[0, -1], :] = False
    interior[:, [0, -1]] = False
    assert agree[interior].all()
    assert agree.float().mean() > 0.97
    assert set(label_map.unique().tolist()) >= {0, 1, 2}


def test_segmentation_labels_equal_stock_transformers():
    labels = synthetic_scene(333, 517)
    image = PALETTE[labels]
    ours = MobileViTImageProcessor()(image, segmentation_maps=labels, return_tensors="pt")["labels"]
    stock = MobileViTImageProcessorPil(**HUB_SETTINGS)(image, segmentation_maps=labels, return_tensors="pt")["labels"]
    assert torch.equal(ours, stock)


def test_segmentation_map_forms_and_reduce_labels():
    labels = synthetic_scene(100, 140)
    labels[0, 0] = 255
    processor = MobileViTImageProcessor(do_resize=False, do_center_crop=False)
    image = PALETTE[labels % 5]
    reference = processor(image, segmentation_maps=labels)["labels"][0]
    assert torch.equal(reference, torch.from_numpy(labels).long())
    palette_image = PIL.Image.fromarray(labels, mode="L").convert("P")
    for form in [PIL.Image.fromarray(labels), palette_image, labels[:, :, None], labels[None], torch.from_numpy(labels),
                 labels.astype(np.float32)]:
        assert torch.equal(processor(image, segmentation_maps=form)["labels"][0], reference)
    reduced = processor(image, segmentation_maps=labels, do_reduce_labels=True)["labels"][0]
    expected = torch.from_numpy(labels).long()
    expected = torch.where((expected == 0) | (expected == 255), 255, expected - 1)
    assert torch.equal(reduced, expected)
    assert torch.equal(reduce_labels(torch.tensor([0, 1, 2, 254, 255])), torch.tensor([255, 0, 1, 253, 255]))


def test_post_process_semantic_segmentation_round_trip():
    processor = MobileViTImageProcessor()
    low = torch.zeros(2, 16, 16, dtype=torch.long)
    low[0, :, 8:] = 1
    low[1, 8:, :] = 2
    logits = torch.nn.functional.one_hot(low, 3).permute(0, 3, 1, 2).float() * 5
    outputs = SemanticSegmenterOutput(logits=logits)
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 48), (30, 90)])
    assert [tuple(m.shape) for m in maps] == [(64, 48), (30, 90)]
    assert (maps[0][:, :20] == 0).all() and (maps[0][:, 28:] == 1).all()
    assert (maps[1][:12] == 0).all() and (maps[1][18:] == 2).all()
    # same contract and numbers as stock transformers
    stock = MobileViTImageProcessorPil().post_process_semantic_segmentation(outputs, target_sizes=torch.tensor([[64, 48], [30, 90]]))
    assert all(torch.equal(a, b) for a, b in zip(maps, stock))
    native = processor.post_process_semantic_segmentation(outputs)
    assert torch.equal(native[0], low[0]) and torch.equal(native[1], low[1])
    scored = processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 48), (30, 90)], return_segmentation_scores=True)
    assert scored[1]["segmentation_scores"].shape == (3, 30, 90) and torch.equal(scored[1]["segmentation"], maps[1])
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 48)])


# ------------------------------------------------------------------------------------------------
# Configs: the 2022 legacy form, the 5.x form, save -> stock load


LEGACY_CONFIG = {
    "crop_size": 256,
    "do_center_crop": True,
    "do_flip_channels": True,
    "do_resize": True,
    "feature_extractor_type": "MobileViTFeatureExtractor",
    "resample": 2,
    "size": 288,
}
MODERN_CONFIG = {
    "crop_size": {"height": 512, "width": 512},
    "do_center_crop": True,
    "do_flip_channel_order": True,
    "do_rescale": True,
    "do_resize": True,
    "image_processor_type": "MobileViTImageProcessor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 544},
}


def write_config(directory, config) -> str:
    (directory / "preprocessor_config.json").write_text(json.dumps(config))
    return str(directory)


def test_loads_the_legacy_config(tmp_path, flower, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = MobileViTImageProcessor.from_pretrained(write_config(tmp_path, LEGACY_CONFIG))
    assert dict(processor.size) == {"shortest_edge": 288}
    assert dict(processor.crop_size) == {"height": 256, "width": 256}
    assert processor.do_flip_channel_order is True and int(processor.resample) == 2
    assert torch.equal(pixels(processor, flower), pixels(MobileViTImageProcessor(), flower))
    # the legacy flip switch is honoured (stock transformers 5.x ignores it and always flips)
    no_flip = MobileViTImageProcessor.from_pretrained(write_config(tmp_path, dict(LEGACY_CONFIG, do_flip_channels=False)))
    assert no_flip.do_flip_channel_order is False
    assert torch.equal(pixels(no_flip, flower), pixels(processor, flower).flip(1))
    assert MobileViTImageProcessor.from_dict({"reduce_labels": True}).do_reduce_labels is True


def test_loads_the_modern_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = MobileViTImageProcessor.from_pretrained(write_config(tmp_path, MODERN_CONFIG))
    assert dict(processor.size) == {"shortest_edge": 544}
    assert dict(processor.crop_size) == {"height": 512, "width": 512}
    assert pixels(processor, np.zeros((600, 700, 3), np.uint8)).shape == (1, 3, 512, 512)


def test_the_v1_family_processor_is_the_class_defaults():
    """MobileViT v1's evaluation preprocessing (what `mobilevit convert` writes for its classifiers) is what the
    class defaults say: existing v1 folders and code see no change."""
    from mobilevit import auto

    config = auto.new_config("xx-small", "image-classification")
    family, default = auto.image_processor_for(config), MobileViTImageProcessor(logits_align_corners=False)
    assert {name: family.setting(name) for name in family._valid_kwargs_names} == \
        {name: default.setting(name) for name in default._valid_kwargs_names}
    # a processor made with the defaults saves exactly the keys stock transformers writes
    stock_keys = set(MobileViTImageProcessorPil().to_dict())
    assert set(MobileViTImageProcessor().to_dict()) == stock_keys


STOCK_STYLE_CONFIG = dict(MODERN_CONFIG, do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                          do_convert_rgb=False)


@pytest.mark.parametrize("source", [LEGACY_CONFIG, MODERN_CONFIG, {"do_flip_channels": False, "size": 320, "crop_size": 300},
                                    STOCK_STYLE_CONFIG])
def test_saved_config_loads_in_stock_transformers_with_the_same_settings(tmp_path, source, monkeypatch, caplog):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = MobileViTImageProcessor.from_dict(source)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "do_flip_channels" not in saved and saved["image_processor_type"] == "MobileViTImageProcessor"
    with caplog.at_level(logging.ERROR):
        stock = transformers.MobileViTImageProcessor.from_pretrained(tmp_path)
    assert dict(stock.size) == dict(ours.size)
    assert dict(stock.crop_size) == dict(ours.crop_size)
    assert stock.do_flip_channel_order == ours.do_flip_channel_order
    assert int(stock.resample) == int(ours.resample)
    assert stock.do_center_crop == ours.do_center_crop and stock.do_rescale == ours.do_rescale
    assert stock.do_normalize == ours.do_normalize and ours.setting("do_normalize") == source.get("do_normalize", False)
    assert list(stock.image_mean) == list(ours.image_mean) and list(stock.image_std) == list(ours.image_std)
    if not ours.do_normalize:  # stock's defaults, written as stock writes them
        assert saved["image_mean"] == saved["image_std"] == [0.5, 0.5, 0.5]
    assert stock.do_convert_rgb == ours.do_convert_rgb and ours.setting("do_convert_rgb") == source.get("do_convert_rgb", True)
    reloaded = MobileViTImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == ours.to_dict()


def test_a_config_stock_transformers_writes_loads_here_and_means_what_it_says(tmp_path, flower, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stock = MobileViTImageProcessorPil(**HUB_SETTINGS, do_normalize=True, image_mean=[0.4, 0.5, 0.6],
                                       image_std=[0.2, 0.25, 0.3], do_convert_rgb=False)
    stock.save_pretrained(tmp_path)
    ours = MobileViTImageProcessor.from_pretrained(tmp_path)
    assert ours.do_normalize is True and list(ours.image_mean) == [0.4, 0.5, 0.6] and ours.do_convert_rgb is False
    expected = MobileViTImageProcessor(resample=2, do_normalize=True, image_mean=[0.4, 0.5, 0.6],
                                       image_std=[0.2, 0.25, 0.3], do_convert_rgb=False)
    assert torch.equal(pixels(ours, flower), pixels(expected, flower))


# ------------------------------------------------------------------------------------------------
# transformers' own image-processor tests (tests/test_image_processing_common.py, 5.x), written anew for this
# class: an explicit None is kept and means the default; a saved config reads back through stock
# AutoImageProcessor as an equal dict, in every backend


# The settings transformers' MobileViT processor tests build their processors from
TRANSFORMERS_TEST_SETTINGS = {"do_resize": True, "size": {"shortest_edge": 20}, "do_center_crop": True,
                              "crop_size": {"height": 18, "width": 18}, "do_flip_channel_order": True,
                              "do_reduce_labels": False}
SWITCHES = ("do_resize", "do_center_crop", "do_rescale", "do_flip_channel_order", "do_convert_rgb")


@pytest.mark.parametrize("name", ["do_resize", "do_rescale", "do_center_crop", "do_flip_channel_order", "do_reduce_labels"])
def test_an_explicit_none_is_kept_and_means_the_default(tmp_path, monkeypatch, flower, name):
    """`do_resize=None` at construction is stored (to_dict, save, reload keep None), and a call then uses the
    class default; it used to fail with "do_resize: expected true or false, got None"."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = MobileViTImageProcessor(**dict(TRANSFORMERS_TEST_SETTINGS, **{name: None}))
    assert name in processor.to_dict() and processor.to_dict()[name] is None
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())[name] is None
    reloaded = MobileViTImageProcessor.from_pretrained(tmp_path)
    assert getattr(reloaded, name) is None, f"explicit None for {name} was lost after reload"
    default = getattr(MobileViTImageProcessor, name)
    assert reloaded.setting(name) is default
    explicit = MobileViTImageProcessor(**dict(TRANSFORMERS_TEST_SETTINGS, **{name: default}))
    assert torch.equal(pixels(reloaded, flower), pixels(explicit, flower))


def test_a_none_passed_to_a_call_means_the_processors_own_setting(flower):
    """transformers' call-time contract: `processor(x, do_rescale=None)` is `processor(x)` (transformers only
    filled in absent settings, so a None switch silently skipped its step)."""
    processor = MobileViTImageProcessor(**dict(TRANSFORMERS_TEST_SETTINGS, do_flip_channel_order=False))
    reference = pixels(processor, flower)
    for name in SWITCHES + ("size", "crop_size", "resample", "rescale_factor"):
        assert torch.equal(pixels(processor, flower, **{name: None}), reference), name
    # still checked: a switch must be a bool (or None), a resize needs a resampling filter
    with pytest.raises(ValueError, match=r"do_resize: expected true, false or null \(the default\), got 'yes'"):
        MobileViTImageProcessor(do_resize="yes")
    with pytest.raises(ValueError, match=r"resample: expected NEAREST \(0\), BILINEAR \(2\) or BICUBIC \(3\), got None"):
        MobileViTImageProcessor(resample=None)(flower)


def _v2_family_settings() -> dict:
    from mobilevit import auto

    return auto.image_processor_for(auto.new_config("mobilevitv2-0.5", "semantic-segmentation"),
                                    "semantic-segmentation").to_dict()


@pytest.mark.parametrize("backend", ["pil", "torchvision"])  # without torchvision transformers falls back to PIL
@pytest.mark.parametrize("settings", [TRANSFORMERS_TEST_SETTINGS, {}, "v2 family", LEGACY_CONFIG,
                                      dict(TRANSFORMERS_TEST_SETTINGS, do_resize=None)])
def test_a_saved_processor_reads_back_through_stock_auto_image_processor_as_an_equal_dict(tmp_path, monkeypatch,
                                                                                          backend, settings, caplog):
    """The JSON holds the keys stock transformers writes, with its types: read back through stock
    `AutoImageProcessor`, the stock processor's `to_dict()` equals ours, value for value and type for type
    (no `image_mean`/`image_std` appearing, `resample` an int, not an enum)."""
    from transformers import AutoImageProcessor
    from transformers.testing_utils import check_json_file_has_correct_format

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = MobileViTImageProcessor(**(_v2_family_settings() if settings == "v2 family" else settings))
    check_json_file_has_correct_format(ours.save_pretrained(tmp_path)[0])
    with caplog.at_level(logging.ERROR):
        stock = AutoImageProcessor.from_pretrained(tmp_path, backend=backend)
    assert type(stock).__module__.startswith("transformers.models.mobilevit")
    assert stock.to_dict() == ours.to_dict()
    assert {k: type(v) for k, v in stock.to_dict().items()} == {k: type(v) for k, v in ours.to_dict().items()}
    assert type(ours.to_dict()["resample"]) is int


@pytest.mark.parametrize("through", ["AutoImageProcessor", "the class"])
def test_backends_read_each_others_configs(tmp_path, monkeypatch, caplog, through):
    """transformers' cross-backend rule (`test_save_load_backends_auto`, `test_save_load_backends`), with this
    class as the torch backend and stock's PIL class beside it: a config saved by one reads back in the other
    (through `AutoImageProcessor`, or the other class's `from_pretrained`) with equal common keys, and any key
    only one side has is None there."""
    from transformers import AutoImageProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backends = {"pil": MobileViTImageProcessorPil, "torchvision": MobileViTImageProcessor}
    for saving, cls in backends.items():
        first = cls(**TRANSFORMERS_TEST_SETTINGS)
        for reading, reading_cls in backends.items():
            if reading == saving:
                continue
            folder = tmp_path / f"{saving}-{reading}"
            first.save_pretrained(folder)
            with caplog.at_level(logging.ERROR):
                second = (AutoImageProcessor.from_pretrained(folder, backend=reading) if through == "AutoImageProcessor"
                          else reading_cls.from_pretrained(folder))
            a, b = first.to_dict(), second.to_dict()
            only_one_side = {k: a.get(k, b.get(k)) for k in set(a) ^ set(b)}
            assert all(v is None for k, v in only_one_side.items() if k not in ("default_to_square", "data_format")), \
                (saving, reading, only_one_side)
            assert {k: a[k] for k in set(a) & set(b)} == {k: b[k] for k in set(a) & set(b)}, (saving, reading)


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (np.zeros((10, 12, 2), np.uint8), {}, ValueError, r"images\[0\].*1 \(grey\), 3 \(RGB\) or 4.*\(10, 12, 2\)"),
        (np.zeros((10, 12, 5), np.uint8), {}, ValueError, r"images\[0\].*\(10, 12, 5\)"),
        (torch.zeros(2, 10, 12), {"input_data_format": "channels_first"}, ValueError, r"images\[0\].*channels_first"),
        ([], {}, ValueError, r"images: expected at least one image, got an empty list"),
        (np.zeros((0, 12, 3), np.uint8), {}, ValueError, r"images\[0\].*empty.*0 x 12"),
        ([np.zeros((10, 12, 3), np.uint8), np.full((10, 12, 3), 1.5, np.float32)], {}, ValueError,
         r"images\[1\].*\[0, 1\].*do_rescale=True.*\[1\.5, 1\.5\]"),
        (np.full((10, 12, 3), np.nan, np.float32), {}, ValueError, r"images\[0\]: expected finite pixel values"),
        (np.full((10, 12, 3), 70000, np.int32), {}, ValueError, r"images\[0\].*0\.\.255 \(8-bit\) or 0\.\.65535"),
        (np.zeros((10, 12, 3), np.uint8), {"size": "big"}, ValueError, r"size: expected a positive int or"),
        (np.zeros((10, 12, 3), np.uint8), {"rescale_factor": -1.0}, ValueError, r"rescale_factor: expected a positive"),
        (np.zeros((10, 12, 3), np.uint8), {"do_normalize": True, "image_std": [0.5, 0, 0.5]}, ValueError,
         r"image_std: expected positive numbers"),
        (np.zeros((10, 12, 3), np.uint8), {"do_normalize": True, "image_mean": [0.5, 0.5]}, ValueError,
         r"image_mean: expected one value or 3 \(one per channel\), got 2"),
        (np.zeros((10, 12, 3), np.uint8), {"size": {"shortest_edge": 0}}, ValueError, r"size: expected a positive int"),
        (np.zeros((10, 12, 3), np.uint8), {"crop_size": {"height": 0, "width": 5}}, ValueError, r"crop_size: expected a positive int"),
        ("photo.jpg", {}, TypeError, r"images\[0\].*PIL image, a NumPy array or a torch tensor, got str"),
        (np.zeros((10, 12, 3), np.uint8), {"resample": 5}, ValueError, r"resample: expected NEAREST"),
        ([np.zeros((10, 12, 3), np.uint8), np.zeros((20, 12, 3), np.uint8)],
         {"do_resize": False, "do_center_crop": False, "return_tensors": "pt"}, ValueError, r"return_tensors.*different sizes"),
    ],
)
def test_bad_images_raise_clear_errors(images, kwargs, error, match):
    kwargs.setdefault("return_tensors", "pt")
    with pytest.raises(error, match=match):
        MobileViTImageProcessor()(images, **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"input_data_format": 3}, ValueError, r"input_data_format: expected 'channels_first' or 'channels_last', got 3"),
    ({"data_format": "rows"}, ValueError, r"data_format: expected 'channels_first' or 'channels_last', got 'rows'"),
    ({"rescale_factor": "x"}, TypeError, r"Field 'rescale_factor' with value 'x'"),
    ({"do_resize": "yes"}, TypeError, r"Field 'do_resize' with value 'yes'"),
    ({"do_normalize": True, "image_mean": "grey"}, ValueError, r"image_mean: expected a number or a list of numbers"),
])
def test_settings_of_the_wrong_type_in_a_call_are_one_line(kwargs, error, match):
    """transformers' own type check of a call's settings raises a multi-line error that is not a ValueError."""
    with pytest.raises(error, match=match) as caught:
        MobileViTImageProcessor()(np.zeros((10, 12, 3), np.uint8), return_tensors="pt", **kwargs)
    assert "\n" not in str(caught.value)
    assert pixels(MobileViTImageProcessor(), np.zeros((10, 12, 3), np.uint8), rescale_factor=1).max() == 0  # an int is fine


def test_bad_segmentation_maps_raise_clear_errors():
    processor = MobileViTImageProcessor()
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=r"segmentation_maps\[0\]: expected the size of images\[0\] \(40x50\), got 40x49"):
        processor(image, segmentation_maps=np.zeros((40, 49), np.uint8))
    with pytest.raises(ValueError, match=r"segmentation_maps: expected one map per image \(2\), got 1"):
        processor([image, image], segmentation_maps=[np.zeros((40, 50), np.uint8)])
    coloured = image.copy()
    coloured[0, 0] = (255, 0, 0)
    with pytest.raises(ValueError, match=r"segmentation_maps\[0\].*colour-coded"):
        processor(image, segmentation_maps=PIL.Image.fromarray(coloured))
    with pytest.raises(ValueError, match=r"segmentation_maps\[0\].*whole-number"):
        processor(image, segmentation_maps=np.full((40, 50), 0.5, np.float32))


def test_normalisation_means_what_it_says(flower):
    """do_normalize=True (refused before) subtracts the mean and divides by the std, given in RGB order, after
    the flip too; stock transformers' MobileViT processor accepts the settings and ignores them."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    plain = pixels(MobileViTImageProcessor(), flower)  # BGR in [0, 1]
    normalised = pixels(MobileViTImageProcessor(do_normalize=True, image_mean=mean, image_std=std), flower)
    bgr_mean, bgr_std = torch.tensor(mean[::-1]).view(1, 3, 1, 1), torch.tensor(std[::-1]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised, (plain - bgr_mean) / bgr_std, rtol=0, atol=1e-6)
    unflipped = pixels(MobileViTImageProcessor(do_normalize=True, image_mean=mean, image_std=std,
                                               do_flip_channel_order=False), flower)
    torch.testing.assert_close(unflipped, normalised.flip(1), rtol=0, atol=0)
    one_value = pixels(MobileViTImageProcessor(do_normalize=True, image_mean=0.5, image_std=0.5), flower)
    torch.testing.assert_close(one_value, plain * 2 - 1, rtol=0, atol=1e-6)
    # without a mean and std: stock transformers' defaults (0.5, 0.5)
    torch.testing.assert_close(pixels(MobileViTImageProcessor(do_normalize=True), flower), one_value, rtol=0, atol=0)
    stock = MobileViTImageProcessorPil(**HUB_SETTINGS, do_normalize=True, image_mean=mean, image_std=std)
    assert stock(flower, return_tensors="pt")["pixel_values"].min() >= 0  # stock ignores it


def test_do_convert_rgb_false_keeps_one_and_four_channels(flower):
    """For models with num_channels 1 or 4: grey stays one channel, RGBA keeps its alpha (flipped to the front,
    as stock transformers' channel flip reverses the whole axis)."""
    keep = MobileViTImageProcessor(do_convert_rgb=False)
    grey = PIL.Image.fromarray(flower).convert("L")
    one = pixels(keep, grey)
    assert one.shape == (1, 1, 256, 256)
    assert torch.equal(one[0, 0], pixels(MobileViTImageProcessor(), grey)[0, 0])
    rgba = np.concatenate([flower, np.full(flower.shape[:2] + (1,), 51, np.uint8)], axis=2)
    for image in (rgba, PIL.Image.fromarray(rgba), torch.from_numpy(rgba).permute(2, 0, 1)):
        four = pixels(keep, image)
        assert four.shape == (1, 4, 256, 256), type(image)
        assert torch.equal(four[0, 1:], pixels(MobileViTImageProcessor(), flower)[0])  # ABGR: BGR after alpha
        torch.testing.assert_close(four[0, 0], torch.full((256, 256), 0.2))
    assert pixels(keep, flower).shape == (1, 3, 256, 256)
    assert pixels(MobileViTImageProcessor(), rgba).shape == (1, 3, 256, 256)  # the default drops alpha
    with pytest.raises(ValueError, match="different sizes"):  # a batch shares its channel count
        pixels(keep, [flower, grey])


def test_every_setting_is_checked_when_the_processor_is_made(tmp_path, monkeypatch):
    """A bad preprocessor_config.json fails on loading, naming the setting."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for bad, match in [({"size": -5}, r"size: expected a positive int"), ({"size": "big"}, r"size: expected"),
                       ({"crop_size": {"height": 0, "width": 5}}, r"crop_size: expected"),
                       ({"do_rescale": "yes"}, r"do_rescale: expected true, false or null \(the default\), got 'yes'"),
                       ({"rescale_factor": 0}, r"rescale_factor: expected a positive number"),
                       ({"resample": 9}, r"resample: expected NEAREST"),
                       ({"do_normalize": True, "image_mean": "grey"}, r"image_mean: expected a number or a list"),
                       ({"do_normalize": True, "image_mean": [0.5, 0.5]}, r"image_mean: expected one value or 3"),
                       ({"logits_align_corners": "yes"}, r"logits_align_corners: expected true, false or null")]:
        with pytest.raises(ValueError, match=match):
            MobileViTImageProcessor.from_pretrained(write_config(tmp_path, dict(MODERN_CONFIG, **bad)))


def test_large_batches_on_huge_pages_equal_the_per_image_outputs(flower, china, monkeypatch):
    import pickle

    from mobilevit import image_processing_mobilevit

    monkeypatch.setattr(image_processing_mobilevit, "_HUGE_PAGE_MIN_BYTES", 0)  # every batch takes that route
    processor = MobileViTImageProcessor()
    images = [flower, china, np.ascontiguousarray(flower[:, ::-1])]
    batch = processor(images, return_tensors="pt")["pixel_values"]
    singles = processor(images)["pixel_values"]
    assert batch.shape == (3, 3, 256, 256) and batch.dtype == torch.float32
    for row, single in zip(batch, singles):
        torch.testing.assert_close(row, torch.as_tensor(single), atol=0, rtol=0)
    assert torch.equal(pickle.loads(pickle.dumps(batch)), batch)  # DataLoader workers send batches this way


def test_output_memory_is_reused_only_once_no_tensor_uses_it(flower, china, monkeypatch):
    import gc

    from mobilevit import image_processing_mobilevit

    monkeypatch.setattr(image_processing_mobilevit, "_HUGE_PAGE_MIN_BYTES", 0)
    monkeypatch.setattr(image_processing_mobilevit, "_IDLE_MAPPINGS", [])
    processor = MobileViTImageProcessor()
    first = pixels(processor, [flower, china])
    kept = first[1].clone()
    view, address = first[1], first.data_ptr()
    del first
    gc.collect()
    second = pixels(processor, [china, flower])  # a view of the first batch is alive: fresh memory
    assert second.data_ptr() != address and torch.equal(view, kept)
    del view
    gc.collect()
    third = pixels(processor, [flower, flower])  # now the first batch's memory is free to serve again
    assert third.data_ptr() == address
    assert torch.equal(third[1], third[0]) and torch.equal(second[0], kept)
    array = third.numpy()  # NumPy arrays of the batch hold its memory too
    del third
    gc.collect()
    assert pixels(processor, [china, china]).data_ptr() != address and np.array_equal(array[0], array[1])


def test_first_call_under_inference_mode_does_not_break_later_calls(flower, monkeypatch):
    """The per-thread scratch memory is made on the first call; under torch.inference_mode() it once became an
    inference tensor, and every later call outside inference mode failed writing into it."""
    from mobilevit import image_processing_mobilevit as module

    monkeypatch.setattr(module, "_SCRATCH", module._ScratchMemory())  # as in a fresh thread
    processor = MobileViTImageProcessor()
    image = PIL.Image.fromarray(flower)
    with torch.inference_mode():
        inside = pixels(processor, image)
    outside = pixels(processor, image)
    assert not outside.is_inference()
    torch.testing.assert_close(outside, inside, rtol=0, atol=0)
