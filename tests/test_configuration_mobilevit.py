import json

import pytest
import transformers

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


def test_defaults_equal_stock_transformers():
    assert MobileViTConfig().to_dict() == transformers.MobileViTConfig().to_dict()


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
        MobileViTConfig.from_variant("small", task="detection")
    assert MobileViTConfig(hidden_sizes=[8, 8, 8]).variant is None


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"hidden_sizes": [144, 192]}, "hidden_sizes: expected a list of 3 positive integers, got \\[144, 192\\]"),
        ({"neck_hidden_sizes": [16, 32]}, "neck_hidden_sizes: expected a list of 7"),
        ({"atrous_rates": [6, 12]}, "atrous_rates: expected a list of 3"),
        ({"num_attention_heads": 7}, "hidden_sizes: expected widths divisible by num_attention_heads=7"),
        ({"patch_size": 0}, "patch_size: expected an integer >= 1, got 0"),
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
