import dataclasses
import json

import pytest
import transformers

from mobilevit.ssd.configuration import SSDConfigMixin

from mobilevit import MobileViTConfig
from mobilevit.models.mobilevit.configuration_mobilevit import VARIANTS, canonical_variant

# The Hub's apple/mobilevit-* and apple/deeplabv3-mobilevit-* configs, as transformers' conversion made them
HUB_FIELDS = {
    "small": {"hidden_sizes": [144, 192, 240], "neck_hidden_sizes": [16, 32, 64, 96, 128, 160, 640],
              "expand_ratio": 4.0, "hidden_dropout_prob": 0.1},
    "x-small": {"hidden_sizes": [96, 120, 144], "neck_hidden_sizes": [16, 32, 48, 64, 80, 96, 384],
                "expand_ratio": 4.0, "hidden_dropout_prob": 0.1},
    "xx-small": {"hidden_sizes": [64, 80, 96], "neck_hidden_sizes": [16, 16, 24, 48, 64, 80, 320],
                 "expand_ratio": 2.0, "hidden_dropout_prob": 0.05},
}

ADDED_FIELDS = {"stage_names", "out_features", "out_indices"} | {f.name for f in dataclasses.fields(SSDConfigMixin)}


def test_defaults_equal_stock_transformers():
    # stock's fields with stock's defaults, plus the Backbone API's and the detector's (SSD) fields
    ours, stock = MobileViTConfig().to_dict(), transformers.MobileViTConfig().to_dict()
    assert set(ours) - set(stock) == ADDED_FIELDS
    assert {key: value for key, value in ours.items() if key in stock} == stock


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("task", ["image-classification", "semantic-segmentation"])
def test_variants_match_the_hub_configs(variant, task, tmp_path):
    config = MobileViTConfig.from_variant(variant, task)
    for field, value in HUB_FIELDS[variant].items():
        assert getattr(config, field) == value or list(getattr(config, field)) == value
    assert config.variant == variant
    expected_size, expected_stride = (256, 32) if task == "image-classification" else (512, 16)
    assert (config.image_size, config.output_stride) == (expected_size, expected_stride)
    # JSON written here reads back in stock transformers with the same values, and the other way round
    config.save_pretrained(tmp_path)
    stock = transformers.MobileViTConfig.from_pretrained(tmp_path)
    assert stock.to_dict() == MobileViTConfig.from_pretrained(tmp_path).to_dict()
    stock.save_pretrained(tmp_path / "stock")
    assert MobileViTConfig.from_pretrained(tmp_path / "stock").to_dict() == stock.to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mobilevit"


def test_variant_aliases_and_unknown_names():
    assert canonical_variant("XXS") == canonical_variant("mobilevit_xxs") == "xx-small"
    with pytest.raises(ValueError, match="variant: expected one of .* got 'medium'"):
        MobileViTConfig.from_variant("medium")
    with pytest.raises(ValueError, match="task: expected one of"):
        MobileViTConfig.from_variant("small", task="depth-estimation")
    assert MobileViTConfig(hidden_sizes=[8, 8, 8]).variant is None


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"hidden_sizes": [144, 192]}, "hidden_sizes: expected a list of 3 positive integers of at most 8192, got \\[144, 192\\]"),
        ({"neck_hidden_sizes": [16, 32]}, "neck_hidden_sizes: expected a list of 7"),
        ({"atrous_rates": [6, 12]}, "atrous_rates: expected a list of 3"),
        ({"num_attention_heads": 7}, "hidden_sizes: expected widths divisible by num_attention_heads=7"),
        ({"patch_size": 0}, "patch_size: expected one of 1, 2, 4, 8, got 0"),
        ({"patch_size": 3}, "patch_size: expected one of 1, 2, 4, 8, got 3"),
        ({"patch_size": 64}, "patch_size: expected one of 1, 2, 4, 8, got 64"),
        ({"num_labels": -3}, r"num_labels: expected at least 1 class, got 0"),
        ({"id2label": {0: "a", 2: "c"}}, r"id2label: expected class ids 0..1, got \[0, 2\]"),
        ({"image_size": "big"}, "image_size: expected a positive integer .or a .height, width. pair. of at most 8192, "
                                "got 'big'"),
        ({"image_size": -5}, "image_size: expected a positive integer"),
        ({"image_size": [256, 0]}, "image_size: expected a positive integer"),
        ({"hidden_sizes": [10**6] * 3}, r"hidden_sizes: expected a list of 3 positive integers of at most 8192, "
                                        r"got \[1000000, 1000000, 1000000\]"),
        ({"neck_hidden_sizes": [16, 32, 64, 96, 128, 160, 10**6]}, r"neck_hidden_sizes: expected .* of at most 8192"),
        ({"aspp_out_channels": 10**5}, r"aspp_out_channels: expected a positive integer of at most 8192"),
        ({"mlp_ratio": 1e6}, r"mlp_ratio: expected a positive number of at most 16"),
        ({"expand_ratio": float("nan")}, r"expand_ratio: expected a positive number"),
        ({"num_attention_heads": 1000}, r"num_attention_heads: expected a positive integer of at most 144"),
        ({"layer_norm_eps": 0}, r"layer_norm_eps: expected a positive number, got 0"),
        ({"output_stride": 4}, "output_stride: expected one of 8, 16, 32, got 4"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob: expected a probability in \\[0, 1\\), got 1.0"),
        ({"classifier_dropout_prob": -0.1}, "classifier_dropout_prob: expected a probability"),
        ({"hidden_act": "swishy"}, "hidden_act: expected an activation name"),
        ({"conv_kernel_size": 4}, "conv_kernel_size: expected an odd integer"),
        ({"num_channels": 0}, "num_channels: expected a positive integer"),
    ],
)
def test_invalid_fields_fail_at_construction(fields, match):
    with pytest.raises(ValueError, match=match):
        MobileViTConfig(**fields)


def test_absurd_widths_fail_before_any_memory_is_asked_for():
    """hidden_sizes of 10**6 ran into a 4 TB allocation; now the config refuses it, and a model is never built."""
    import tracemalloc

    from mobilevit import MobileViTForImageClassification

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="hidden_sizes"):
            MobileViTForImageClassification(MobileViTConfig(hidden_sizes=[10**6, 10**6, 10**6]))
        assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
    finally:
        tracemalloc.stop()


def test_a_config_json_with_bad_values_fails_on_loading(tmp_path):
    MobileViTConfig().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, patch_size=3)))
    with pytest.raises(ValueError, match="MobileViTConfig.patch_size: expected one of 1, 2, 4, 8, got 3"):
        MobileViTConfig.from_pretrained(tmp_path)
