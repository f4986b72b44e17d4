import dataclasses
import json

import pytest
import torch
import transformers

from mobilevit import MobileViTV2Config, MobileViTV2ForImageClassification, auto
from mobilevit.models.mobilevitv2.configuration_mobilevitv2 import VARIANTS, canonical_variant
from mobilevit.ssd.configuration import SSDConfigMixin

# ml-cvnets' `get_configuration(opts)` of the v2 fixtures (stem, layer_1..layer_5; attn_unit_dim of layer_3..5)
MLCVNETS_WIDTHS = {
    "mobilevitv2-0.5": ([16, 32, 64, 128, 192, 256], [64, 96, 128]),
    "mobilevitv2-1.0": ([32, 64, 128, 256, 384, 512], [128, 192, 256]),
    "mobilevitv2-2.0": ([64, 128, 256, 512, 768, 1024], [256, 384, 512]),
}
# Parameters of the ImageNet-1k classifiers: the fixtures' manifests (0.5, 1.0, 2.0) and, for the widths without
# a fixture, this package's count, which the model zoo's rounded figures (2.9 M, 7.5 M, 10.6 M, 14.3 M) confirm.
PARAMETERS = {"mobilevitv2-0.5": 1_370_593, "mobilevitv2-0.75": 2_866_009, "mobilevitv2-1.0": 4_901_841,
              "mobilevitv2-1.25": 7_478_089, "mobilevitv2-1.5": 10_594_753, "mobilevitv2-1.75": 14_251_833,
              "mobilevitv2-2.0": 18_449_329}

ADDED_FIELDS = {"stage_names", "out_features", "out_indices"} | {f.name for f in dataclasses.fields(SSDConfigMixin)}


def test_defaults_equal_stock_transformers():
    # stock's fields with stock's defaults, plus the Backbone API's and the detector's (SSD) fields
    ours, stock = MobileViTV2Config().to_dict(), transformers.MobileViTV2Config().to_dict()
    assert set(ours) - set(stock) == ADDED_FIELDS
    assert {key: value for key, value in ours.items() if key in stock} == stock
    assert MobileViTV2Config().variant == "mobilevitv2-1.0"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("task", ["image-classification", "semantic-segmentation"])
def test_variants_round_trip_through_stock_transformers(variant, task, tmp_path):
    config = MobileViTV2Config.from_variant(variant, task)
    assert config.variant == variant and config.width_multiplier == float(variant.split("-")[1])
    expected = (256, 32) if task == "image-classification" else (512, 16)
    assert (config.image_size, config.output_stride) == expected
    config.save_pretrained(tmp_path)
    stock = transformers.MobileViTV2Config.from_pretrained(tmp_path)
    assert stock.to_dict() == MobileViTV2Config.from_pretrained(tmp_path).to_dict()
    stock.save_pretrained(tmp_path / "stock")
    assert MobileViTV2Config.from_pretrained(tmp_path / "stock").to_dict() == stock.to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mobilevitv2"


@pytest.mark.parametrize("variant", list(MLCVNETS_WIDTHS))
def test_widths_follow_mlcvnets(variant):
    config = MobileViTV2Config.from_variant(variant)
    assert (config.layer_widths, config.attention_widths) == MLCVNETS_WIDTHS[variant]
    assert [config.ffn_width(d) for d in config.attention_widths] == [2 * d for d in config.attention_widths]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_counts(variant):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = MobileViTV2ForImageClassification(MobileViTV2Config.from_variant(variant, num_labels=1000))
    assert model.num_parameters() == PARAMETERS[variant]


def test_variant_spellings_are_unambiguous_across_families():
    for spelling in ["mobilevitv2-1.0", "mobilevitv2_100", "MobileViTv2-1.0", "apple/mobilevitv2-1.0", "1.0", "1",
                     "100", 1.0, "mobilevitv2-1.0.pt"]:
        assert canonical_variant(spelling) == "mobilevitv2-1.0", spelling
        assert auto.resolve_variant(spelling)[1] == "mobilevitv2-1.0", spelling
    assert canonical_variant("mobilevitv2_075") == "mobilevitv2-0.75"
    assert canonical_variant("0.5") == canonical_variant("050") == "mobilevitv2-0.5"
    family, variant = auto.resolve_variant("xx-small")
    assert (family.model_type, variant) == ("mobilevit", "xx-small")
    with pytest.raises(ValueError, match="variant: expected one of .* got 'mobilevitv2-0.6'"):
        MobileViTV2Config.from_variant("mobilevitv2-0.6")
    with pytest.raises(ValueError, match="variant: expected a released size"):
        auto.resolve_variant("small-v2")
    assert MobileViTV2Config(width_multiplier=0.6).variant is None
    assert MobileViTV2Config(n_attn_blocks=[1, 1, 1]).variant is None


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"n_attn_blocks": [2, 4]}, r"n_attn_blocks: expected a list of 3 positive integers of at most 64, got \[2, 4\]"),
        ({"base_attn_unit_dims": [128, 0, 256]}, "base_attn_unit_dims: expected a list of 3 positive integers"),
        ({"base_attn_unit_dims": [128, 10**6, 256]}, "base_attn_unit_dims: expected a list of 3 positive integers of "
                                                      "at most 8192"),
        ({"atrous_rates": [6, 12]}, "atrous_rates: expected a list of 3"),
        ({"width_multiplier": 0}, "width_multiplier: expected a positive number of at most 16, got 0"),
        ({"width_multiplier": 1000}, "width_multiplier: expected a positive number of at most 16, got 1000"),
        ({"patch_size": 0}, "patch_size: expected one of 1, 2, 4, 8, got 0"),
        ({"num_labels": -3}, "num_labels: expected at least 1 class"),
        ({"image_size": "big"}, "image_size: expected a positive integer"),
        ({"output_stride": 4}, "output_stride: expected one of 8, 16, 32, got 4"),
        ({"attn_dropout": 1.0}, r"attn_dropout: expected a probability in \[0, 1\), got 1.0"),
        ({"hidden_act": "swishy"}, "hidden_act: expected an activation name"),
        ({"conv_kernel_size": 4}, "conv_kernel_size: expected an odd integer"),
        ({"ffn_multiplier": 0}, "ffn_multiplier: expected a positive number of at most 16"),
    ],
)
def test_invalid_fields_fail_at_construction(fields, match):
    with pytest.raises(ValueError, match="MobileViTV2Config." + match):
        MobileViTV2Config(**fields)
